//! The `rk` command line: a thin layer over the library's `server` (and, as they
//! land, `agent` and `bench`) entry points.

use clap::{Parser, Subcommand};
use rk::server::{self, ServerConfig};
use rk::store::StoreOptions;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "rk", version, about = "A single-binary, Kubernetes-compatible cluster", long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a cluster: the store, the API server and the control plane, in one process
    Server(Box<ServerArgs>),
    /// Measure a fresh server through its API: start-up, creates/s, latencies, watch delivery, memory (`rk bench dns`: DNS query latency)
    Bench(BenchArgs),
    /// Run this machine as a node of a cluster: the node agent and the service proxy
    Agent(AgentArgs),
    /// Print the server's join token (for `rk agent --token`)
    Token(TokenArgs),
}

#[derive(clap::Args)]
struct AgentArgs {
    /// The API server to join, e.g. https://10.0.0.1:6443
    #[arg(long, value_name = "URL", requires = "token", required_unless_present = "kubeconfig")]
    server: Option<String>,

    /// The join token (`rk token` on the server prints it)
    #[arg(long, env = "RK_TOKEN", value_name = "TOKEN", requires = "server")]
    token: Option<String>,

    /// Instead of a token: the credentials of an existing kubeconfig (no logs/exec endpoint then)
    #[arg(long, value_name = "PATH", conflicts_with_all = ["server", "token"])]
    kubeconfig: Option<PathBuf>,

    /// Name of this machine's node [default: the host name]
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,

    /// Where the agent keeps its credentials, pods' files and pod-network state [default: /var/lib/rk for root, ~/.rk otherwise]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Port of the node agent's HTTPS endpoint; 0 picks a free one
    #[arg(long, default_value_t = rk::node::DEFAULT_ENDPOINT_PORT, value_name = "PORT")]
    kubelet_port: u16,

    /// The cluster's range of pod IPs (its server's --cluster-cidr)
    #[arg(long, default_value = "10.42.0.0/16", value_name = "CIDR")]
    cluster_cidr: ipnet::Ipv4Net,

    /// The cluster's range of Service cluster IPs (its server's --service-cidr)
    #[arg(long, default_value = "10.43.0.0/16", value_name = "CIDR")]
    service_cidr: ipnet::Ipv4Net,

    /// Put pods on Docker's bridge network instead of rk's pod network (no pod traffic between nodes)
    #[arg(long)]
    disable_pod_network: bool,

    /// Do not program Services into this host's nf_tables
    #[arg(long)]
    disable_proxy: bool,
}

#[derive(clap::Args)]
struct TokenArgs {
    /// The server's data directory [default: /var/lib/rk for root, ~/.rk otherwise]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
}

#[derive(clap::Args)]
struct BenchArgs {
    #[command(subcommand)]
    what: Option<BenchWhat>,
    /// Seconds each create phase runs
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Concurrent watchers for the watch-delivery measurement
    #[arg(long, default_value_t = 100)]
    watchers: usize,
    /// Writes whose delivery to every watcher is timed
    #[arg(long, default_value_t = 200)]
    watched_writes: usize,
}

#[derive(Subcommand)]
enum BenchWhat {
    /// Time to program one new Service into nf_tables on top of N existing ones (root; private network namespace)
    Proxy {
        /// Existing Services to measure on top of (comma-separated)
        #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
        services: Vec<u32>,
        /// New Services timed at each size
        #[arg(long, default_value_t = 50)]
        samples: u32,
    },
    /// HTTP requests/s and latency through a ClusterIP and a NodePort next to a pod IP, with wrk (root, Docker, tools/test-images.sh, `apt-get install wrk`)
    Service {
        /// Seconds wrk runs against each target
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Connections wrk keeps open
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// wrk's threads
        #[arg(long, default_value_t = 2)]
        threads: usize,
        /// Times each target is measured (in turns); medians are reported
        #[arg(long, default_value_t = 3)]
        rounds: usize,
    },
    /// Pod start latency (create -> Running) on the embedded node agent, next to `docker run -d` (needs Docker and tools/test-images.sh)
    Pods {
        /// Pods to start
        #[arg(long, default_value_t = 50)]
        pods: usize,
        /// Image the pods run (present locally; never pulled)
        #[arg(long, default_value = "rk-test/busybox:1")]
        image: String,
    },
    /// Scheduling throughput: a server with fake nodes, many concurrent pod creators, bindings timed by a watch
    Scheduler {
        /// Fake nodes to start the server with
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Pods to create and schedule
        #[arg(long, default_value_t = 10_000)]
        pods: usize,
        /// Clients creating pods at once
        #[arg(long, default_value_t = 64)]
        creators: usize,
    },
    /// A Deployment on fake nodes: create -> all replicas Running, then a rolling update of its image, and the server's memory
    Deployment {
        /// Fake nodes to start the server with
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Replicas of the Deployment
        #[arg(long, default_value_t = 1000)]
        replicas: i32,
    },
    /// Cluster DNS query latency (p50/p99) and queries/s over UDP
    Dns {
        /// Queries timed per kind of name
        #[arg(long, default_value_t = 2000)]
        queries: usize,
        /// Concurrent clients for the queries/s figure
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
    },
}

