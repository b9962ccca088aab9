//! The cluster zone (`cluster.local`), answered from the informer caches as
//! the Kubernetes DNS specification and CoreDNS's kubernetes plugin do:
//! Services (cluster IPs, headless endpoints, ExternalName CNAMEs), SRV for
//! their ports, `<a-b-c-d>.<ns>.pod` addresses, the zone's SOA and NS, and
//! NXDOMAIN (with the SOA) for everything else under the zone.

use super::cluster::{Cluster, Endpoint, Shape, undashed};
use super::authority::{Answers, found, refused};
use hickory_server::proto::op::ResponseCode;
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, NS, SOA, SRV, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::zone_handler::{AuthLookup, LookupControlFlow, LookupError, LookupOptions, ZoneHandler};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;

/// Seconds clients may cache answers (CoreDNS's default for the kubernetes plugin).
pub const TTL: u32 = 5;
/// The schema version `dns-version.<zone>` announces, per the DNS specification.
const SCHEMA_VERSION: &str = "1.1.0";
/// How many CNAMEs inside the zone are followed before giving up.
const MAX_CHASE: usize = 8;

/// What a name under the zone asks for (labels leftmost first, zone removed).
#[derive(Debug, PartialEq)]
enum Query<'a> {
    Apex,
    NameServer,
    SchemaVersion,
    /// `svc.<zone>` or `pod.<zone>`: exists, holds no records.
    Branch,
    /// `<ns>.svc.<zone>` or `<ns>.pod.<zone>`: exists when the namespace does.
    Namespace(&'a str),
    Service { namespace: &'a str, service: &'a str, endpoint: Option<&'a str>, port: Option<(&'a str, &'a str)> },
    Pod { namespace: &'a str, ip: IpAddr },
    Unknown,
}

fn parse<'a>(labels: &[&'a str]) -> Query<'a> {
    match labels {
        [] => Query::Apex,
        ["ns", "dns"] => Query::NameServer,
        ["dns-version"] => Query::SchemaVersion,
        ["svc" | "pod"] => Query::Branch,
        [namespace, "svc" | "pod"] => Query::Namespace(namespace),
        [service, namespace, "svc"] => Query::Service { namespace, service, endpoint: None, port: None },
        [endpoint, service, namespace, "svc"] => Query::Service { namespace, service, endpoint: Some(endpoint), port: None },
        [port, protocol, service, namespace, "svc"] => match (port.strip_prefix('_'), protocol.strip_prefix('_')) {
            (Some(port), Some(protocol)) => Query::Service { namespace, service, endpoint: None, port: Some((port, protocol)) },
            _ => Query::Unknown,
        },
        [pod, namespace, "pod"] => undashed(pod).map_or(Query::Unknown, |ip| Query::Pod { namespace, ip }),
        _ => Query::Unknown,
    }
}

/// The outcome of a lookup in the zone.
enum Answer {
    Records { answers: Vec<Record>, additionals: Vec<Record> },
    /// The name exists without records of the asked type.
    NoData,
    NxDomain,
}

impl Answer {
    fn of(answers: Vec<Record>) -> Self {
        if answers.is_empty() { Answer::NoData } else { Answer::Records { answers, additionals: Vec::new() } }
    }
}

/// One thing a Service name resolves to: an address, with a port for SRV and
/// the name SRV records point at.
struct Target {
    ip: IpAddr,
    port: Option<u16>,
    name: Name,
}

/// Looks up names outside the zone that ExternalName Services point at.
pub type Upstream = Arc<dyn ZoneHandler>;

pub struct ClusterZone {
    cluster: Arc<Cluster>,
    /// The cluster DNS Service address, which `ns.dns.<zone>` names.
    dns_ip: Ipv4Addr,
    upstream: Option<Upstream>,
}

impl ClusterZone {
    pub fn new(cluster: Arc<Cluster>, dns_ip: Ipv4Addr, upstream: Option<Upstream>) -> Self {
        Self { cluster, dns_ip, upstream }
    }

