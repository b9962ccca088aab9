//! How a pod becomes Docker containers: the sandbox (the rk/pause image
//! holding the pod's network and IPC namespaces on the pod network) and the
//! init and app containers that join it, with command and args, environment,
//! working directory, volume mounts, resources, security context and
//! stdin/tty translated as the kubelet's Docker integration did.

use super::docker::{self, Role};
use super::network::EtcFiles;
use super::volumes::Prepared;
use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use k8s_openapi::api::core::v1::{Container, Pod};
use std::collections::HashMap;
use std::path::PathBuf;

/// CFS period the CPU limit is expressed against (the kernel's default).
const CPU_PERIOD: i64 = 100_000;
/// Shares of a container that requests no CPU.
const MIN_CPU_SHARES: i64 = 2;

/// The Docker name of a pod's container (`POD` for the sandbox); unique per
/// attempt, so a second create of the same attempt fails instead of running twice.
pub fn container_name(pod: &Pod, container: &str, attempt: u32) -> String {
    let m = &pod.metadata;
    format!(
        "rk_{container}_{}_{}_{}_{attempt}",
        m.name.as_deref().unwrap_or(""),
        m.namespace.as_deref().unwrap_or(""),
        m.uid.as_deref().unwrap_or("")
    )
}

/// `name_namespace(uid)`, how the kubelet names a pod in messages.
pub fn pod_description(pod: &Pod) -> String {
    let m = &pod.metadata;
    format!("{}_{}({})", m.name.as_deref().unwrap_or(""), m.namespace.as_deref().unwrap_or(""), m.uid.as_deref().unwrap_or(""))
}

fn labels(base: &HashMap<String, String>, pod: &Pod, role: Role, name: &str, attempt: u32) -> HashMap<String, String> {
    let m = &pod.metadata;
    let mut labels = base.clone();
    let grace = pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30);
    for (k, v) in [
        (docker::LABEL_POD_UID, m.uid.clone().unwrap_or_default()),
        (docker::LABEL_POD_NAMESPACE, m.namespace.clone().unwrap_or_default()),
        (docker::LABEL_POD_NAME, m.name.clone().unwrap_or_default()),
        (docker::LABEL_ROLE, role.label().to_owned()),
        (docker::LABEL_CONTAINER_NAME, name.to_owned()),
        (docker::LABEL_ATTEMPT, attempt.to_string()),
        (docker::LABEL_GRACE, grace.to_string()),
    ] {
        labels.insert(k.to_owned(), v);
    }
    labels
}

/// The sandbox: the pause process on `network` (or the host's), owning the
/// pod's hostname and IPC namespace.
pub fn sandbox(base: &HashMap<String, String>, pod: &Pod, image: &str, network: &str, attempt: u32) -> (String, ContainerCreateBody) {
    let spec = pod.spec.clone().unwrap_or_default();
    let host_network = spec.host_network == Some(true);
    let mut hostname = spec.hostname.clone().or_else(|| pod.metadata.name.clone()).unwrap_or_default();
    hostname.truncate(63);
    let body = ContainerCreateBody {
        image: Some(image.to_owned()),
        hostname: (!host_network).then_some(hostname),
        labels: Some(labels(base, pod, Role::Sandbox, "", attempt)),
        host_config: Some(HostConfig {
            network_mode: Some(if host_network { "host".to_owned() } else { network.to_owned() }),
            ipc_mode: Some(if spec.host_ipc == Some(true) { "host" } else { "shareable" }.to_owned()),
            pid_mode: (spec.host_pid == Some(true)).then(|| "host".to_owned()),
            cpu_shares: Some(MIN_CPU_SHARES),
            ..Default::default()
        }),
        ..Default::default()
    };
    (container_name(pod, "POD", attempt), body)
}

/// Everything decided before an init or app container is created.
pub struct ContainerPlan<'a> {
    pub pod: &'a Pod,
    pub container: &'a Container,
    pub role: Role,
    pub attempt: u32,
    pub sandbox_id: &'a str,
    pub env: Vec<(String, String)>,
    pub volumes: &'a HashMap<String, Prepared>,
    /// The user the image runs as by default.
    pub image_user: &'a str,
    /// Host file mounted at the container's terminationMessagePath.
    pub termination_message_file: PathBuf,
    /// The pod's resolv.conf and hosts, mounted over the image's.
    pub etc: &'a EtcFiles,
}

