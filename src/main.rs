//! The `rk` command line: a thin layer over the library's `server` (and, as they
//! land, `agent` and `bench`) entry points.

use clap::{Parser, Subcommand};
use rk::server::{self, ServerConfig};
use rk::store::StoreOptions;
use std::net::IpAddr;
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
    Server(ServerArgs),
    /// Measure a fresh server through its API: start-up, creates/s, latencies, watch delivery, memory (`rk bench scheduler`: scheduling throughput)
    Bench(BenchArgs),
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchArgs {
    #[command(subcommand)]
    which: Option<BenchCommand>,
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
enum BenchCommand {
    /// Scheduling throughput: a server with fake nodes, many concurrent pod creators, bindings timed by a watch
    Scheduler(SchedulerBenchArgs),
}

#[derive(clap::Args)]
struct SchedulerBenchArgs {
    /// Fake nodes to start the server with
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Pods to create and schedule
    #[arg(long, default_value_t = 10_000)]
    pods: usize,
    /// Clients creating pods at once
    #[arg(long, default_value_t = 64)]
    creators: usize,
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

    /// Keep at least this many of the newest watch events
    #[arg(long, default_value_t = 10_000, value_name = "EVENTS")]
    watch_history_events: u64,
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
            Command::Server(args) => server::run(server_config(args)).await,
            Command::Bench(BenchArgs { which: Some(BenchCommand::Scheduler(args)), .. }) => {
                rk::bench::scheduler::run(rk::bench::scheduler::SchedulerBenchOptions { nodes: args.nodes, pods: args.pods, creators: args.creators }).await
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

fn server_config(args: ServerArgs) -> ServerConfig {
    ServerConfig {
        data_dir: args.data_dir.unwrap_or_else(server::default_data_dir),
        bind_address: args.bind_address,
        https_port: args.https_listen_port,
        kubeconfig: args.write_kubeconfig.unwrap_or_else(server::default_kubeconfig),
        tls_sans: args.tls_san,
        store: StoreOptions {
            retain_for: Duration::from_secs(args.watch_history_seconds),
            retain_events: args.watch_history_events,
            ..StoreOptions::default()
        },
        controllers: Default::default(),
        fake_nodes: args.fake_nodes,
    }
}
