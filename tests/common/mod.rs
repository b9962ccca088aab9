//! Test harness: runs the real `rk` binary on an ephemeral port with its own data
//! directory, and drives it with unmodified clients (kubectl, the kube crate,
//! the Python client).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub url: String,
    /// Extra `rk server` arguments.
    args: Vec<String>,
    /// The port of the first start, kept across restarts so clients can reconnect.
    port: u16,
    /// The embedded node agent's node name, if it runs one.
    pub node: Option<String>,
    /// Whether the service proxy programs this host's nf_tables (off unless a test opts in).
    pub proxy: bool,
    /// The network namespace (under /run/netns) the server and kubectl run in; the host's when None.
    pub netns: Option<String>,
    /// The address the API listens on.
    bind: String,
}

impl Server {
    /// Starts `rk server` without a node agent and waits until it answers.
    pub fn start() -> Server {
        Self::start_with(&[])
    }

    /// Starts `rk server` with extra arguments and no node agent (no Docker needed).
    /// The node's network services (DNS on port 53, ingress on 80/443) stay off
    /// unless a test asks for them with their flags, so parallel servers do not
    /// compete for those ports.
    pub fn start_with(args: &[&str]) -> Server {
        let mut all = vec!["--disable-agent"];
        all.extend_from_slice(args);
        Self::launch(&all, None, false)
    }

    /// Starts `rk server` with its embedded node agent on Docker, under a node
    /// name of its own so concurrent tests never touch each other's containers.
    /// Its pods join Docker's bridge network: rk's pod network would make every
    /// concurrent test's agent claim the same bridge and addresses on this host
    /// (tests/podnet.rs runs it in network namespaces of its own).
    pub fn start_with_agent(args: &[&str]) -> Server {
        let node = unique_node_name();
        let mut all = vec!["--node-name", node.as_str(), "--disable-pod-network", "--kubelet-port", "0"];
        all.extend_from_slice(args);
        Self::launch(&all, Some(node.clone()), false)
    }

    /// Starts `rk server` with its node agent, rk's pod network and the service
    /// proxy inside network namespace `netns`, where they own the networking;
    /// the API listens on `bind` there, and kubectl runs there too.
    pub fn start_in_netns(netns: &str, bind: &str, args: &[&str]) -> Server {
        let node = unique_node_name();
        let dir = tempfile::tempdir().expect("temp dir");
        let mut all = vec!["--node-name".to_owned(), node.clone()];
        all.extend(args.iter().map(|a| a.to_string()));
        let mut server = Server {
            child: None,
            dir,
            url: String::new(),
            args: all,
            port: 0,
            node: Some(node),
            proxy: true,
            netns: Some(netns.to_owned()),
            bind: bind.to_owned(),
        };
        server.spawn();
        server
    }

    /// Starts `rk server` (no node agent) with its service proxy, which programs
    /// the nf_tables of the network namespace the calling thread is in (root only).
    pub fn start_with_proxy(args: &[&str]) -> Server {
        let mut all = vec!["--disable-agent"];
        all.extend_from_slice(args);
        Self::launch(&all, None, true)
    }

    fn launch(args: &[&str], node: Option<String>, proxy: bool) -> Server {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        for (prefixes, off) in [(["--dns", "--disable-dns"], "--disable-dns"), (["--ingress", "--disable-ingress"], "--disable-ingress")] {
            if !args.iter().any(|a| prefixes.iter().any(|p| a.starts_with(p))) {
                args.push(off.to_owned());
            }
        }
        let mut server = Server { child: None, dir, url: String::new(), args, port: 0, node, proxy, netns: None, bind: "127.0.0.1".into() };
        server.spawn();
        server
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.dir.path().join("kubeconfig.yaml")
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn spawn(&mut self) {
        let _ = std::fs::remove_file(self.kubeconfig());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join("server.log")).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_rk"));
        if let Some(netns) = &self.netns {
            in_netns(&mut command, netns);
        }
        let child = command
            .args(["server", "--bind-address", &self.bind, "--https-listen-port", &self.port.to_string()])
            .args(&self.args)
            .args((!self.proxy).then_some("--disable-proxy"))
            .arg("--data-dir")
            .arg(self.data_dir())
            .arg("--write-kubeconfig")
            .arg(self.kubeconfig())
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("rk starts");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.kubeconfig().exists() {
            assert!(Instant::now() < deadline, "rk server did not write its kubeconfig; log:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(10));
        }
        let config = std::fs::read_to_string(self.kubeconfig()).expect("kubeconfig");
        self.url = config.lines().find_map(|l| l.trim().strip_prefix("server: ")).expect("server URL").trim().to_owned();
        self.port = self.url.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port in URL");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// SIGKILL: no chance to flush or clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, and the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        // SAFETY: sending a signal to our own child process.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        child.wait().expect("exit status")
    }

    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// SIGKILL, then start again on the same data directory with other extra arguments.
    pub fn restart_with_args(&mut self, args: &[&str]) {
        self.args = args.iter().map(|a| a.to_string()).collect();
        self.restart();
    }

    /// The extra arguments this server runs with.
    pub fn args(&self) -> Vec<String> {
        self.args.clone()
    }

    /// Runs kubectl against this server with a private discovery cache.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_with(args, None, &[])
    }

