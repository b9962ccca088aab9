//! Clearing UDP flows that would stick to a backend that is gone, as
//! kube-proxy's conntrack cleanup does. NAT is decided on a flow's first
//! packet only, and a UDP flow lives in conntrack as long as packets keep
//! coming, so without this a client that keeps its socket keeps sending to
//! an endpoint that was removed, or (when it started sending while the Service
//! had no endpoints, or no rules yet) past the Service altogether.
//!
//! A flow is stale for a UDP Service port when it was sent to the port (one of
//! its addresses and its port, or its node port) and is not answered by one of
//! the port's serving endpoints: a flow DNATed to a removed endpoint, and a
//! flow that was never DNATed (its reply comes from the Service address
//! itself), both qualify. Stale flows are looked for when a port loses a
//! serving endpoint, gains its first one or goes away, and for every UDP port
//! when the proxy rebuilds its rules (changes while it was down). They are
//! deleted after the rules changed, so the next packet is NATed anew.

use super::netlink::{Error, Nfnetlink};
use super::services::Endpoint;
use netlink_packet_core::{DefaultNla, Nla};
use netlink_packet_netfilter::conntrack::{ConntrackAttribute, IPTuple, ProtoTuple, Protocol, Tuple};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddrV4};

/// `CTA_ZONE`: the conntrack zone of an entry, part of what names it.
const CTA_ZONE: u16 = 18;

/// Where one UDP Service port receives, and who may answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UdpPort {
    /// Cluster, external and load-balancer IPs.
    pub addresses: Vec<Ipv4Addr>,
    pub port: u16,
    pub node_port: Option<u16>,
    /// Endpoints that serve, ready or terminating.
    pub serving: BTreeSet<Endpoint>,
}

impl UdpPort {
    /// Whether `flow` was sent to this port and is not answered by one of its serving endpoints.
    fn is_stale(&self, flow: &Flow) -> bool {
        let destination = flow.destination;
        let sent_here = (destination.port() == self.port && self.addresses.contains(destination.ip())) || self.node_port == Some(destination.port());
        let answered_by = Endpoint { address: *flow.reply_source.ip(), port: flow.reply_source.port() };
        sent_here && !self.serving.contains(&answered_by)
    }
}

/// The ports whose flows must be checked after a Service's UDP ports went from
/// `old` to `new` (by port id): ports that lost a serving endpoint, that
/// gained their first, and that are gone (nothing serves them any more).
pub fn to_check(old: &BTreeMap<String, UdpPort>, new: &BTreeMap<String, UdpPort>) -> Vec<UdpPort> {
    let mut out: Vec<UdpPort> = old
        .iter()
        .filter(|(id, _)| !new.contains_key(*id))
        .map(|(_, gone)| UdpPort { serving: BTreeSet::new(), ..gone.clone() })
        .collect();
    for (id, port) in new {
        let before = old.get(id).map(|p| &p.serving);
        let lost = before.is_some_and(|b| !b.is_subset(&port.serving));
        let first = before.is_none_or(BTreeSet::is_empty) && !port.serving.is_empty();
        if lost || first {
            out.push(port.clone());
        }
    }
    out
}

/// A UDP flow as conntrack holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flow {
    pub source: SocketAddrV4,
    /// Where the client sent it (before DNAT).
    pub destination: SocketAddrV4,
    /// Where answers come from (after DNAT: the endpoint).
    pub reply_source: SocketAddrV4,
    /// The entry's conntrack zone, if it has one.
    zone: Option<Vec<u8>>,
}

impl Flow {
    /// The flow in a dumped entry; `None` for anything but IPv4 UDP.
    fn parse(attributes: &[ConntrackAttribute]) -> Option<Flow> {
        let (mut original, mut reply, mut zone) = (None, None, None);
        for attribute in attributes {
            match attribute {
                ConntrackAttribute::CtaTupleOrig(t) => original = endpoints_of(t),
                ConntrackAttribute::CtaTupleReply(t) => reply = endpoints_of(t),
                ConntrackAttribute::Other(nla) if nla.kind() == CTA_ZONE => {
                    let mut value = vec![0; nla.value_len()];
                    nla.emit_value(&mut value);
                    zone = Some(value);
                }
                _ => {}
            }
        }
        let ((source, destination), (reply_source, _)) = (original?, reply?);
        Some(Flow { source, destination, reply_source, zone })
    }

    /// The attributes that name this entry in a delete request.
    fn identity(&self) -> Vec<ConntrackAttribute> {
        let tuple = vec![
            Tuple::Ip(vec![IPTuple::SourceAddress(IpAddr::V4(*self.source.ip())), IPTuple::DestinationAddress(IpAddr::V4(*self.destination.ip()))]),
            Tuple::Proto(vec![
                ProtoTuple::Protocol(Protocol::Udp),
                ProtoTuple::SourcePort(self.source.port()),
                ProtoTuple::DestinationPort(self.destination.port()),
            ]),
        ];
        let mut out = vec![ConntrackAttribute::CtaTupleOrig(tuple)];
        if let Some(zone) = &self.zone {
            out.push(ConntrackAttribute::Other(DefaultNla::new(CTA_ZONE, zone.clone())));
        }
        out
    }
}

