//! What one Service asks of the node: for each of its ports, the chains, map
//! elements and affinity sets that send its cluster IP, external and
//! load-balancer IPs and node port to its endpoints, or reject them when it has
//! none. Pure: from the Service and its EndpointSlices to a [`Ruleset`].

use super::model::{Chain, Key, MARK_FOR_MASQUERADE, Map, Protocol, REJECT_CHAIN, Rule, Ruleset};
use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Service, ServicePort};
use super::conntrack::UdpPort;
use super::health::HealthCheck;
use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointSlice};
use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// The label tying an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Upstream's default session-affinity timeout.
const DEFAULT_AFFINITY_SECONDS: u32 = 10_800;

/// Where a Service port's traffic may go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub address: Ipv4Addr,
    pub port: u16,
}

/// Each endpoint of one Service port, with its conditions and node.
fn each_endpoint(slices: &[impl Borrow<EndpointSlice>], port: &ServicePort, protocol: &str, mut f: impl FnMut(Endpoint, &EndpointConditions, Option<&str>)) {
    let name = port.name.as_deref().unwrap_or("");
    for slice in slices.iter().map(Borrow::borrow).filter(|s| s.address_type == "IPv4") {
        let Some(target) = slice.ports.iter().flatten().find(|p| {
            p.name.as_deref().unwrap_or("") == name && p.protocol.as_deref().unwrap_or("TCP") == protocol
        }) else {
            continue;
        };
        let Some(target) = target.port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0) else { continue };
        for endpoint in &slice.endpoints {
            let conditions = endpoint.conditions.clone().unwrap_or_default();
            for address in endpoint.addresses.iter().filter_map(|a| a.parse::<Ipv4Addr>().ok()) {
                f(Endpoint { address, port: target }, &conditions, endpoint.node_name.as_deref());
            }
        }
    }
}

/// The endpoints of one Service port: ready ones; when none is ready, those
/// still serving while terminating (upstream's fallback).
pub fn endpoints(slices: &[impl Borrow<EndpointSlice>], port: &ServicePort, protocol: &str) -> Vec<Endpoint> {
    endpoints_on(slices, port, protocol, |_| true)
}

/// [`endpoints`] among those on the nodes `on` accepts (by `nodeName`).
fn endpoints_on(slices: &[impl Borrow<EndpointSlice>], port: &ServicePort, protocol: &str, on: impl Fn(Option<&str>) -> bool) -> Vec<Endpoint> {
    let mut ready = BTreeSet::new();
    let mut terminating = BTreeSet::new();
    each_endpoint(slices, port, protocol, |e, conditions, node| {
        if !on(node) {
            return;
        }
        if conditions.ready != Some(false) {
            ready.insert(e);
        } else if conditions.serving == Some(true) && conditions.terminating == Some(true) {
            terminating.insert(e);
        }
    });
    if ready.is_empty() { terminating.into_iter().collect() } else { ready.into_iter().collect() }
}

/// The endpoints of one Service port that still serve, ready or terminating
/// (`serving`, which defaults to `ready`): flows they answer stay untouched.
pub fn serving_endpoints(slices: &[impl Borrow<EndpointSlice>], port: &ServicePort, protocol: &str) -> BTreeSet<Endpoint> {
    let mut serving = BTreeSet::new();
    each_endpoint(slices, port, protocol, |e, conditions, _| {
        if conditions.serving.or(conditions.ready).unwrap_or(true) {
            serving.insert(e);
        }
    });
    serving
}

/// What the node needs to know besides the Service.
#[derive(Clone, Debug)]
pub struct Context {
    /// The pod network: ClusterIP traffic from outside it is masqueraded.
    pub cluster_cidr: Ipv4Net,
    /// This node's name: the endpoints on it serve `externalTrafficPolicy: Local`.
    pub node_name: Option<String>,
}

/// Where a Service is reached: its addresses and its ports.
struct Frontends<'a> {
    cluster_ip: Option<Ipv4Addr>,
    /// External and load-balancer IPs.
    external: Vec<Ipv4Addr>,
    ports: Vec<Frontend<'a>>,
}

/// One port of a Service, as clients reach it.
struct Frontend<'a> {
    spec: &'a ServicePort,
    protocol: Protocol,
    protocol_name: &'a str,
    port: u16,
    node_port: Option<u16>,
    /// `namespace/name/protocol/port name or number`: the base of its chains' names.
    id: String,
}

