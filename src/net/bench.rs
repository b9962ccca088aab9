//! `rk bench proxy`: what programming one Service costs when the table already
//! holds many (kube-proxy's nftables mode takes ~141 ms for a partial sync at
//! 10,000 Services). It runs in a network namespace of its own, so the host's
//! ruleset is never touched: N Services with 3 endpoints each are programmed in
//! one resync, then new Services one transaction each, from the Service and its
//! EndpointSlice to the kernel's answer.

use super::model::{Ruleset, Tables};
use super::netlink::Nfnetlink;
use super::nft::Batch;
use super::services::{self, Context};
use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

pub type Error = Box<dyn std::error::Error + Send + Sync>;

const TABLE: &str = "rk-bench";

/// Service `i`: a cluster IP in 10.43.0.0/16 (10.96.0.0/12 past 65k), two
/// ports, three endpoints in 10.42.0.0/16.
fn service(i: u32) -> (Service, EndpointSlice) {
    let ip = std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 96, 0, 0)) + i);
    let port = |name: &str, port: i32| ServicePort { name: Some(name.into()), port, protocol: Some("TCP".into()), ..Default::default() };
    let service = Service {
        metadata: kube::api::ObjectMeta { name: Some(format!("svc-{i}")), namespace: Some("bench".into()), ..Default::default() },
        spec: Some(ServiceSpec { cluster_ip: Some(ip.to_string()), ports: Some(vec![port("http", 80), port("metrics", 9090)]), ..Default::default() }),
        status: None,
    };
    let endpoint = |n: u32| Endpoint {
        addresses: vec![std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 42, 0, 0)) + (i * 3 + n) % 65_000 + 2).to_string()],
        conditions: Some(EndpointConditions { ready: Some(true), ..Default::default() }),
        ..Default::default()
    };
    let slice_port = |name: &str, port: i32| EndpointPort { name: Some(name.into()), port: Some(port), protocol: Some("TCP".into()), app_protocol: None };
    let slice = EndpointSlice {
        metadata: Default::default(),
        address_type: "IPv4".into(),
        endpoints: (0..3).map(endpoint).collect(),
        ports: Some(vec![slice_port("http", 8080), slice_port("metrics", 9090)]),
    };
    (service, slice)
}

fn rules(i: u32, ctx: &Context) -> Ruleset {
    let (service, slice) = service(i);
    services::service_rules(&service, &[slice], ctx)
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted.get(((sorted.len().max(1) - 1) as f64 * p).round() as usize).copied().unwrap_or_default()
}

/// Programs `existing` Services, then times `samples` more one by one.
fn measure(netlink: &mut Nfnetlink, existing: u32, samples: u32, ctx: &Context) -> Result<(), Error> {
    let tables = Tables::new(TABLE);
    let started = Instant::now();
    let services: Vec<(String, Ruleset)> = (0..existing).map(|i| (format!("bench/svc-{i}"), rules(i, ctx))).collect();
    let mut batch = Batch::new(TABLE);
    tables.resync(&mut batch, &BTreeMap::new(), services.iter().map(|(k, r)| (k.as_str(), r)));
    let built = started.elapsed();
    netlink.apply(batch.ops())?;
    let chains: usize = services.iter().map(|(_, r)| r.chains.len()).sum();
    println!(
        "{existing} Services ({chains} chains in {} tables): full resync {} ({} messages, built in {})",
        tables.shards.len() + 1,
        ms(started.elapsed()),
        batch.ops().len(),
        ms(built)
    );
    let mut added = Vec::new();
    let mut changed = Vec::new();
    for i in existing..existing + samples {
        let t = Instant::now();
        let new = rules(i, ctx);
        let key = format!("bench/svc-{i}");
        let mut batch = Batch::new(TABLE);
        tables.update(&mut batch, &key, &Ruleset::default(), &new);
        netlink.apply(batch.ops())?;
        added.push(t.elapsed());
        // One endpoint of the new Service goes away.
        let t = Instant::now();
        let (service, mut slice) = service(i);
        slice.endpoints.pop();
        let fewer = services::service_rules(&service, &[slice], ctx);
        let mut batch = Batch::new(TABLE);
        tables.update(&mut batch, &key, &new, &fewer);
        netlink.apply(batch.ops())?;
        changed.push(t.elapsed());
    }
    added.sort();
    changed.sort();
    println!(
        "  one new Service (2 ports, 3 endpoints) on top: p50 {} / p99 {} / max {}",
        ms(percentile(&added, 0.5)),
        ms(percentile(&added, 0.99)),
        ms(*added.last().unwrap_or(&Duration::ZERO))
    );
    println!("  one endpoint removed from it:                 p50 {} / p99 {}", ms(percentile(&changed, 0.5)), ms(percentile(&changed, 0.99)));
    let mut batch = Batch::new(TABLE);
    for table in tables.all() {
        batch.use_table(table);
        batch.delete_table();
    }
    netlink.apply(batch.ops())?;
    Ok(())
}

/// Runs the benchmark for each size in `sizes` (root only: it needs a network namespace).
pub fn run(sizes: &[u32], samples: u32) -> Result<(), Error> {
    let sizes = sizes.to_vec();
    std::thread::spawn(move || -> Result<(), String> {
        // SAFETY: unshare only affects this thread, which owns nothing shared.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!("a private network namespace is needed (run as root): {}", std::io::Error::last_os_error()));
        }
        let mut netlink = Nfnetlink::open().map_err(|e| e.to_string())?;
        let ctx = Context { cluster_cidr: "10.42.0.0/16".parse().expect("valid CIDR"), node_name: None };
        println!("rk bench proxy: nf_tables transactions over netlink, in a private network namespace");
        for &n in &sizes {
            measure(&mut netlink, n, samples, &ctx).map_err(|e| e.to_string())?;
        }
        Ok(())
    })
    .join()
    .map_err(|_| "the benchmark thread panicked")??;
    Ok(())
}