/// Source and destination of a UDP tuple.
fn endpoints_of(tuple: &[Tuple]) -> Option<(SocketAddrV4, SocketAddrV4)> {
    let (mut source, mut destination, mut udp, mut source_port, mut destination_port) = (None, None, false, None, None);
    for part in tuple {
        match part {
            Tuple::Ip(ips) => {
                for ip in ips {
                    match ip {
                        IPTuple::SourceAddress(IpAddr::V4(a)) => source = Some(*a),
                        IPTuple::DestinationAddress(IpAddr::V4(a)) => destination = Some(*a),
                        _ => {}
                    }
                }
            }
            Tuple::Proto(protos) => {
                for proto in protos {
                    match proto {
                        ProtoTuple::Protocol(p) => udp = *p == Protocol::Udp,
                        ProtoTuple::SourcePort(p) => source_port = Some(*p),
                        ProtoTuple::DestinationPort(p) => destination_port = Some(*p),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if !udp {
        return None;
    }
    Some((SocketAddrV4::new(source?, source_port?), SocketAddrV4::new(destination?, destination_port?)))
}

/// The UDP flows conntrack holds (in the caller's network namespace).
pub fn udp_flows(netlink: &mut Nfnetlink) -> Result<Vec<Flow>, Error> {
    Ok(netlink.dump_conntrack()?.iter().filter_map(|entry| Flow::parse(entry)).collect())
}

/// Deletes the flows that are stale for any of `ports`; returns how many.
pub fn clear_stale(netlink: &mut Nfnetlink, ports: &[UdpPort]) -> Result<usize, Error> {
    if ports.is_empty() {
        return Ok(0);
    }
    let mut deleted = 0;
    for flow in udp_flows(netlink)?.into_iter().filter(|f| ports.iter().any(|p| p.is_stale(f))) {
        match netlink.delete_conntrack(flow.identity()) {
            Ok(()) => deleted += 1,
            Err(e) if e.errno() == Some(libc::ENOENT) => {} // expired meanwhile
            Err(e) => return Err(e),
        }
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(s: &str) -> Endpoint {
        let a: SocketAddrV4 = s.parse().unwrap();
        Endpoint { address: *a.ip(), port: a.port() }
    }

    fn port(serving: &[&str]) -> UdpPort {
        UdpPort { addresses: vec!["10.43.0.10".parse().unwrap()], port: 53, node_port: Some(30053), serving: serving.iter().map(|s| endpoint(s)).collect() }
    }

    fn flow(destination: &str, reply_source: &str) -> Flow {
        Flow { source: "10.42.0.9:40000".parse().unwrap(), destination: destination.parse().unwrap(), reply_source: reply_source.parse().unwrap(), zone: None }
    }

    #[test]
    fn flows_to_the_port_not_answered_by_a_serving_endpoint_are_stale() {
        let p = port(&["10.42.0.2:5353"]);
        assert!(!p.is_stale(&flow("10.43.0.10:53", "10.42.0.2:5353")), "DNATed to a serving endpoint");
        assert!(p.is_stale(&flow("10.43.0.10:53", "10.42.0.3:5353")), "DNATed to a removed endpoint");
        assert!(p.is_stale(&flow("10.43.0.10:53", "10.42.0.2:5354")), "the endpoint's address on another port");
        assert!(p.is_stale(&flow("10.43.0.10:53", "10.43.0.10:53")), "never DNATed");
        assert!(p.is_stale(&flow("192.168.1.5:30053", "10.42.0.3:5353")), "through the node port");
        assert!(!p.is_stale(&flow("10.43.0.10:54", "10.43.0.10:54")), "another port of the address");
        assert!(!p.is_stale(&flow("10.43.0.11:53", "10.43.0.11:53")), "another address");
    }

    #[test]
    fn ports_are_checked_when_they_lose_an_endpoint_gain_their_first_or_go_away() {
        let map = |port: Option<&UdpPort>| port.map(|p| ("a".to_owned(), p.clone())).into_iter().collect::<BTreeMap<_, _>>();
        let two = port(&["10.42.0.2:5353", "10.42.0.3:5353"]);
        let one = port(&["10.42.0.2:5353"]);
        let none = port(&[]);
        let check = |old: Option<&UdpPort>, new: Option<&UdpPort>| to_check(&map(old), &map(new));
        assert_eq!(check(Some(&one), Some(&two)), [], "an endpoint added to serving ones");
        assert_eq!(check(Some(&two), Some(&one)), std::slice::from_ref(&one), "an endpoint removed");
        assert_eq!(check(Some(&none), Some(&one)), std::slice::from_ref(&one), "the first endpoint");
        assert_eq!(check(None, Some(&one)), std::slice::from_ref(&one), "a new port with endpoints");
        assert_eq!(check(None, Some(&none)), [], "a new port without endpoints");
        assert_eq!(check(Some(&two), None), [none], "a port that went away: all its flows");
        assert_eq!(check(Some(&one), Some(&one)), []);
    }

    #[test]
    fn a_dumped_entry_round_trips_to_its_delete_request() {
        let f = Flow { zone: Some(vec![0, 7]), ..flow("10.43.0.10:53", "10.42.0.2:5353") };
        let reply = vec![
            Tuple::Ip(vec![IPTuple::SourceAddress("10.42.0.2".parse().unwrap()), IPTuple::DestinationAddress("10.42.0.9".parse().unwrap())]),
            Tuple::Proto(vec![ProtoTuple::Protocol(Protocol::Udp), ProtoTuple::SourcePort(5353), ProtoTuple::DestinationPort(40000)]),
        ];
        let mut entry = f.identity();
        entry.push(ConntrackAttribute::CtaTupleReply(reply));
        assert_eq!(Flow::parse(&entry), Some(f));
        let tcp = vec![ConntrackAttribute::CtaTupleOrig(vec![Tuple::Proto(vec![ProtoTuple::Protocol(Protocol::Tcp)])])];
        assert_eq!(Flow::parse(&tcp), None);
    }
}
