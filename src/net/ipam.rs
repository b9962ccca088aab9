//! Host-local address management for the node's pod CIDR (the CNI host-local
//! plugin's role). Each allocated address is a file named after it under
//! `<dir>/<cidr>/`, holding its owner (a pod sandbox's container id), created
//! exclusively: an address is never handed out twice, across restarts too,
//! until its owner releases it. Allocation goes round-robin from the last
//! address handed out, so a released address is not reused at once (a client
//! holding the old pod's IP meets nobody rather than a stranger).

use ipnet::Ipv4Net;
use std::io::{self, Write};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file remembering the last address handed out.
const LAST_RESERVED: &str = "last-reserved";

pub struct Ipam {
    dir: PathBuf,
    cidr: Ipv4Net,
    /// Serialises this process's allocations (files guard against others).
    lock: Mutex<()>,
}

/// The bridge's address in `cidr`: its first host address.
pub fn gateway(cidr: Ipv4Net) -> Ipv4Addr {
    cidr.hosts().next().unwrap_or(cidr.network())
}

impl Ipam {
    /// The allocations of `cidr` under `dir` (created if missing).
    pub fn open(dir: &Path, cidr: Ipv4Net) -> io::Result<Self> {
        let dir = dir.join(cidr.to_string().replace('/', "-"));
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir, cidr, lock: Mutex::new(()) })
    }

    pub fn cidr(&self) -> Ipv4Net {
        self.cidr
    }

    /// Addresses pods may get: the CIDR's hosts but the gateway.
    fn pool(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let gateway = gateway(self.cidr);
        self.cidr.hosts().filter(move |a| *a != gateway)
    }

    /// The address `owner` holds, allocating one if it holds none.
    pub fn allocate(&self, owner: &str) -> io::Result<Ipv4Addr> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(address) = self.address_of(owner) {
            return Ok(address);
        }
        let pool: Vec<Ipv4Addr> = self.pool().collect();
        let last = std::fs::read_to_string(self.dir.join(LAST_RESERVED)).ok().and_then(|s| s.trim().parse::<Ipv4Addr>().ok());
        let start = last.and_then(|l| pool.iter().position(|a| *a == l)).map_or(0, |i| i + 1);
        for address in pool.iter().cycle().skip(start).take(pool.len()) {
            let file = std::fs::OpenOptions::new().write(true).create_new(true).open(self.dir.join(address.to_string()));
            match file {
                Ok(mut file) => {
                    file.write_all(owner.as_bytes())?;
                    file.sync_all()?;
                    std::fs::write(self.dir.join(LAST_RESERVED), address.to_string())?;
                    return Ok(*address);
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other(format!("no free address left in {}", self.cidr)))
    }

    /// The address `owner` holds, if any.
    pub fn address_of(&self, owner: &str) -> Option<Ipv4Addr> {
        self.allocations().into_iter().find(|(_, o)| o == owner).map(|(a, _)| a)
    }

    /// Every allocated address with its owner.
    pub fn allocations(&self) -> Vec<(Ipv4Addr, String)> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return Vec::new() };
        entries
            .flatten()
            .filter_map(|e| {
                let address: Ipv4Addr = e.file_name().to_str()?.parse().ok()?;
                let owner = std::fs::read_to_string(e.path()).ok()?;
                Some((address, owner.trim().to_owned()))
            })
            .collect()
    }

    /// Frees whatever `owner` holds.
    pub fn release(&self, owner: &str) -> io::Result<()> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        for (address, _) in self.allocations().into_iter().filter(|(_, o)| o == owner) {
            match std::fs::remove_file(self.dir.join(address.to_string())) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipam(dir: &Path, cidr: &str) -> Ipam {
        Ipam::open(dir, cidr.parse().unwrap()).unwrap()
    }

    #[test]
    fn addresses_skip_the_gateway_and_stay_with_their_owner() {
        let dir = tempfile::tempdir().unwrap();
        let ipam = ipam(dir.path(), "10.42.3.0/24");
        assert_eq!(gateway(ipam.cidr()), Ipv4Addr::new(10, 42, 3, 1));
        let a = ipam.allocate("sandbox-a").unwrap();
        assert_eq!(a, Ipv4Addr::new(10, 42, 3, 2));
        assert_eq!(ipam.allocate("sandbox-a").unwrap(), a, "a second call returns the same address");
        assert_eq!(ipam.allocate("sandbox-b").unwrap(), Ipv4Addr::new(10, 42, 3, 3));
        assert_eq!(ipam.address_of("sandbox-b"), Some(Ipv4Addr::new(10, 42, 3, 3)));
    }

    #[test]
    fn a_restart_never_hands_out_an_address_twice_and_released_ones_come_back_last() {
        let dir = tempfile::tempdir().unwrap();
        let first = ipam(dir.path(), "10.42.0.0/29"); // hosts .1-.6, pool .2-.6
        let a = first.allocate("a").unwrap();
        let b = first.allocate("b").unwrap();
        drop(first);
        let again = ipam(dir.path(), "10.42.0.0/29");
        assert_eq!(again.address_of("a"), Some(a));
        let c = again.allocate("c").unwrap();
        assert!(c != a && c != b);
        again.release("a").unwrap();
        assert_eq!(again.address_of("a"), None);
        let next: Vec<Ipv4Addr> = ["d", "e", "f"].iter().map(|o| again.allocate(o).unwrap()).collect();
        assert_eq!(next.last(), Some(&a), "the released address is handed out after the never-used ones");
        let err = again.allocate("g").unwrap_err();
        assert!(err.to_string().contains("no free address"), "{err}");
    }

    #[test]
    fn each_cidr_keeps_its_own_allocations() {
        let dir = tempfile::tempdir().unwrap();
        let one = ipam(dir.path(), "10.42.0.0/24");
        let other = ipam(dir.path(), "10.42.1.0/24");
        one.allocate("a").unwrap();
        assert_eq!(other.address_of("a"), None);
        assert_eq!(other.allocate("a").unwrap(), Ipv4Addr::new(10, 42, 1, 2));
    }
}
