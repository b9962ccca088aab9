//! What the node agent reports about its machine: capacity (CPUs, memory, the
//! data directory's file system), addresses, system information, and the
//! pressure signals behind the MemoryPressure, DiskPressure and PIDPressure
//! conditions, read from /proc and statvfs.

use std::net::IpAddr;
use std::path::Path;

/// Pods a node admits, upstream's default.
pub const MAX_PODS: i64 = 110;
/// The kubelet's default hard eviction thresholds, which also bound allocatable.
const MEMORY_AVAILABLE_MIN: i64 = 100 * 1024 * 1024;
const NODEFS_AVAILABLE_MIN_PERCENT: i64 = 10;
const PIDS_AVAILABLE_MIN_PERCENT: i64 = 5;

/// Resources of the machine, in plain units (cores, bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Capacity {
    pub cpus: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
}

impl Capacity {
    /// Capacity less the hard eviction thresholds, as the kubelet computes it
    /// with no reservations configured.
    pub fn allocatable(&self) -> Capacity {
        Capacity {
            cpus: self.cpus,
            memory: (self.memory - MEMORY_AVAILABLE_MIN).max(0),
            ephemeral_storage: self.ephemeral_storage - self.ephemeral_storage * NODEFS_AVAILABLE_MIN_PERCENT / 100,
        }
    }
}

/// Which pressure conditions hold now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Pressure {
    pub memory: bool,
    pub disk: bool,
    pub pids: bool,
}

fn meminfo_bytes(field: &str) -> Option<i64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kib: i64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// (total, available) bytes of the file system holding `path`.
fn filesystem_bytes(path: &Path) -> Option<(i64, i64)> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c_path is a valid NUL-terminated string and stat a valid out-pointer.
    if unsafe { libc::statvfs(c_path.as_ptr(), &mut stat) } != 0 {
        return None;
    }
    let block = stat.f_frsize as i64;
    Some((stat.f_blocks as i64 * block, stat.f_bavail as i64 * block))
}

fn online_cpus() -> i64 {
    // SAFETY: sysconf has no preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n > 0 { n as i64 } else { 1 }
}

pub fn capacity(data_dir: &Path) -> Capacity {
    Capacity {
        cpus: online_cpus(),
        memory: meminfo_bytes("MemTotal").unwrap_or(0),
        ephemeral_storage: filesystem_bytes(data_dir).map_or(0, |(total, _)| total),
    }
}

pub fn pressure(data_dir: &Path) -> Pressure {
    let memory = meminfo_bytes("MemAvailable").is_some_and(|a| a < MEMORY_AVAILABLE_MIN);
    let disk = filesystem_bytes(data_dir).is_some_and(|(total, available)| total > 0 && available * 100 < total * NODEFS_AVAILABLE_MIN_PERCENT);
    let pid_max: Option<i64> = std::fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|s| s.trim().parse().ok());
    // The fourth field of loadavg is running/total scheduling entities.
    let in_use: Option<i64> = std::fs::read_to_string("/proc/loadavg").ok().and_then(|s| s.split_whitespace().nth(3)?.split('/').nth(1)?.parse().ok());
    let pids = matches!((pid_max, in_use), (Some(max), Some(used)) if (max - used) * 100 < max * PIDS_AVAILABLE_MIN_PERCENT);
    Pressure { memory, disk, pids }
}

/// The host name, lowercased as node names are.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_ascii_lowercase()).unwrap_or_else(|_| "localhost".into())
}

/// The address of the default route's interface (connecting a UDP socket
/// sends nothing; it only picks the route).
pub fn default_route_address() -> Option<IpAddr> {
    let socket = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    socket.connect("10.255.255.255:1").ok()?;
    socket.local_addr().ok().map(|a| a.ip()).filter(|ip| !ip.is_unspecified())
}

/// The names the agent's endpoint certificate carries: the addresses the
/// Node publishes (InternalIP, Hostname), its name, and loopback.
pub fn endpoint_names(node: &str) -> Vec<String> {
    let mut names = vec![node.to_owned(), hostname(), "localhost".to_owned(), "127.0.0.1".to_owned()];
    names.extend(default_route_address().map(|ip| ip.to_string()));
    names.sort();
    names.dedup();
    names
}

/// `nodeInfo` facts that do not depend on the container runtime.
#[derive(Clone, Debug, Default)]
pub struct SystemInfo {
    pub kernel_version: String,
    pub os_image: String,
    pub architecture: String,
    pub machine_id: String,
    pub system_uuid: String,
    pub boot_id: String,
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// `PRETTY_NAME` from an os-release file.
fn pretty_name(os_release: &str) -> Option<String> {
    let value = os_release.lines().find_map(|l| l.strip_prefix("PRETTY_NAME="))?;
    Some(value.trim().trim_matches('"').to_owned())
}

/// Go's name for the architecture, as Kubernetes reports it.
pub fn architecture() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "arm" => "arm",
        other => other,
    }
}

pub fn system_info() -> SystemInfo {
    SystemInfo {
        kernel_version: read_trimmed("/proc/sys/kernel/osrelease"),
        os_image: std::fs::read_to_string("/etc/os-release").ok().as_deref().and_then(pretty_name).unwrap_or_else(|| "Linux".into()),
        architecture: architecture().to_owned(),
        machine_id: read_trimmed("/etc/machine-id"),
        system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid"),
        boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocatable_leaves_the_eviction_thresholds() {
        let c = Capacity { cpus: 2, memory: 1024 * 1024 * 1024, ephemeral_storage: 1000 };
        let a = c.allocatable();
        assert_eq!(a.cpus, 2);
        assert_eq!(a.memory, 1024 * 1024 * 1024 - MEMORY_AVAILABLE_MIN);
        assert_eq!(a.ephemeral_storage, 900);
    }

    #[test]
    fn the_os_image_is_the_pretty_name() {
        assert_eq!(pretty_name("NAME=x\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n").as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
        assert_eq!(pretty_name("NAME=x"), None);
    }

    #[test]
    fn this_machine_has_capacity() {
        let c = capacity(Path::new("/"));
        assert!(c.cpus >= 1 && c.memory > 0 && c.ephemeral_storage > 0, "{c:?}");
    }
}