    fn soa(&self) -> Record {
        let domain = &self.cluster.domain;
        let name_server = self.cluster.name_under(&["ns", "dns"]).unwrap_or_else(|| domain.clone());
        let mailbox = self.cluster.name_under(&["hostmaster"]).unwrap_or_else(|| domain.clone());
        let serial = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as u32);
        Record::from_rdata(domain.clone(), TTL, RData::SOA(SOA::new(name_server, mailbox, serial, 7200, 1800, 86400, TTL)))
    }

    async fn answer_name(&self, name: &Name, rtype: RecordType, depth: usize) -> Answer {
        let labels = relative_labels(name, &self.cluster.domain);
        let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
        let record = |data: RData| Record::from_rdata(name.clone(), TTL, data);
        match parse(&labels) {
            Query::Apex => Answer::of(match rtype {
                RecordType::SOA => vec![self.soa()],
                RecordType::NS => self.cluster.name_under(&["ns", "dns"]).map(|ns| record(RData::NS(NS(ns)))).into_iter().collect(),
                _ => vec![],
            }),
            Query::NameServer => Answer::of(address_records(name, rtype, &[IpAddr::V4(self.dns_ip)])),
            Query::SchemaVersion if rtype == RecordType::TXT => Answer::of(vec![record(RData::TXT(TXT::new(vec![SCHEMA_VERSION.to_owned()])))]),
            Query::SchemaVersion | Query::Branch => Answer::NoData,
            Query::Namespace(namespace) if self.cluster.namespace_exists(namespace) => Answer::NoData,
            Query::Pod { namespace, ip } if self.cluster.namespace_exists(namespace) => Answer::of(address_records(name, rtype, &[ip])),
            Query::Service { namespace, service, endpoint, port } => {
                let Some(svc) = self.cluster.service(namespace, service) else { return Answer::NxDomain };
                match Cluster::shape(&svc) {
                    Shape::ExternalName(target) if endpoint.is_none() => Box::pin(self.external_name(name, &target, rtype, depth)).await,
                    Shape::ExternalName(_) => Answer::NxDomain,
                    shape => self.service_answer(name, rtype, self.targets(&svc, shape, namespace, service, endpoint, port)),
                }
            }
            _ => Answer::NxDomain,
        }
    }

    /// What a Service name stands for: its cluster IPs for each matching port,
    /// or (headless, or an endpoint asked by name) its matching ready endpoints.
    fn targets(
        &self,
        svc: &k8s_openapi::api::core::v1::Service,
        shape: Shape,
        namespace: &str,
        service: &str,
        endpoint: Option<&str>,
        port: Option<(&str, &str)>,
    ) -> Vec<Target> {
        let port_matches = |name: &str, protocol: &str| port.is_none_or(|(n, p)| n.eq_ignore_ascii_case(name) && p.eq_ignore_ascii_case(protocol));
        match shape {
            Shape::ClusterIp(ips) if endpoint.is_none() => {
                let Some(service_name) = self.cluster.service_name(namespace, service) else { return Vec::new() };
                let ports = svc.spec.as_ref().and_then(|s| s.ports.clone()).unwrap_or_default();
                ports
                    .iter()
                    .filter(|p| port_matches(p.name.as_deref().unwrap_or(""), p.protocol.as_deref().unwrap_or("TCP")))
                    .flat_map(|p| ips.iter().map(|ip| Target { ip: *ip, port: u16::try_from(p.port).ok(), name: service_name.clone() }))
                    .collect()
            }
            _ => {
                let endpoints = self.cluster.endpoints(namespace, service);
                endpoints
                    .iter()
                    .filter(|e| endpoint.is_none_or(|wanted| wanted.eq_ignore_ascii_case(&e.label)))
                    .flat_map(|e| self.endpoint_targets(e, namespace, service, &port_matches))
                    .collect()
            }
        }
    }

    fn endpoint_targets(&self, e: &Endpoint, namespace: &str, service: &str, port_matches: &dyn Fn(&str, &str) -> bool) -> Vec<Target> {
        let Some(name) = self.cluster.name_under(&[&e.label, service, namespace, "svc"]) else { return Vec::new() };
        if e.ports.is_empty() && port_matches("", "") {
            // A headless Service may have no ports: its addresses still resolve.
            return vec![Target { ip: e.ip, port: None, name }];
        }
        e.ports.iter().filter(|(n, _, p)| port_matches(n, p)).map(|(_, port, _)| Target { ip: e.ip, port: Some(*port), name: name.clone() }).collect()
    }

    fn service_answer(&self, name: &Name, rtype: RecordType, targets: Vec<Target>) -> Answer {
        if targets.is_empty() {
            return Answer::NxDomain;
        }
        match rtype {
            RecordType::SRV => {
                let with_ports: Vec<&Target> = targets.iter().filter(|t| t.port.is_some()).collect();
                let weight = (100 / with_ports.len().max(1)).max(1) as u16;
                let answers: Vec<Record> = with_ports
                    .iter()
                    .filter_map(|t| Some(Record::from_rdata(name.clone(), TTL, RData::SRV(SRV::new(0, weight, t.port?, t.name.clone())))))
                    .collect();
                if answers.is_empty() {
                    return Answer::NoData;
                }
                let mut additionals: Vec<Record> = with_ports.iter().flat_map(|t| address_records(&t.name, address_type(t.ip), &[t.ip])).collect();
                additionals.dedup();
                Answer::Records { answers, additionals }
            }
            _ => {
                let mut ips: Vec<IpAddr> = targets.iter().map(|t| t.ip).collect();
                ips.sort();
                ips.dedup();
                Answer::of(address_records(name, rtype, &ips))
            }
        }
    }

    /// A CNAME to the Service's external name, followed by the target's records
    /// (looked up in the zone or upstream), as CoreDNS answers.
    async fn external_name(&self, name: &Name, target: &str, rtype: RecordType, depth: usize) -> Answer {
        let Ok(mut target) = Name::from_ascii(target) else { return Answer::NxDomain };
        target.set_fqdn(true);
        let mut answers = vec![Record::from_rdata(name.clone(), TTL, RData::CNAME(CNAME(target.clone())))];
        if rtype == RecordType::CNAME {
            return Answer::of(answers);
        }
        if self.cluster.domain.zone_of(&target) {
            if depth < MAX_CHASE
                && let Answer::Records { answers: more, .. } = Box::pin(self.answer_name(&target, rtype, depth + 1)).await
            {
                answers.extend(more);
            }
        } else if let Some(upstream) = &self.upstream
            && let Some(Ok(found)) = upstream.lookup(&LowerName::new(&target), rtype, None, LookupOptions::default()).await.map_result()
        {
            answers.extend(found.iter().cloned());
        }
        Answer::of(answers)
    }
}

