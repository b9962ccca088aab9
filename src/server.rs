//! `rk server`: one process with the store, the API server and (as later parts
//! land) the scheduler, controllers, node agent and proxy, wired as tasks that
//! share one shutdown signal. This module only prepares configuration, files
//! and certificates and starts the parts; each part lives in its own module.

use crate::api::{self, Api, admission, auth::Identity, auth::Tokens};
use crate::pki::{self, Pki};
use crate::store::{SharedStorage, SledStore, StoreOptions};
use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;
use tokio_util::sync::CancellationToken;

/// Errors on the cold path (start-up, files, certificates).
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// Everything `rk server` needs to start.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub bind_address: IpAddr,
    pub https_port: u16,
    pub kubeconfig: PathBuf,
    pub tls_sans: Vec<String>,
    pub store: StoreOptions,
    pub controllers: crate::controllers::ControllerOptions,
    /// Simulated nodes to register (for trying and measuring the control plane).
    pub fake_nodes: usize,
    /// Where Service cluster IPs and node ports come from.
    pub service_ranges: crate::api::allocator::Ranges,
    /// The embedded node agent for this machine; `None` runs no agent.
    pub agent: Option<crate::node::AgentConfig>,
    /// Run the service proxy (nf_tables rules for Services) on this host.
    pub proxy: Option<crate::net::ProxyOptions>,
    /// The cluster DNS.
    pub dns: crate::net::dns::DnsOptions,
    /// The ingress proxy.
    pub ingress: crate::net::ingress::IngressOptions,
    /// The port of the embedded agent's HTTPS endpoint (0 picks one).
    pub kubelet_port: u16,
}

/// Default locations: system paths for root, the home directory otherwise.
pub fn default_data_dir() -> PathBuf {
    if is_root() { PathBuf::from("/var/lib/rk") } else { home().join(".rk") }
}