#[derive(clap::Args)]
struct ServerArgs {
    /// Where the store, certificates and tokens live [default: /var/lib/rk for root, ~/.rk otherwise]
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,

    /// Address the API server listens on
    #[arg(long, default_value = "0.0.0.0", value_name = "IP")]
    bind_address: IpAddr,

    /// HTTPS port of the API server
    #[arg(long, default_value_t = 6443, value_name = "PORT")]
    https_listen_port: u16,

    /// Where to write the admin kubeconfig (mode 0600) [default: /etc/rk/rk.yaml for root, ~/.rk/rk.yaml otherwise]
    #[arg(long, value_name = "PATH")]
    write_kubeconfig: Option<PathBuf>,

    /// Extra host names or IPs for the serving certificate (repeatable)
    #[arg(long = "tls-san", value_name = "NAME")]
    tls_san: Vec<String>,

    /// Keep watch history for at least this many seconds
    #[arg(long, default_value_t = 300, value_name = "SECONDS")]
    watch_history_seconds: u64,

    /// Register this many simulated nodes that run pods without containers (kwok-style)
    #[arg(long, default_value_t = 0, value_name = "N")]
    fake_nodes: usize,

    /// Range of Service cluster IPs
    #[arg(long, default_value = "10.43.0.0/16", value_name = "CIDR")]
    service_cidr: ipnet::Ipv4Net,

    /// Range of pod IPs; each node gets a /24 of it
    #[arg(long, default_value = "10.42.0.0/16", value_name = "CIDR")]
    cluster_cidr: ipnet::Ipv4Net,

    /// Range of NodePorts
    #[arg(long, default_value = "30000-32767", value_name = "LOW-HIGH", value_parser = parse_port_range)]
    service_node_port_range: (u16, u16),

    /// Seconds a node may go without renewing its Lease before it is marked NotReady (Unknown)
    #[arg(long, default_value_t = 40, value_name = "SECONDS")]
    node_monitor_grace_period: u64,

    /// How often each HorizontalPodAutoscaler is evaluated (a Go duration: 15s, 500ms, 1m)
    #[arg(long, default_value = "15s", value_name = "DURATION", value_parser = parse_sync_period)]
    horizontal_pod_autoscaler_sync_period: Duration,

    /// Name of this machine's node [default: the host name]
    #[arg(long, value_name = "NAME")]
    node_name: Option<String>,

    /// Run no node agent on this machine (a control-plane-only server)
    #[arg(long)]
    disable_agent: bool,

    /// Keep at least this many of the newest watch events
    #[arg(long, default_value_t = 10_000, value_name = "EVENTS")]
    watch_history_events: u64,

    /// Do not program Services into this host's nf_tables (no service proxy, no ServiceLB)
    #[arg(long)]
    disable_proxy: bool,

    /// Do not run the cluster DNS
    #[arg(long)]
    disable_dns: bool,

    /// Where the cluster DNS listens (UDP and TCP); pods reach it through the kube-dns Service. An unspecified address means the node's address (the one of the default route)
    #[arg(long, default_value = "0.0.0.0:53", value_name = "IP:PORT")]
    dns_listen: SocketAddr,