fn address_type(ip: IpAddr) -> RecordType {
    if ip.is_ipv4() { RecordType::A } else { RecordType::AAAA }
}

/// A or AAAA records of the addresses of the asked family.
fn address_records(name: &Name, rtype: RecordType, ips: &[IpAddr]) -> Vec<Record> {
    ips.iter()
        .filter_map(|ip| match (rtype, ip) {
            (RecordType::A, IpAddr::V4(v4)) => Some(RData::A(A(*v4))),
            (RecordType::AAAA, IpAddr::V6(v6)) => Some(RData::AAAA(AAAA(*v6))),
            _ => None,
        })
        .map(|data| Record::from_rdata(name.clone(), TTL, data))
        .collect()
}

/// The labels of `name` left of `zone`, lowercased.
fn relative_labels(name: &Name, zone: &Name) -> Vec<String> {
    let keep = usize::from(name.num_labels().saturating_sub(zone.num_labels()));
    name.iter().take(keep).map(|l| String::from_utf8_lossy(l).to_ascii_lowercase()).collect()
}

#[async_trait::async_trait]
impl Answers for ClusterZone {
    async fn answer(&self, name: &LowerName, rtype: RecordType) -> LookupControlFlow<AuthLookup> {
        match self.answer_name(&Name::from(name.clone()), rtype, 0).await {
            Answer::Records { answers, additionals } => found(answers, additionals),
            Answer::NoData => refused(LookupError::NameExists),
            Answer::NxDomain => refused(LookupError::ResponseCode(ResponseCode::NXDomain)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_under_the_zone_parse_as_the_dns_specification_lays_them_out() {
        assert_eq!(parse(&[]), Query::Apex);
        assert_eq!(parse(&["svc"]), Query::Branch);
        assert_eq!(parse(&["default", "svc"]), Query::Namespace("default"));
        assert_eq!(parse(&["web", "shop", "svc"]), Query::Service { namespace: "shop", service: "web", endpoint: None, port: None });
        assert_eq!(parse(&["db-0", "db", "shop", "svc"]), Query::Service { namespace: "shop", service: "db", endpoint: Some("db-0"), port: None });
        assert_eq!(
            parse(&["_http", "_tcp", "web", "shop", "svc"]),
            Query::Service { namespace: "shop", service: "web", endpoint: None, port: Some(("http", "tcp")) }
        );
        assert_eq!(parse(&["10-42-0-7", "shop", "pod"]), Query::Pod { namespace: "shop", ip: "10.42.0.7".parse().unwrap() });
        assert_eq!(parse(&["fd00--7", "shop", "pod"]), Query::Pod { namespace: "shop", ip: "fd00::7".parse().unwrap() });
    }

    #[test]
    fn names_that_fit_no_layout_are_unknown() {
        assert_eq!(parse(&["http", "tcp", "web", "shop", "svc"]), Query::Unknown);
        assert_eq!(parse(&["a", "b", "c", "d", "e", "svc"]), Query::Unknown);
        assert_eq!(parse(&["web", "shop", "other"]), Query::Unknown);
        assert_eq!(parse(&["not-an-ip", "shop", "pod"]), Query::Unknown);
    }

    #[test]
    fn relative_labels_drop_the_zone_and_lowercase() {
        let zone = Name::from_ascii("cluster.local.").unwrap();
        let name = Name::from_ascii("Web.Shop.svc.cluster.local.").unwrap();
        assert_eq!(relative_labels(&name, &zone), ["web", "shop", "svc"]);
    }
}