/// The addresses and ports of a Service (`None` for ExternalName ones).
fn frontends(service: &Service) -> Option<Frontends<'_>> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let cluster_ip = spec.cluster_ip.as_deref().and_then(|ip| ip.parse::<Ipv4Addr>().ok());
    let external: Vec<Ipv4Addr> = spec
        .external_ips
        .iter()
        .flatten()
        .map(String::as_str)
        .chain(service.status.iter().flat_map(|s| s.load_balancer.iter().flat_map(|lb| lb.ingress.iter().flatten())).filter_map(|i| i.ip.as_deref()))
        .filter_map(|ip| ip.parse().ok())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let namespace = service.metadata.namespace.as_deref().unwrap_or("");
    let name = service.metadata.name.as_deref().unwrap_or("");
    let ports = spec
        .ports
        .iter()
        .flatten()
        .filter_map(|spec| {
            let protocol_name = spec.protocol.as_deref().unwrap_or("TCP");
            let (Some(protocol), Ok(port)) = (Protocol::parse(protocol_name), u16::try_from(spec.port)) else { return None };
            let node_port = spec.node_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0);
            let port_name = spec.name.as_deref().filter(|n| !n.is_empty()).map_or_else(|| spec.port.to_string(), str::to_owned);
            let id = format!("{namespace}/{name}/{}/{port_name}", protocol.name());
            Some(Frontend { spec, protocol, protocol_name, port, node_port, id })
        })
        .collect();
    Some(Frontends { cluster_ip, external, ports })
}

/// The Service's UDP ports by id: where they receive, and who serves them
/// (what [`conntrack`](super::conntrack) clears stale flows by).
pub fn udp_ports(service: &Service, slices: &[impl Borrow<EndpointSlice>]) -> BTreeMap<String, UdpPort> {
    let Some(frontends) = frontends(service) else { return BTreeMap::new() };
    let addresses: Vec<Ipv4Addr> = frontends.cluster_ip.into_iter().chain(frontends.external.iter().copied()).collect();
    frontends
        .ports
        .into_iter()
        .filter(|p| p.protocol == Protocol::Udp && (!addresses.is_empty() || p.node_port.is_some()))
        .map(|p| {
            let serving = serving_endpoints(slices, p.spec, p.protocol_name);
            (p.id, UdpPort { addresses: addresses.clone(), port: p.port, node_port: p.node_port, serving })
        })
        .collect()
}