    /// The cluster DNS zone
    #[arg(long, default_value = "cluster.local", value_name = "DOMAIN")]
    cluster_domain: String,

    /// The nameserver pods are given [default: the tenth address of --service-cidr, the kube-dns Service]
    #[arg(long, value_name = "IP")]
    cluster_dns: Option<IpAddr>,

    /// Where names outside the cluster are forwarded (repeatable) [default: the host's resolvers]
    #[arg(long = "dns-upstream", value_name = "IP[:PORT]", value_parser = parse_dns_server)]
    dns_upstream: Vec<SocketAddr>,

    /// Do not run the ingress proxy
    #[arg(long)]
    disable_ingress: bool,

    /// Where the ingress proxy serves HTTP
    #[arg(long, default_value = "0.0.0.0:80", value_name = "IP:PORT")]
    ingress_http: SocketAddr,

    /// Where the ingress proxy serves HTTPS
    #[arg(long, default_value = "0.0.0.0:443", value_name = "IP:PORT")]
    ingress_https: SocketAddr,

    /// Put this machine's pods on Docker's bridge network instead of rk's pod network (no pod traffic between nodes)
    #[arg(long)]
    disable_pod_network: bool,

    /// Port of the node agent's HTTPS endpoint (logs, exec, attach, port-forward, metrics); 0 picks a free one
    #[arg(long, default_value_t = rk::node::DEFAULT_ENDPOINT_PORT, value_name = "PORT")]
    kubelet_port: u16,
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Server(args) => server::run(server_config(*args)).await,
            Command::Agent(args) => run_agent(args).await,
            Command::Token(args) => print_token(args),
            Command::Bench(BenchArgs { what: Some(BenchWhat::Pods { pods, image }), .. }) => {
                rk::bench::pods::run(rk::bench::pods::PodBenchOptions { pods, image }).await
            }
            Command::Bench(BenchArgs { what: Some(BenchWhat::Proxy { services, samples }), .. }) => rk::net::bench::run(&services, samples),
            Command::Bench(BenchArgs { what: Some(BenchWhat::Service { seconds, connections, threads, rounds }), .. }) => {
                rk::bench::service::run(rk::bench::service::ServiceBenchOptions { seconds, connections, threads, rounds })
            }
            Command::Bench(BenchArgs { what: Some(BenchWhat::Scheduler { nodes, pods, creators }), .. }) => {
                rk::bench::scheduler::run(rk::bench::scheduler::SchedulerBenchOptions { nodes, pods, creators }).await
            }
            Command::Bench(BenchArgs { what: Some(BenchWhat::Deployment { nodes, replicas }), .. }) => {
                rk::bench::deployment::run(rk::bench::deployment::DeploymentBenchOptions { nodes, replicas }).await
            }
            Command::Bench(BenchArgs { what: Some(BenchWhat::Dns { queries, concurrency }), .. }) => {
                rk::bench::dns::run(rk::bench::dns::DnsBenchOptions { queries, concurrency }).await
            }
            Command::Bench(args) => {
                rk::bench::run(rk::bench::BenchOptions { seconds: args.seconds, watchers: args.watchers, watched_writes: args.watched_writes }).await
            }
        }
    });
    if let Err(e) = result {
        eprintln!("rk: {e}");
        std::process::exit(1);
    }
}

async fn run_agent(args: AgentArgs) -> Result<(), server::Error> {
    let credentials = match (args.server, args.token, args.kubeconfig) {
        (Some(server), Some(token), _) => rk::agent::Credentials::Token { server, token },
        (_, _, Some(kubeconfig)) => rk::agent::Credentials::Kubeconfig(kubeconfig),
        _ => return Err("rk agent needs --server and --token, or --kubeconfig".into()),
    };
    let node_name = args.node_name.unwrap_or_else(rk::node::host::hostname);
    let data_dir = args.data_dir.unwrap_or_else(server::default_data_dir);
    let options = rk::agent::AgentOptions {
        credentials,
        agent: agent_config(&node_name, data_dir, args.cluster_cidr, args.service_cidr, args.disable_pod_network),
        endpoint_port: args.kubelet_port,
        proxy: (!args.disable_proxy).then(|| rk::net::ProxyOptions { cluster_cidr: args.cluster_cidr, node_name: node_name.clone() }),
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        stop.cancel();
    });
    rk::agent::run(options, shutdown).await
}

