//! `rk bench dns`: query latency of the cluster DNS of a real `rk server`
//! process, over UDP on loopback, as a pod's resolver sees it: a Service name
//! (answered from the informer cache), a search-path miss (NXDOMAIN, the most
//! common query from pods with `ndots:5`), and queries per second from
//! concurrent clients.

use super::{Error, client, ms, percentile, start_server};
use hickory_server::net::client::{Client, ClientHandle};
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::net::udp::UdpClientStream;
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::{DNSClass, Name, RecordType};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use kube::api::{Api, PostParams};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// What to measure.
#[derive(Clone, Debug)]
pub struct DnsBenchOptions {
    /// Queries timed one after another, per kind of name.
    pub queries: usize,
    /// Clients querying at once for the throughput figure.
    pub concurrency: usize,
}

const SERVICE_NAME: &str = "bench.default.svc.cluster.local.";
const SEARCH_MISS: &str = "example.com.default.svc.cluster.local.";

pub async fn run(options: DnsBenchOptions) -> Result<(), Error> {
    let dns = free_loopback_port()?;
    let (server, _) = start_server(&["--dns-listen", &dns.to_string(), "--disable-ingress"])?;
    let client = client(&server.kubeconfig).await?;
    let service = Service {
        metadata: kube::api::ObjectMeta { name: Some("bench".into()), ..Default::default() },
        spec: Some(ServiceSpec { ports: Some(vec![ServicePort { name: Some("http".into()), port: 80, ..Default::default() }]), ..Default::default() }),
        status: None,
    };
    Api::<Service>::namespaced(client, "default").create(&PostParams::default(), &service).await?;
    let mut resolver = connect(dns);
    let started = Instant::now();
    while query(&mut resolver, SERVICE_NAME).await? != ResponseCode::NoError {
        if started.elapsed() > Duration::from_secs(30) {
            return Err("the DNS did not answer for the Service within 30s".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("rk bench dns: one rk server process, UDP queries on loopback with hickory's client");
    for (what, name) in [("Service A record", SERVICE_NAME), ("search-path miss (NXDOMAIN)", SEARCH_MISS)] {
        let mut times = Vec::with_capacity(options.queries);
        for _ in 0..options.queries {
            let t = Instant::now();
            query(&mut resolver, name).await?;
            times.push(t.elapsed());
        }
        times.sort();
        println!("{what:<28} p50 / p99: {} / {}   ({} queries, one at a time)", ms(percentile(&times, 0.5)), ms(percentile(&times, 0.99)), times.len());
    }
    let per_client = options.queries.div_ceil(options.concurrency.max(1));
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..options.concurrency.max(1) {
        tasks.spawn(async move {
            let mut resolver = connect(dns);
            for _ in 0..per_client {
                query(&mut resolver, SERVICE_NAME).await?;
            }
            Ok::<usize, Error>(per_client)
        });
    }
    let mut answered = 0;
    while let Some(done) = tasks.join_next().await {
        answered += done??;
    }
    println!("Service A queries/s, {} clients:  {:.0}", options.concurrency.max(1), answered as f64 / started.elapsed().as_secs_f64());
    Ok(())
}

fn connect(server: SocketAddr) -> Client<TokioRuntimeProvider> {
    let stream = UdpClientStream::builder(server, TokioRuntimeProvider::default()).build();
    let (client, background) = Client::<TokioRuntimeProvider>::from_sender(stream);
    tokio::spawn(background);
    client
}

async fn query(client: &mut Client<TokioRuntimeProvider>, name: &str) -> Result<ResponseCode, Error> {
    let response = client.query(Name::from_ascii(name)?, DNSClass::IN, RecordType::A).await?;
    Ok(response.metadata.response_code)
}

/// A loopback port free for UDP and TCP.
fn free_loopback_port() -> Result<SocketAddr, Error> {
    for _ in 0..100 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let address = udp.local_addr()?;
        if std::net::TcpListener::bind(address).is_ok() {
            return Ok(address);
        }
    }
    Err("no free loopback port".into())
}