/// The health check a LoadBalancer Service with `externalTrafficPolicy:
/// Local` asks this node for: its port, and its ready endpoints on this node.
pub fn health_check(service: &Service, slices: &[impl Borrow<EndpointSlice>], ctx: &Context) -> Option<HealthCheck> {
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() != Some("LoadBalancer") || spec.external_traffic_policy.as_deref() != Some("Local") {
        return None;
    }
    let port = spec.health_check_node_port.and_then(|p| u16::try_from(p).ok()).filter(|p| *p > 0)?;
    let node = ctx.node_name.as_deref();
    let local: BTreeSet<&str> = slices
        .iter()
        .flat_map(|s| &s.borrow().endpoints)
        .filter(|e| node.is_some() && e.node_name.as_deref() == node && e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
        .flat_map(|e| e.addresses.iter().map(String::as_str))
        .collect();
    Some(HealthCheck { port, local_endpoints: local.len() })
}

/// The rules for one Service (empty for headless and ExternalName ones).
pub fn service_rules(service: &Service, slices: &[impl Borrow<EndpointSlice>], ctx: &Context) -> Ruleset {
    let mut out = Ruleset::default();
    let (Some(spec), Some(Frontends { cluster_ip, external, ports })) = (service.spec.as_ref(), frontends(service)) else { return out };
    let affinity = (spec.session_affinity.as_deref() == Some("ClientIP")).then(|| {
        spec.session_affinity_config
            .as_ref()
            .and_then(|c| c.client_ip.as_ref())
            .and_then(|c| c.timeout_seconds)
            .and_then(|t| u32::try_from(t).ok())
            .unwrap_or(DEFAULT_AFFINITY_SECONDS)
    });
    // External traffic of `Local` Services goes only to this node's endpoints, unmasqueraded.
    let local_policy = spec.external_traffic_policy.as_deref() == Some("Local");
    for Frontend { spec: port, protocol, protocol_name, port: service_port, node_port, id } in ports {
        let endpoints = endpoints(slices, port, protocol_name);
        let mut keys: Vec<(Map, Key, bool)> = Vec::new(); // (map, key, external)
        keys.extend(cluster_ip.map(|ip| (Map::Services, Key::Address(ip, protocol, service_port), false)));
        keys.extend(external.iter().map(|ip| (Map::Services, Key::Address(*ip, protocol, service_port), true)));
        keys.extend(node_port.map(|p| (Map::NodePorts, Key::Port(protocol, p), true)));
        if keys.is_empty() {
            continue;
        }
        let no_endpoint = |map: Map| if map == Map::Services { Map::NoEndpointServices } else { Map::NoEndpointNodePorts };
        if endpoints.is_empty() {
            for (map, key, _) in keys {
                out.elements.insert((no_endpoint(map), key), REJECT_CHAIN.to_owned());
            }
            continue;
        }
        let local = local_policy.then(|| endpoints_on(slices, port, protocol_name, |node| node.is_some() && node == ctx.node_name.as_deref()));
        let endpoint_chain = |e: &Endpoint| format!("ep/{id}/{}:{}", e.address, e.port);
        let affinity_set = |e: &Endpoint| format!("aff/{id}/{}:{}", e.address, e.port);
        for e in endpoints.iter().chain(local.iter().flatten()).collect::<BTreeSet<_>>() {
            let mut rules = vec![Rule::MasqueradeIfFrom(e.address)];
            if let Some(timeout) = affinity {
                rules.push(Rule::RememberClient { set: affinity_set(e), timeout });
                out.sets.insert(affinity_set(e));
            }
            rules.push(Rule::Dnat { address: e.address, port: e.port });
            out.chains.insert(endpoint_chain(e), Chain::regular(rules));
        }
        // Sticky clients first, then a pick among `endpoints`.
        let mut balance = |mut rules: Vec<Rule>, endpoints: &[Endpoint], map: String| {
            if affinity.is_some() {
                rules.extend(endpoints.iter().map(|e| Rule::StickyGoto { set: affinity_set(e), chain: endpoint_chain(e) }));
            }
            match endpoints {
                [only] => rules.push(Rule::Goto(endpoint_chain(only))),
                _ => {
                    rules.push(Rule::Balance { map: map.clone(), size: endpoints.len() as u32 });
                    out.balancers.insert(map, endpoints.iter().map(endpoint_chain).collect());
                }
            }
            Chain::regular(rules)
        };
        let service_chain = format!("svc/{id}");
        let chain = balance(vec![Rule::MasqueradeUnlessFrom(ctx.cluster_cidr)], &endpoints, format!("lb/{id}"));
        out.chains.insert(service_chain.clone(), chain);
        let external_chain = format!("ext/{id}");
        let external_rules = match &local {
            None => vec![Rule::Jump(MARK_FOR_MASQUERADE.into()), Rule::Goto(service_chain.clone())],
            Some(local) => {
                // Pods and the node itself still reach every endpoint, as through the cluster IP.
                let mut rules = vec![
                    Rule::GotoIfFrom(ctx.cluster_cidr, service_chain.clone()),
                    Rule::JumpIfFromNode(MARK_FOR_MASQUERADE.into()),
                    Rule::GotoIfFromNode(service_chain.clone()),
                ];
                if local.is_empty() {
                    // No endpoint on this node: the rest is dropped, as upstream does.
                    rules.push(Rule::Drop);
                } else {
                    let local_chain = format!("local/{id}");
                    let chain = balance(Vec::new(), local, format!("lb-local/{id}"));
                    out.chains.insert(local_chain.clone(), chain);
                    rules.push(Rule::Goto(local_chain));
                }
                rules
            }
        };
        for (map, key, is_external) in keys {
            let target = if is_external {
                out.chains.entry(external_chain.clone()).or_insert_with(|| Chain::regular(external_rules.clone()));
                external_chain.clone()
            } else {
                service_chain.clone()
            };
            out.elements.insert((map, key), target);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{LoadBalancerIngress, LoadBalancerStatus, ServiceSpec, ServiceStatus};
    use k8s_openapi::api::discovery::v1::{Endpoint as SliceEndpoint, EndpointConditions, EndpointPort};

    fn ctx() -> Context {
        Context { cluster_cidr: "10.42.0.0/16".parse().unwrap(), node_name: Some("here".into()) }
    }

    fn service(ports: Vec<(&str, i32, &str, Option<i32>)>) -> Service {
        Service {
            metadata: kube::api::ObjectMeta { name: Some("web".into()), namespace: Some("ns".into()), ..Default::default() },
            spec: Some(ServiceSpec {
                cluster_ip: Some("10.43.0.10".into()),
                ports: Some(
                    ports
                        .into_iter()
                        .map(|(name, port, protocol, node_port)| ServicePort {
                            name: Some(name.into()),
                            port,
                            protocol: Some(protocol.into()),
                            node_port,
                            ..Default::default()
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            status: None,
        }
    }

    /// An endpoint: address, then its ready, serving and terminating conditions.
    type Conditions<'a> = (&'a str, Option<bool>, Option<bool>, Option<bool>);

    fn slice(ports: Vec<(&str, i32, &str)>, endpoints: Vec<Conditions>) -> EndpointSlice {
        EndpointSlice {
            metadata: Default::default(),
            address_type: "IPv4".into(),
            ports: Some(ports.into_iter().map(|(n, p, proto)| EndpointPort { name: Some(n.into()), port: Some(p), protocol: Some(proto.into()), app_protocol: None }).collect()),
            endpoints: endpoints
                .into_iter()
                .map(|(ip, ready, serving, terminating)| SliceEndpoint {
                    addresses: vec![ip.into()],
                    conditions: Some(EndpointConditions { ready, serving, terminating }),
                    ..Default::default()
                })
                .collect(),
        }
    }

    #[test]
    fn only_ready_endpoints_are_used_while_any_is_ready() {
        let slices = [slice(vec![("", 8080, "TCP")], vec![("10.42.0.2", Some(true), None, None), ("10.42.0.3", Some(false), Some(true), Some(true)), ("10.42.0.4", None, None, None)])];
        let port = ServicePort { port: 80, ..Default::default() };
        let got: Vec<String> = endpoints(&slices, &port, "TCP").iter().map(|e| format!("{}:{}", e.address, e.port)).collect();
        assert_eq!(got, ["10.42.0.2:8080", "10.42.0.4:8080"]);
    }

    #[test]
    fn serving_terminating_endpoints_are_the_fallback_when_none_is_ready() {
        let slices = [slice(vec![("", 8080, "TCP")], vec![("10.42.0.3", Some(false), Some(true), Some(true)), ("10.42.0.5", Some(false), Some(false), Some(true))])];
        let port = ServicePort { port: 80, ..Default::default() };
        assert_eq!(endpoints(&slices, &port, "TCP"), [Endpoint { address: "10.42.0.3".parse().unwrap(), port: 8080 }]);
    }

    #[test]
    fn named_ports_pick_their_own_slice_port_and_protocol() {
        let slices = [slice(vec![("http", 8080, "TCP"), ("dns", 5353, "UDP")], vec![("10.42.0.2", Some(true), None, None)])];
        let svc = service(vec![("http", 80, "TCP", None), ("dns", 53, "UDP", None)]);
        let rules = service_rules(&svc, &slices, &ctx());
        let ip = "10.43.0.10".parse().unwrap();
        assert_eq!(rules.elements[&(Map::Services, Key::Address(ip, Protocol::Tcp, 80))], "svc/ns/web/tcp/http");
        assert_eq!(rules.elements[&(Map::Services, Key::Address(ip, Protocol::Udp, 53))], "svc/ns/web/udp/dns");
        let dns = &rules.chains["ep/ns/web/udp/dns/10.42.0.2:5353"];
        assert_eq!(dns.rules.last(), Some(&Rule::Dnat { address: "10.42.0.2".parse().unwrap(), port: 5353 }));
    }

    #[test]
    fn a_service_without_endpoints_is_rejected_on_every_address() {
        let mut svc = service(vec![("", 80, "TCP", Some(30080))]);
        svc.status = Some(ServiceStatus { load_balancer: Some(LoadBalancerStatus { ingress: Some(vec![LoadBalancerIngress { ip: Some("192.168.1.5".into()), ..Default::default() }]) }), ..Default::default() });
        let rules = service_rules(&svc, &[] as &[EndpointSlice], &ctx());
        assert!(rules.chains.is_empty());
        let keys: Vec<_> = rules.elements.iter().map(|((m, k), v)| (*m, *k, v.as_str())).collect();
        assert_eq!(
            keys,
            [
                (Map::NoEndpointServices, Key::Address("10.43.0.10".parse().unwrap(), Protocol::Tcp, 80), REJECT_CHAIN),
                (Map::NoEndpointServices, Key::Address("192.168.1.5".parse().unwrap(), Protocol::Tcp, 80), REJECT_CHAIN),
                (Map::NoEndpointNodePorts, Key::Port(Protocol::Tcp, 30080), REJECT_CHAIN),
            ]
        );
    }

    #[test]
    fn node_ports_and_load_balancer_ips_go_through_the_masquerading_external_chain() {
        let mut svc = service(vec![("", 80, "TCP", Some(30080))]);
        svc.status = Some(ServiceStatus { load_balancer: Some(LoadBalancerStatus { ingress: Some(vec![LoadBalancerIngress { ip: Some("192.168.1.5".into()), ..Default::default() }]) }), ..Default::default() });
        let slices = [slice(vec![("", 8080, "TCP")], vec![("10.42.0.2", Some(true), None, None), ("10.42.0.3", Some(true), None, None)])];
        let rules = service_rules(&svc, &slices, &ctx());
        assert_eq!(rules.elements[&(Map::NodePorts, Key::Port(Protocol::Tcp, 30080))], "ext/ns/web/tcp/80");
        assert_eq!(rules.elements[&(Map::Services, Key::Address("192.168.1.5".parse().unwrap(), Protocol::Tcp, 80))], "ext/ns/web/tcp/80");
        assert_eq!(rules.chains["ext/ns/web/tcp/80"].rules, [Rule::Jump(MARK_FOR_MASQUERADE.into()), Rule::Goto("svc/ns/web/tcp/80".into())]);
        assert_eq!(
            rules.chains["svc/ns/web/tcp/80"].rules,
            [Rule::MasqueradeUnlessFrom(ctx().cluster_cidr), Rule::Balance { map: "lb/ns/web/tcp/80".into(), size: 2 }]
        );
        assert_eq!(rules.balancers["lb/ns/web/tcp/80"], ["ep/ns/web/tcp/80/10.42.0.2:8080", "ep/ns/web/tcp/80/10.42.0.3:8080"]);
        assert_eq!(rules.chains["ep/ns/web/tcp/80/10.42.0.3:8080"].rules[0], Rule::MasqueradeIfFrom("10.42.0.3".parse().unwrap()));
    }

    #[test]
    fn local_external_traffic_goes_only_to_this_nodes_endpoints_unmasqueraded() {
        let mut svc = service(vec![("", 80, "TCP", Some(30080))]);
        svc.spec.as_mut().unwrap().external_traffic_policy = Some("Local".into());
        let mut slices = [slice(vec![("", 8080, "TCP")], vec![("10.42.0.2", Some(true), None, None), ("10.42.1.2", Some(true), None, None)])];
        slices[0].endpoints[0].node_name = Some("here".into());
        slices[0].endpoints[1].node_name = Some("there".into());
        let rules = service_rules(&svc, &slices, &ctx());
        let (node_port, cluster_ip) = ((Map::NodePorts, Key::Port(Protocol::Tcp, 30080)), (Map::Services, Key::Address("10.43.0.10".parse().unwrap(), Protocol::Tcp, 80)));
        assert_eq!(rules.elements[&node_port], "ext/ns/web/tcp/80");
        let service_chain = "svc/ns/web/tcp/80".to_owned();
        assert_eq!(
            rules.chains["ext/ns/web/tcp/80"].rules,
            [
                Rule::GotoIfFrom(ctx().cluster_cidr, service_chain.clone()),
                Rule::JumpIfFromNode(MARK_FOR_MASQUERADE.into()),
                Rule::GotoIfFromNode(service_chain.clone()),
                Rule::Goto("local/ns/web/tcp/80".into()),
            ]
        );
        assert_eq!(rules.chains["local/ns/web/tcp/80"].rules, [Rule::Goto("ep/ns/web/tcp/80/10.42.0.2:8080".into())]);
        assert_eq!(rules.elements[&cluster_ip], service_chain);
        assert_eq!(rules.balancers["lb/ns/web/tcp/80"].len(), 2, "the cluster IP keeps every endpoint");

        // No endpoint on this node: external traffic is dropped, the node's and pods' still served.
        slices[0].endpoints[0].node_name = Some("there".into());
        let rules = service_rules(&svc, &slices, &ctx());
        assert_eq!(rules.elements[&node_port], "ext/ns/web/tcp/80");
        assert_eq!(rules.chains["ext/ns/web/tcp/80"].rules.last(), Some(&Rule::Drop));
        assert!(!rules.chains.contains_key("local/ns/web/tcp/80"));
        assert_eq!(rules.elements[&cluster_ip], service_chain);
    }

    #[test]
    fn local_load_balancers_ask_for_a_health_check_counting_this_nodes_ready_endpoints() {
        let mut svc = service(vec![("http", 80, "TCP", Some(30080)), ("https", 443, "TCP", Some(30443))]);
        let spec = svc.spec.as_mut().unwrap();
        (spec.type_, spec.external_traffic_policy, spec.health_check_node_port) = (Some("LoadBalancer".into()), Some("Local".into()), Some(31999));
        let mut slices = [slice(
            vec![("http", 8080, "TCP"), ("https", 8443, "TCP")],
            vec![("10.42.0.2", Some(true), None, None), ("10.42.0.3", Some(false), Some(true), Some(true)), ("10.42.1.2", Some(true), None, None)],
        )];
        for (endpoint, node) in slices[0].endpoints.iter_mut().zip(["here", "here", "there"]) {
            endpoint.node_name = Some(node.into());
        }
        assert_eq!(health_check(&svc, &slices, &ctx()), Some(HealthCheck { port: 31999, local_endpoints: 1 }), "one address, not one per port; ready only");
        svc.spec.as_mut().unwrap().external_traffic_policy = Some("Cluster".into());
        assert_eq!(health_check(&svc, &slices, &ctx()), None);
    }

    #[test]
    fn client_ip_affinity_remembers_clients_per_endpoint() {
        let mut svc = service(vec![("", 80, "TCP", None)]);
        let spec = svc.spec.as_mut().unwrap();
        spec.session_affinity = Some("ClientIP".into());
        let slices = [slice(vec![("", 8080, "TCP")], vec![("10.42.0.2", Some(true), None, None)])];
        let rules = service_rules(&svc, &slices, &ctx());
        let set = "aff/ns/web/tcp/80/10.42.0.2:8080".to_owned();
        assert!(rules.sets.contains(&set));
        assert_eq!(rules.chains["svc/ns/web/tcp/80"].rules[1], Rule::StickyGoto { set: set.clone(), chain: "ep/ns/web/tcp/80/10.42.0.2:8080".into() });
        assert_eq!(rules.chains["ep/ns/web/tcp/80/10.42.0.2:8080"].rules[1], Rule::RememberClient { set, timeout: DEFAULT_AFFINITY_SECONDS });
    }

    #[test]
    fn udp_ports_keep_every_serving_endpoint_terminating_ones_too() {
        let slices = [slice(
            vec![("dns", 5353, "UDP"), ("http", 8080, "TCP")],
            vec![("10.42.0.2", Some(true), None, None), ("10.42.0.3", Some(false), Some(true), Some(true)), ("10.42.0.4", Some(false), Some(false), Some(true))],
        )];
        let svc = service(vec![("dns", 53, "UDP", Some(30053)), ("http", 80, "TCP", None)]);
        let ports = udp_ports(&svc, &slices);
        let serving = ["10.42.0.2", "10.42.0.3"].map(|a| Endpoint { address: a.parse().unwrap(), port: 5353 });
        let expected = UdpPort { addresses: vec!["10.43.0.10".parse().unwrap()], port: 53, node_port: Some(30053), serving: serving.into() };
        assert_eq!(ports.into_iter().collect::<Vec<_>>(), [("ns/web/udp/dns".to_owned(), expected)]);
    }

    #[test]
    fn headless_and_external_name_services_need_nothing() {
        let mut svc = service(vec![("", 80, "TCP", None)]);
        svc.spec.as_mut().unwrap().cluster_ip = Some("None".into());
        let slices = [slice(vec![("", 8080, "TCP")], vec![("10.42.0.2", Some(true), None, None)])];
        assert!(service_rules(&svc, &slices, &ctx()).is_empty());
        svc.spec.as_mut().unwrap().type_ = Some("ExternalName".into());
        assert!(service_rules(&svc, &slices, &ctx()).is_empty());
        assert!(udp_ports(&svc, &slices).is_empty());
    }
}