fn print_token(args: TokenArgs) -> Result<(), server::Error> {
    let path = args.data_dir.unwrap_or_else(server::default_data_dir).join(rk::join::TOKEN_FILE);
    let token = std::fs::read_to_string(&path).map_err(|e| format!("reading {} (has `rk server` started with this data directory?): {e}", path.display()))?;
    println!("{}", token.trim());
    Ok(())
}

fn server_config(args: ServerArgs) -> ServerConfig {
    let data_dir = args.data_dir.unwrap_or_else(server::default_data_dir);
    let node_name = args.node_name.unwrap_or_else(rk::node::host::hostname);
    let ranges = rk::api::allocator::Ranges { service_cidr: args.service_cidr, node_ports: args.service_node_port_range };
    let dns = rk::net::dns::DnsOptions {
        enabled: !args.disable_dns,
        listen: args.dns_listen,
        cluster_domain: args.cluster_domain,
        cluster_dns: args.cluster_dns.unwrap_or_else(|| IpAddr::V4(ranges.dns_service_ip())),
        upstreams: args.dns_upstream,
    };
    ServerConfig {
        data_dir: data_dir.clone(),
        bind_address: args.bind_address,
        https_port: args.https_listen_port,
        kubeconfig: args.write_kubeconfig.unwrap_or_else(server::default_kubeconfig),
        tls_sans: args.tls_san,
        store: StoreOptions {
            retain_for: Duration::from_secs(args.watch_history_seconds),
            retain_events: args.watch_history_events,
            ..StoreOptions::default()
        },
        controllers: rk::controllers::ControllerOptions {
            node_monitor_grace_period: Duration::from_secs(args.node_monitor_grace_period.max(1)),
            cluster_cidr: args.cluster_cidr,
            hpa_sync_period: args.horizontal_pod_autoscaler_sync_period,
            ..Default::default()
        },
        fake_nodes: args.fake_nodes,
        service_ranges: ranges.clone(),
        agent: (!args.disable_agent).then(|| {
            let mut agent = agent_config(&node_name, data_dir.clone(), args.cluster_cidr, args.service_cidr, args.disable_pod_network);
            agent.dns = dns.pod_dns();
            agent
        }),
        proxy: (!args.disable_proxy).then(|| rk::net::ProxyOptions { cluster_cidr: args.cluster_cidr, node_name: node_name.clone() }),
        dns,
        ingress: rk::net::ingress::IngressOptions { enabled: !args.disable_ingress, http: args.ingress_http, https: args.ingress_https },
        kubelet_port: args.kubelet_port,
    }
}

/// A DNS server address; port 53 unless given.
fn parse_dns_server(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>().or_else(|_| s.parse::<IpAddr>().map(|ip| SocketAddr::new(ip, 53))).map_err(|_| format!("{s} is not an IP or IP:PORT"))
}

fn agent_config(node: &str, data_dir: PathBuf, cluster_cidr: ipnet::Ipv4Net, service_cidr: ipnet::Ipv4Net, disable_pod_network: bool) -> rk::node::AgentConfig {
    let mut config = rk::node::AgentConfig::new(node, data_dir, cluster_cidr, service_cidr);
    if disable_pod_network {
        config.pod_network = None;
    }
    config
}

/// A positive Go duration, as upstream's controller-manager flags take them.
fn parse_sync_period(s: &str) -> Result<Duration, String> {
    rk::api::object::parse_go_duration(s).filter(|d| !d.is_zero()).ok_or_else(|| format!("{s} is not a positive duration such as 15s or 500ms"))
}

fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let (low, high) = s.split_once('-').ok_or("expected LOW-HIGH, e.g. 30000-32767")?;
    let (low, high): (u16, u16) = (low.trim().parse().map_err(|e| format!("{e}"))?, high.trim().parse().map_err(|e| format!("{e}"))?);
    if low == 0 || low > high {
        return Err(format!("{low}-{high} is not a range of ports"));
    }
    Ok((low, high))
}