fn millis(q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>) -> Option<i64> {
    q.and_then(|q| crate::api::kinds::parse_quantity(&q.0)).map(|n| (n / 1_000_000) as i64)
}

fn bytes(q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>) -> Option<i64> {
    q.and_then(|q| crate::api::kinds::parse_quantity(&q.0)).map(|n| (n / 1_000_000_000) as i64)
}

impl ContainerPlan<'_> {
    /// The user to run as, or the kubelet's refusal when runAsNonRoot cannot hold.
    fn user(&self) -> Result<Option<String>, String> {
        let pod_sc = self.pod.spec.as_ref().and_then(|s| s.security_context.clone()).unwrap_or_default();
        let sc = self.container.security_context.clone().unwrap_or_default();
        let uid = sc.run_as_user.or(pod_sc.run_as_user);
        let gid = sc.run_as_group.or(pod_sc.run_as_group);
        let non_root = sc.run_as_non_root.or(pod_sc.run_as_non_root) == Some(true);
        let image_user = self.image_user.split(':').next().unwrap_or("");
        if non_root {
            let who = format!("(pod: \"{}\", container: {})", pod_description(self.pod), self.container.name);
            match uid {
                Some(0) => return Err(format!("container's runAsUser breaks non-root policy {who}")),
                Some(_) => {}
                None => match image_user.parse::<i64>() {
                    Ok(0) => return Err(format!("container has runAsNonRoot and image will run as root {who}")),
                    Ok(_) => {}
                    Err(_) if image_user.is_empty() || image_user == "root" => {
                        return Err(format!("container has runAsNonRoot and image will run as root {who}"));
                    }
                    Err(_) => {
                        return Err(format!("container has runAsNonRoot and image has non-numeric user ({image_user}), cannot verify user is non-root {who}"));
                    }
                },
            }
        }
        Ok(match (uid, gid) {
            (Some(u), Some(g)) => Some(format!("{u}:{g}")),
            (Some(u), None) => Some(u.to_string()),
            (None, Some(g)) => Some(format!("{}:{g}", if image_user.is_empty() { "0" } else { image_user })),
            (None, None) => None,
        })
    }

    fn mounts(&self) -> Result<Vec<Mount>, String> {
        let mut mounts = Vec::new();
        for vm in self.container.volume_mounts.iter().flatten() {
            let Some(volume) = self.volumes.get(&vm.name) else {
                return Err(format!("cannot find volume \"{}\" to mount into container \"{}\"", vm.name, self.container.name));
            };
            let mut source = volume.host_path.clone();
            let sub_path = vm.sub_path.as_deref().filter(|s| !s.is_empty());
            if let Some(sub) = sub_path {
                if sub.split('/').any(|c| c == "..") || sub.starts_with('/') {
                    return Err(format!("subPath {sub:?} must be a relative path inside the volume"));
                }
                source = source.join(sub);
                if !source.exists() && !volume.read_only {
                    std::fs::create_dir_all(&source).map_err(|e| format!("creating subPath {sub:?}: {e}"))?;
                }
            }
            mounts.push(Mount {
                target: Some(vm.mount_path.clone()),
                source: Some(source.display().to_string()),
                typ: Some(MountType::BIND),
                read_only: Some(vm.read_only == Some(true) || volume.read_only),
                ..Default::default()
            });
        }
        let etc = [("/etc/resolv.conf", Some(&self.etc.resolv_conf)), ("/etc/hosts", self.etc.hosts.as_ref())];
        for (target, source) in etc.into_iter().filter_map(|(t, s)| Some((t, s?))) {
            mounts.push(Mount {
                target: Some(target.to_owned()),
                source: Some(source.display().to_string()),
                typ: Some(MountType::BIND),
                ..Default::default()
            });
        }
        let message_path = self.container.termination_message_path.clone().unwrap_or_else(|| "/dev/termination-log".into());
        mounts.push(Mount {
            target: Some(message_path),
            source: Some(self.termination_message_file.display().to_string()),
            typ: Some(MountType::BIND),
            ..Default::default()
        });
        Ok(mounts)
    }

    fn host_config(&self) -> Result<HostConfig, String> {
        let spec = self.pod.spec.clone().unwrap_or_default();
        let pod_sc = spec.security_context.clone().unwrap_or_default();
        let sc = self.container.security_context.clone().unwrap_or_default();
        let resources = self.container.resources.clone().unwrap_or_default();
        let limit = |name: &str| resources.limits.as_ref().and_then(|l| l.get(name));
        let request = |name: &str| resources.requests.as_ref().and_then(|r| r.get(name)).or_else(|| limit(name));
        let cpu_limit = millis(limit("cpu")).filter(|m| *m > 0);
        let capabilities = sc.capabilities.clone().unwrap_or_default();
        let mut groups: Vec<String> = pod_sc.supplemental_groups.iter().flatten().map(|g| g.to_string()).collect();
        groups.extend(pod_sc.fs_group.map(|g| g.to_string()));
        let joined = format!("container:{}", self.sandbox_id);
        Ok(HostConfig {
            network_mode: Some(joined.clone()),
            ipc_mode: Some(if spec.host_ipc == Some(true) { "host".to_owned() } else { joined.clone() }),
            pid_mode: if spec.host_pid == Some(true) {
                Some("host".into())
            } else {
                (spec.share_process_namespace == Some(true)).then_some(joined)
            },
            mounts: Some(self.mounts()?),
            cpu_period: cpu_limit.map(|_| CPU_PERIOD),
            cpu_quota: cpu_limit.map(|m| (m * CPU_PERIOD / 1000).max(1000)),
            cpu_shares: Some(millis(request("cpu")).map_or(MIN_CPU_SHARES, |m| (m * 1024 / 1000).max(MIN_CPU_SHARES))),
            memory: bytes(limit("memory")).filter(|b| *b > 0),
            privileged: sc.privileged,
            readonly_rootfs: sc.read_only_root_filesystem,
            cap_add: capabilities.add.filter(|c| !c.is_empty()),
            cap_drop: capabilities.drop.filter(|c| !c.is_empty()),
            group_add: (!groups.is_empty()).then_some(groups),
            security_opt: (sc.allow_privilege_escalation == Some(false)).then(|| vec!["no-new-privileges".to_owned()]),
            ..Default::default()
        })
    }

    /// The container's Docker name and create request, or the
    /// CreateContainerConfigError message.
    pub fn body(&self, base: &HashMap<String, String>) -> Result<(String, ContainerCreateBody), String> {
        let vars: HashMap<String, String> = self.env.iter().cloned().collect();
        let expand_all = |list: &Option<Vec<String>>| list.as_ref().map(|l| l.iter().map(|s| super::env::expand(s, &vars)).collect::<Vec<_>>());
        let c = self.container;
        let mut labels = labels(base, self.pod, self.role, &c.name, self.attempt);
        labels.insert(docker::LABEL_SANDBOX.into(), self.sandbox_id.to_owned());
        labels.insert(docker::LABEL_SPEC_IMAGE.into(), c.image.clone().unwrap_or_default());
        labels.insert(docker::LABEL_TERMINATION_MESSAGE.into(), self.termination_message_file.display().to_string());
        let body = ContainerCreateBody {
            image: c.image.clone(),
            // An explicit command replaces the image's entrypoint and its default arguments.
            entrypoint: expand_all(&c.command),
            cmd: expand_all(&c.args).or_else(|| c.command.as_ref().map(|_| Vec::new())),
            env: Some(self.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            working_dir: c.working_dir.clone().filter(|w| !w.is_empty()),
            user: self.user()?,
            tty: Some(c.tty == Some(true)),
            open_stdin: Some(c.stdin == Some(true)),
            stdin_once: Some(c.stdin_once == Some(true)),
            attach_stdin: Some(c.stdin == Some(true)),
            labels: Some(labels),
            host_config: Some(self.host_config()?),
            ..Default::default()
        };
        Ok((container_name(self.pod, &c.name, self.attempt), body))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{Capabilities, PodSecurityContext, PodSpec, ResourceRequirements, SecurityContext, VolumeMount};
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn pod(container: Container) -> Pod {
        let mut p = Pod::default();
        p.metadata.name = Some("web".into());
        p.metadata.namespace = Some("ns".into());
        p.metadata.uid = Some("u1".into());
        p.spec = Some(PodSpec { containers: vec![container], security_context: Some(PodSecurityContext { supplemental_groups: Some(vec![5]), ..Default::default() }), ..Default::default() });
        p
    }

    fn etc() -> &'static EtcFiles {
        static ETC: std::sync::OnceLock<EtcFiles> = std::sync::OnceLock::new();
        ETC.get_or_init(|| EtcFiles { resolv_conf: "/data/etc/resolv.conf".into(), hosts: Some("/data/etc/hosts".into()) })
    }

    fn plan<'a>(pod: &'a Pod, volumes: &'a HashMap<String, Prepared>, image_user: &'a str) -> ContainerPlan<'a> {
        ContainerPlan {
            pod,
            container: &pod.spec.as_ref().unwrap().containers[0],
            role: Role::App,
            attempt: 3,
            sandbox_id: "sb",
            env: vec![("GREETING".into(), "hi".into())],
            volumes,
            image_user,
            termination_message_file: PathBuf::from("/data/msg"),
            etc: etc(),
        }
    }

    #[test]
    fn a_container_joins_its_sandbox_with_limits_and_security() {
        let container = Container {
            name: "app".into(),
            image: Some("rk-test/busybox:1".into()),
            command: Some(vec!["sh".into(), "-c".into()]),
            args: Some(vec!["echo $(GREETING)".into()]),
            resources: Some(ResourceRequirements {
                limits: Some([("cpu".to_owned(), Quantity("500m".into())), ("memory".to_owned(), Quantity("64Mi".into()))].into()),
                ..Default::default()
            }),
            security_context: Some(SecurityContext {
                run_as_user: Some(1000),
                read_only_root_filesystem: Some(true),
                capabilities: Some(Capabilities { add: Some(vec!["NET_ADMIN".into()]), drop: Some(vec!["ALL".into()]) }),
                ..Default::default()
            }),
            volume_mounts: Some(vec![VolumeMount { name: "data".into(), mount_path: "/data".into(), ..Default::default() }]),
            ..Default::default()
        };
        let pod = pod(container);
        let volumes: HashMap<String, Prepared> = [("data".to_owned(), Prepared { host_path: "/v/data".into(), read_only: false })].into();
        let (name, body) = plan(&pod, &volumes, "").body(&HashMap::new()).unwrap();
        assert_eq!(name, "rk_app_web_ns_u1_3");
        assert_eq!(body.entrypoint.unwrap(), ["sh", "-c"]);
        assert_eq!(body.cmd.unwrap(), ["echo hi"]);
        assert_eq!(body.user.as_deref(), Some("1000"));
        let host = body.host_config.unwrap();
        assert_eq!(host.network_mode.as_deref(), Some("container:sb"));
        assert_eq!(host.ipc_mode.as_deref(), Some("container:sb"));
        assert_eq!((host.cpu_period, host.cpu_quota, host.cpu_shares), (Some(100_000), Some(50_000), Some(512)));
        assert_eq!(host.memory, Some(64 << 20));
        assert_eq!(host.readonly_rootfs, Some(true));
        assert_eq!(host.cap_drop.unwrap(), ["ALL"]);
        assert_eq!(host.group_add.unwrap(), ["5"]);
        let mounts = host.mounts.unwrap();
        assert_eq!(mounts[0].source.as_deref(), Some("/v/data"));
        let targets: Vec<&str> = mounts.iter().filter_map(|m| m.target.as_deref()).collect();
        assert_eq!(targets, ["/data", "/etc/resolv.conf", "/etc/hosts", "/dev/termination-log"]);
        assert_eq!(mounts[1].source.as_deref(), Some("/data/etc/resolv.conf"));
        assert_eq!(body.labels.unwrap()[docker::LABEL_ATTEMPT], "3");
    }

    #[test]
    fn run_as_non_root_refuses_a_root_image() {
        let container = Container {
            name: "app".into(),
            security_context: Some(SecurityContext { run_as_non_root: Some(true), ..Default::default() }),
            ..Default::default()
        };
        let pod = pod(container);
        let volumes = HashMap::new();
        let err = plan(&pod, &volumes, "").body(&HashMap::new()).unwrap_err();
        assert!(err.starts_with("container has runAsNonRoot and image will run as root"), "{err}");
        assert!(plan(&pod, &volumes, "1000").body(&HashMap::new()).is_ok());
    }

    #[test]
    fn a_mount_of_an_unknown_volume_is_a_config_error() {
        let container = Container {
            name: "app".into(),
            volume_mounts: Some(vec![VolumeMount { name: "nope".into(), mount_path: "/x".into(), ..Default::default() }]),
            ..Default::default()
        };
        let pod = pod(container);
        let volumes = HashMap::new();
        assert_eq!(plan(&pod, &volumes, "").body(&HashMap::new()).unwrap_err(), "cannot find volume \"nope\" to mount into container \"app\"");
    }
}