    pub fn kubectl_with(&self, args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> Output {
        let mut cmd = Command::new("kubectl");
        if let Some(netns) = &self.netns {
            in_netns(&mut cmd, netns);
        }
        cmd.args(args)
            .env("KUBECONFIG", self.kubeconfig())
            .env("KUBECACHEDIR", self.dir.path().join("kubecache"))
            .env("HOME", self.dir.path())
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("kubectl runs");
        if let Some(input) = stdin {
            use std::io::Write;
            child.stdin.take().expect("stdin").write_all(input.as_bytes()).expect("write stdin");
        }
        child.wait_with_output().expect("kubectl output")
    }

    /// `program` (kubectl, or something running it) with this server's kubeconfig,
    /// for tests that drive the process themselves.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("KUBECONFIG", self.kubeconfig()).env("KUBECACHEDIR", self.dir.path().join("kubecache")).env("HOME", self.dir.path());
        cmd
    }

    /// Runs kubectl and returns stdout, failing the test if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {} failed:\nstdout: {}\nstderr: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs kubectl expecting failure; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(!out.status.success(), "kubectl {} unexpectedly succeeded: {}", args.join(" "), String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig()).expect("kubeconfig parses");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await.expect("config");
        kube::Client::try_from(config).expect("client")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
        if let Some(node) = &self.node {
            remove_node_containers(node);
            unmount_below(self.dir.path());
        }
    }
}

/// A node name no other test (or concurrent test run) uses: agents sharing
/// one Docker engine tell their containers apart by it.
pub fn unique_node_name() -> String {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    format!("rk-test-{}-{}", std::process::id(), NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
}

/// An `rk agent` process with its own data directory and log, stopped and
/// its node's containers removed when dropped.
pub struct Agent {
    child: Child,
    pub node: String,
    dir: tempfile::TempDir,
}

impl Agent {
    /// Starts `rk agent --node-name NODE ARGS --data-dir …`, in network
    /// namespace `netns` when given.
    pub fn start(node: &str, netns: Option<&str>, args: &[&str]) -> Agent {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = std::fs::File::create(dir.path().join("agent.log")).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_rk"));
        if let Some(netns) = netns {
            in_netns(&mut command, netns);
        }
        let child = command
            .args(["agent", "--node-name", node])
            .args(args)
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("rk agent starts");
        Agent { child, node: node.to_owned(), dir }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("agent.log")).unwrap_or_default()
    }

    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
        remove_node_containers(&self.node);
    }
}

/// Makes `command` start inside network namespace `netns` (under /run/netns).
pub fn in_netns<'a>(command: &'a mut Command, netns: &str) -> &'a mut Command {
    use std::os::fd::AsRawFd;
    use std::os::unix::process::CommandExt;
    let namespace = std::fs::File::open(format!("/run/netns/{netns}")).expect("the network namespace exists");
    // SAFETY: between fork and exec the child only calls setns(2), which is
    // async-signal-safe, on a descriptor it inherited.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
        })
    }
}

/// Builds the container images the node agent's tests use (tools/test-images.sh), once per test binary.
pub fn test_images() {
    static BUILT: std::sync::Once = std::sync::Once::new();
    BUILT.call_once(|| {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tools/test-images.sh");
        let status = Command::new("bash").arg(script).status().expect("tools/test-images.sh runs");
        assert!(status.success(), "building the test images failed");
    });
}

/// Removes every container the agent of `node` left behind.
pub fn remove_node_containers(node: &str) {
    let ids = Command::new("docker").args(["ps", "-aq", "--filter", &format!("label=io.rk.node={node}")]).output();
    let ids: Vec<String> = ids.map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().map(str::to_owned).collect()).unwrap_or_default();
    if !ids.is_empty() {
        let _ = Command::new("docker").args(["rm", "-f", "-v"]).args(&ids).stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}

/// Unmounts what an agent mounted under `dir` (memory-backed emptyDirs), so it can be removed.
fn unmount_below(dir: &Path) {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for target in mounts.lines().filter_map(|l| l.split_whitespace().nth(1)).filter(|t| Path::new(t).starts_with(dir)) {
        let _ = Command::new("umount").args(["-l", target]).status();
    }
}

/// Writes `content` to a file in `dir` and returns its path.
pub fn write_file(dir: &Path, name: &str, content: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, content).expect("write file");
    path
}

/// Polls `check` until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    check()
}

/// A loopback port free for both TCP and UDP right now, for a listener the
/// test asks the server to open.
pub fn free_port() -> u16 {
    loop {
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a TCP port");
        let port = tcp.local_addr().expect("local address").port();
        if std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