pub fn default_kubeconfig() -> PathBuf {
    if is_root() { PathBuf::from("/etc/rk/rk.yaml") } else { home().join(".rk").join("rk.yaml") }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn home() -> PathBuf {
    std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}

/// A running server: its address and admin credentials, and how to stop it.
pub struct Running {
    pub address: SocketAddr,
    pub api: Arc<Api>,
    pub app: axum::Router,
    shutdown: CancellationToken,
    tasks: tokio::task::JoinSet<()>,
}

impl Running {
    /// Stops accepting, ends watches, lets in-flight requests finish.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Starts the server and returns once it answers requests.
pub async fn start(config: &ServerConfig) -> Result<Running, Error> {
    let started = Instant::now();
    create_private_dir(&config.data_dir)?;
    let store = Arc::new(
        SledStore::open(&config.data_dir.join("db"), config.store.clone())
            .map_err(|e| format!("opening the store in {}: {e}", config.data_dir.display()))?,
    );
    // Compact once before serving, so a restart applies the retention policy at once.
    store.compact_now(now_millis()).map_err(|e| format!("compacting the store: {e}"))?;
    let mut sans = config.tls_sans.clone();
    sans.extend(local_names());
    if !config.bind_address.is_unspecified() {
        sans.push(config.bind_address.to_string());
    }
    let pki = Arc::new(Pki::load_or_create(&config.data_dir.join("tls"), &sans)?);
    let join_token = crate::join::load_or_create(&config.data_dir, &pki.ca_sha256_hex())?;
    let tokens = Tokens::default();
    let admin_token = load_or_create_token(&config.data_dir.join("token"))?;
    tokens.insert(admin_token, Identity::new("system:admin", &["system:masters", "system:authenticated"]));

    let listener = tokio::net::TcpListener::bind((config.bind_address, config.https_port))
        .await
        .map_err(|e| format!("listening on {}:{}: {e}", config.bind_address, config.https_port))?;
    let address = listener.local_addr()?;
    let advertise = advertise_address(config.bind_address, address.port());
    let shutdown = CancellationToken::new();
    let signer = crate::api::tokens::TokenSigner::load_or_create(&config.data_dir.join("tls").join("service-account.key"))?;
    let nodes = node_client(&pki)?;
    let api = Api::new(store.clone() as SharedStorage, tokens, signer, shutdown.clone(), advertise.clone(), config.service_ranges.clone(), Some(nodes));
    crate::api::allocator::repair(&api.store, &api.ranges).await.map_err(|e| format!("repairing service address allocations: {e}"))?;
    let app = api::router(api.clone()).merge(crate::join::router(pki.clone(), join_token));
    bootstrap(&app).await?;
    publish_api_service(&app, &config.service_ranges, api_endpoint(config.bind_address), address.port()).await?;

    let mut tasks = tokio::task::JoinSet::new();
    let controller_client = crate::client::in_process(app.clone(), Identity::system("kube-controller-manager"));
    let controllers = crate::controllers::Context {
        informers: crate::runtime::Informers::new(controller_client.clone(), shutdown.clone()),
        client: controller_client,
        options: config.controllers.clone(),
        shutdown: shutdown.clone(),
        cluster_ca: pki.ca_pem().to_owned(),
    };
    crate::controllers::start(&controllers, &mut tasks);
    let scheduler_client = crate::client::in_process(app.clone(), Identity::system("kube-scheduler"));
    tasks.spawn(crate::sched::run(crate::sched::Profile::default(), controllers.informers.clone(), scheduler_client, shutdown.clone()));
    if let Some(options) = config.proxy.clone() {
        tasks.spawn(crate::net::run(controllers.informers.clone(), options, shutdown.clone()));
        tasks.spawn(crate::net::servicelb::run(controllers.clone()));
    }
    if config.dns.enabled {
        start_dns(config, &app, &controllers.informers, shutdown.clone(), &mut tasks).await;
    }
    if config.ingress.enabled {
        start_ingress(config, &app, &controllers.informers, shutdown.clone(), &mut tasks).await;
    }
    if config.fake_nodes > 0 {
        let renew_every = crate::node::fake::lease_renew_interval(config.controllers.node_monitor_grace_period);
        tasks.spawn(crate::node::fake::run(controllers.informers.clone(), config.fake_nodes, renew_every, shutdown.clone()));
    }
    if let Some(agent) = &config.agent {
        let identity = Identity::new(&format!("system:node:{}", agent.node_name), &["system:nodes", "system:authenticated"]);
        let client = crate::client::in_process(app.clone(), identity);
        let mut agent = agent.clone();
        let tls = agent_serving_tls(&pki, &agent.node_name)?;
        agent.endpoint = Some(crate::node::EndpointConfig { port: config.kubelet_port, tls });
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            if let Err(e) = crate::node::run(client, agent, shutdown).await {
                tracing::error!(error = %e, "the node agent stopped");
            }
        });
    }
    let tls = Arc::new(pki.server_config()?);
    tasks.spawn(api::serve::serve_tls(listener, tls, app.clone(), shutdown.clone()));
    {
        let shutdown = shutdown.clone();
        let store = store.clone();
        tasks.spawn(async move {
            tokio::select! {
                _ = store.run_compactor() => {}
                _ = shutdown.cancelled() => {}
            }
        });
    }
    pki::write_kubeconfig(&config.kubeconfig, &format!("https://{advertise}"), pki.ca_pem(), pki.admin_cert_pem(), pki.admin_key_pem())?;
    tracing::info!(
        address = %address,
        kubeconfig = %config.kubeconfig.display(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "rk server is ready"
    );
    Ok(Running { address, api, app, shutdown, tasks })
}

/// The API server's client for node agents: its own certificate in
/// `system:masters`, trusting agents whose certificates the cluster CA issued.
fn node_client(pki: &Pki) -> Result<crate::api::nodeproxy::NodeClient, Error> {
    let (cert, key) = pki.issue_client_cert("kube-apiserver-kubelet-client", Some("system:masters"))?;
    Ok(crate::api::nodeproxy::NodeClient::new(pki::tls_client_config(pki.ca_pem(), Some((&cert, &key)))?))
}

/// A serving certificate for the agent of `node` on this machine, naming the
/// addresses the API server may reach it at.
pub fn agent_serving_tls(pki: &Pki, node: &str) -> Result<crate::node::endpoint::ServingTls, Error> {
    let (cert_pem, key_pem) = pki.issue_serving_cert(node, &crate::node::host::endpoint_names(node))?;
    Ok(crate::node::endpoint::ServingTls { cert_pem, key_pem, ca_pem: pki.ca_pem().to_owned() })
}

/// Runs the server until SIGTERM or SIGINT, then shuts down cleanly.
pub async fn run(config: ServerConfig) -> Result<(), Error> {
    let running = start(&config).await?;
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
    }
    running.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// Objects every cluster has from its first start, created through the API: the
/// initial namespaces and their default service accounts (so pods can be created
/// at once; the service account controller covers later namespaces).
async fn bootstrap(app: &axum::Router) -> Result<(), Error> {
    let client = crate::client::in_process(app.clone(), Identity::system("rk-server"));
    let params = kube::api::PostParams::default();
    let ignore_existing = |what: String, r: Result<(), kube::Error>| match r {
        Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
        Err(e) => Err(format!("creating {what}: {e}")),
        Ok(()) => Ok(()),
    };
    for name in admission::INITIAL_NAMESPACES {
        let meta = |n: &str| kube::api::ObjectMeta { name: Some(n.into()), ..Default::default() };
        let ns = Namespace { metadata: meta(name), ..Default::default() };
        ignore_existing(format!("namespace {name}"), kube::Api::<Namespace>::all(client.clone()).create(&params, &ns).await.map(drop))?;
        let sa = ServiceAccount { metadata: meta(crate::controllers::serviceaccounts::DEFAULT_ACCOUNT), ..Default::default() };
        let accounts = kube::Api::<ServiceAccount>::namespaced(client.clone(), name);
        ignore_existing(format!("service account {name}/default"), accounts.create(&params, &sa).await.map(drop))?;
    }
    Ok(())
}

/// The `kubernetes` Service in `default`, at the first address of the service
/// range, with Endpoints pointing at this server, as the API server keeps them.
async fn publish_api_service(app: &axum::Router, ranges: &crate::api::allocator::Ranges, ip: IpAddr, port: u16) -> Result<(), Error> {
    use crate::net::node_service::{NodePort, NodeService, publish};
    let client = crate::client::in_process(app.clone(), Identity::system("rk-server"));
    let ports = [NodePort { name: "https", protocol: "TCP", port: 443, target: port }];
    let labels = [("component", "apiserver"), ("provider", "kubernetes")];
    let service = NodeService { namespace: "default", name: "kubernetes", labels: &labels, cluster_ip: IpAddr::V4(ranges.api_service_ip()), address: ip, ports: &ports };
    Ok(publish(&client, &service).await?)
}

/// Starts the cluster DNS and publishes its Service. A DNS that cannot listen
/// (port 53 taken, no privilege) is reported, not fatal: the rest of the
/// cluster works without it.
async fn start_dns(config: &ServerConfig, app: &axum::Router, informers: &crate::runtime::Informers, shutdown: CancellationToken, tasks: &mut tokio::task::JoinSet<()>) {
    let dns_ip = config.service_ranges.dns_service_ip();
    let mut options = config.dns.clone();
    // A wildcard UDP socket answers from the address that routes back to the
    // pod (its bridge's), which the conntrack entry of the kube-dns Service's
    // DNAT does not expect, so the pod never sees the answer. Bound to the one
    // address the Service's Endpoints name, answers leave from it.
    if options.listen.ip().is_unspecified() {
        options.listen.set_ip(api_endpoint(options.listen.ip()));
    }
    let address = match crate::net::dns::start(&options, informers, dns_ip, shutdown, tasks).await {
        Ok(address) => address,
        Err(e) => return tracing::error!(error = %e, "cluster DNS not started; set --dns-listen or --disable-dns"),
    };
    let client = crate::client::in_process(app.clone(), Identity::system("rk-server"));
    if let Err(e) = crate::net::dns::publish_service(&client, dns_ip, api_endpoint(address.ip()), address.port()).await {
        tracing::error!(error = %e, "the kube-dns Service could not be published");
    }
}

/// Starts the ingress proxy; like the DNS, one that cannot listen is reported, not fatal.
async fn start_ingress(config: &ServerConfig, app: &axum::Router, informers: &Arc<crate::runtime::Informers>, shutdown: CancellationToken, tasks: &mut tokio::task::JoinSet<()>) {
    let client = crate::client::in_process(app.clone(), Identity::system("rk-ingress"));
    let address = api_endpoint(config.ingress.http.ip());
    if let Err(e) = crate::net::ingress::start(&config.ingress, client, informers.clone(), address, shutdown, tasks).await {
        tracing::error!(error = %e, "ingress proxy not started; set --ingress-http/--ingress-https or --disable-ingress");
    }
}

/// The address pods reach this server at: the bound one, or the host's
/// default-route address when listening everywhere.
fn api_endpoint(bind: IpAddr) -> IpAddr {
    if !bind.is_unspecified() {
        return bind;
    }
    let outgoing = std::net::UdpSocket::bind("0.0.0.0:0").and_then(|s| s.connect("10.255.255.255:1").and(s.local_addr()));
    outgoing.map(|a| a.ip()).unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

/// The address clients are told to use: loopback when listening everywhere.
fn advertise_address(bind: IpAddr, port: u16) -> String {
    match bind {
        IpAddr::V4(v4) if v4.is_unspecified() => format!("127.0.0.1:{port}"),
        IpAddr::V6(v6) if v6.is_unspecified() => format!("127.0.0.1:{port}"),
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        IpAddr::V4(v4) => format!("{v4}:{port}"),
    }
}

/// The host name and the address of the default route, for certificate SANs.
fn local_names() -> Vec<String> {
    let mut names = Vec::new();
    if let Ok(host) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
        let host = host.trim();
        if !host.is_empty() {
            names.push(host.to_ascii_lowercase());
        }
    }
    // Connecting a UDP socket sends nothing; it only picks the outgoing interface.
    if let Ok(socket) = std::net::UdpSocket::bind("0.0.0.0:0")
        && socket.connect("10.255.255.255:1").is_ok()
            && let Ok(addr) = socket.local_addr() {
                names.push(addr.ip().to_string());
            }
    names
}

fn now_millis() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn create_private_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| format!("creating data directory {}: {e}", dir.display()).into())
}

/// The admin bearer token, created once (32 random bytes, hex) with mode 0600.
fn load_or_create_token(path: &Path) -> Result<String, Error> {
    if let Ok(token) = std::fs::read_to_string(path) {
        let token = token.trim().to_owned();
        if !token.is_empty() {
            return Ok(token);
        }
    }
    let mut bytes = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).map_err(|_| "no randomness available")?;
    let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    file.write_all(token.as_bytes())?;
    file.sync_all()?;
    Ok(token)
}
