//! What rk keeps in nf_tables, as values that can be compared: chains of
//! [`Rule`]s, the verdict maps that dispatch to them, the load-balancing maps
//! and the session-affinity sets; the fixed skeletons of rk's tables; and the
//! two ways of turning wanted state into one transaction: [`update`] (one
//! Service's difference) and [`resync`] (everything, against what the kernel has).
//!
//! The layout follows kube-proxy's nftables mode: `service-ips` maps
//! `daddr . proto . dport` to a per-Service-port chain, `service-nodeports` maps
//! `proto . dport` on local addresses to its external chain; a Service chain
//! picks an endpoint chain with `numgen random mod n vmap @lb/…`, and the
//! endpoint chain DNATs. Traffic marked on the way is masqueraded in postrouting.
//!
//! Services are spread over [`SHARDS`] tables (`rk-services-NN`), each with its
//! own NAT hooks and maps, because the kernel re-validates every chain reachable
//! from a table's hooks on each transaction that adds a jump: the cost of one
//! Service's update grows with its table, not with the cluster. The table `rk`
//! holds what is shared: rejection of Services without endpoints, masquerading,
//! and the localhost guard.

use super::nft::{self, Action, BaseHook, Batch, CtKey, Expr, Header, Hook4, SetKind};
use ipnet::Ipv4Net;
use netlink_packet_netfilter::nftables::{MetaKey, Operator, Register};
use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

/// The packet mark bit asking for masquerade in postrouting (kube-proxy's).
pub const MASQUERADE_MARK: u32 = 0x4000;
pub const MARK_FOR_MASQUERADE: &str = "mark-for-masquerade";
/// Tables Services are spread over.
pub const SHARDS: usize = 16;
pub const REJECT_CHAIN: &str = "reject-chain";
const SERVICES: &str = "services";
const MASQUERADING: &str = "masquerading";
/// `RTN_LOCAL`: `fib daddr type local`.
const RTN_LOCAL: u32 = 2;
/// `IPS_DST_NAT` in `ct status`.
const IPS_DST_NAT: u32 = 0x20;
/// The `new` bit of `ct state`.
const CT_STATE_NEW: u32 = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "TCP" => Some(Self::Tcp),
            "UDP" => Some(Self::Udp),
            "SCTP" => Some(Self::Sctp),
            _ => None,
        }
    }

    pub fn number(self) -> u8 {
        match self {
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Sctp => "sctp",
        }
    }
}

/// rk's verdict maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Map {
    /// Cluster, external and load-balancer IPs with their ports → Service chains.
    Services,
    /// Node ports on any local address → external chains.
    NodePorts,
    /// Addresses of Services without endpoints → reject.
    NoEndpointServices,
    /// Node ports of Services without endpoints → reject.
    NoEndpointNodePorts,
}

impl Map {
    pub const ALL: [Map; 4] = [Map::Services, Map::NodePorts, Map::NoEndpointServices, Map::NoEndpointNodePorts];

    pub fn name(self) -> &'static str {
        match self {
            Map::Services => "service-ips",
            Map::NodePorts => "service-nodeports",
            Map::NoEndpointServices => "no-endpoint-services",
            Map::NoEndpointNodePorts => "no-endpoint-nodeports",
        }
    }

    fn by_address(self) -> bool {
        matches!(self, Map::Services | Map::NoEndpointServices)
    }

    /// Whether the map lives in the shared table rather than a Service shard.
    pub fn shared(self) -> bool {
        matches!(self, Map::NoEndpointServices | Map::NoEndpointNodePorts)
    }

    fn declare(self, batch: &mut Batch) {
        if self.by_address() {
            batch.add_set(self.name(), &[nft::TYPE_IPV4_ADDR, nft::TYPE_INET_PROTO, nft::TYPE_INET_SERVICE], 12, SetKind::VerdictMap);
        } else {
            batch.add_set(self.name(), &[nft::TYPE_INET_PROTO, nft::TYPE_INET_SERVICE], 8, SetKind::VerdictMap);
        }
    }
}

/// A map key: `address . proto . port` or `proto . port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Key {
    Address(Ipv4Addr, Protocol, u16),
    Port(Protocol, u16),
}

impl Key {
    /// The key as the kernel compares it: each field padded to 32 bits.
    pub fn bytes(&self) -> Vec<u8> {
        let proto_port = |p: Protocol, port: u16| {
            let port = port.to_be_bytes();
            [p.number(), 0, 0, 0, port[0], port[1], 0, 0]
        };
        match *self {
            Key::Address(ip, p, port) => ip.octets().iter().copied().chain(proto_port(p, port)).collect(),
            Key::Port(p, port) => proto_port(p, port).to_vec(),
        }
    }
}

/// One rule, by meaning; [`encode`] spells it in expressions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rule {
    Jump(String),
    Goto(String),
    /// `[ct state new] ip daddr . meta l4proto . th dport vmap @map` for address
    /// maps; `[ct state new] fib daddr type local meta l4proto . th dport vmap @map`
    /// for port maps.
    Dispatch { map: Map, new_only: bool },
    /// `ip saddr != net jump mark-for-masquerade`: traffic from outside the pod network.
    MasqueradeUnlessFrom(Ipv4Net),
    /// `ip saddr == ip jump mark-for-masquerade`: an endpoint reaching itself.
    MasqueradeIfFrom(Ipv4Addr),
    /// `ip saddr net goto chain`.
    GotoIfFrom(Ipv4Net, String),
    /// `fib saddr type local jump chain`: traffic the node itself sends.
    JumpIfFromNode(String),
    /// `fib saddr type local goto chain`.
    GotoIfFromNode(String),
    /// `ip saddr @set goto chain`: a client seen recently goes where it went.
    StickyGoto { set: String, chain: String },
    /// `numgen random mod size vmap @map`, a load-balancing map.
    Balance { map: String, size: u32 },
    /// `update @set { ip saddr timeout <seconds>s }`.
    RememberClient { set: String, timeout: u32 },
    Dnat { address: Ipv4Addr, port: u16 },
    /// `meta mark & MARK == 0 return`.
    ReturnUnlessMarked,
    /// `meta mark set meta mark ^ MARK` (after `ReturnUnlessMarked`: clears it).
    ClearMark,
    /// `meta mark set meta mark | MARK`.
    SetMark,
    Masquerade,
    /// `meta l4proto tcp reject with tcp reset`.
    RejectTcpWithReset,
    /// `reject` (ICMP port unreachable).
    Reject,
    Drop,
    /// Drops packets for 127.0.0.0/8 from elsewhere unless DNATed: with
    /// `route_localnet` on, nothing else would stop them (CVE-2020-8558).
    DropLocalnetMartians,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Chain {
    pub base: Option<BaseHook>,
    pub rules: Vec<Rule>,
}

impl Chain {
    pub fn regular(rules: Vec<Rule>) -> Self {
        Self { base: None, rules }
    }
}

/// A part of the table: its chains, affinity sets and map elements.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub chains: BTreeMap<String, Chain>,
    /// Session-affinity sets of client addresses.
    pub sets: BTreeSet<String>,
    /// Load-balancing maps: element `i` jumps to chain `i`.
    pub balancers: BTreeMap<String, Vec<String>>,
    pub elements: BTreeMap<(Map, Key), String>,
}

impl Ruleset {
    pub fn is_empty(&self) -> bool {
        self.chains.is_empty() && self.sets.is_empty() && self.balancers.is_empty() && self.elements.is_empty()
    }

    /// The part that goes to the shared table (rejections) and the rest.
    pub fn split_shared(mut self) -> (Ruleset, Ruleset) {
        let (shared, own) = std::mem::take(&mut self.elements).into_iter().partition(|((map, _), _)| map.shared());
        self.elements = own;
        (Ruleset { elements: shared, ..Default::default() }, self)
    }

    pub fn extend(&mut self, other: &Ruleset) {
        self.chains.extend(other.chains.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.sets.extend(other.sets.iter().cloned());
        self.balancers.extend(other.balancers.iter().map(|(k, v)| (k.clone(), v.clone())));
        self.elements.extend(other.elements.iter().map(|(k, v)| (*k, v.clone())));
    }
}

/// The shared table's chains: rejection of Services without endpoints,
/// masquerading, and the localhost guard.
pub fn shared_skeleton() -> Ruleset {
    let base = |kind, hook, priority, rules| Chain { base: Some(BaseHook { kind, hook, priority }), rules };
    let dispatch = |map| Rule::Dispatch { map, new_only: true };
    let chains = [
        ("nat-postrouting", base("nat", Hook4::Postrouting, 100, vec![Rule::Jump(MASQUERADING.into())])),
        (
            "filter-input",
            base(
                "filter",
                Hook4::Input,
                -110,
                vec![dispatch(Map::NoEndpointServices), dispatch(Map::NoEndpointNodePorts), Rule::DropLocalnetMartians],
            ),
        ),
        ("filter-forward", base("filter", Hook4::Forward, -110, vec![dispatch(Map::NoEndpointServices)])),
        ("filter-output", base("filter", Hook4::Output, -110, vec![dispatch(Map::NoEndpointServices), dispatch(Map::NoEndpointNodePorts)])),
        (MASQUERADING, Chain::regular(vec![Rule::ReturnUnlessMarked, Rule::ClearMark, Rule::Masquerade])),
        (REJECT_CHAIN, Chain::regular(vec![Rule::RejectTcpWithReset, Rule::Reject])),
    ];
    Ruleset { chains: chains.into_iter().map(|(n, c)| (n.to_owned(), c)).collect(), ..Default::default() }
}

/// A Service shard's chains: its NAT hooks dispatching through its maps.
pub fn shard_skeleton() -> Ruleset {
    let base = |hook| Chain { base: Some(BaseHook { kind: "nat", hook, priority: -100 }), rules: vec![Rule::Jump(SERVICES.into())] };
    let dispatch = |map| Rule::Dispatch { map, new_only: false };
    let chains = [
        ("nat-prerouting", base(Hook4::Prerouting)),
        ("nat-output", base(Hook4::Output)),
        (SERVICES, Chain::regular(vec![dispatch(Map::Services), dispatch(Map::NodePorts)])),
        (MARK_FOR_MASQUERADE, Chain::regular(vec![Rule::SetMark])),
    ];
    Ruleset { chains: chains.into_iter().map(|(n, c)| (n.to_owned(), c)).collect(), ..Default::default() }
}

/// The maps a table declares.
pub fn maps(shared: bool) -> impl Iterator<Item = Map> {
    Map::ALL.into_iter().filter(move |m| m.shared() == shared)
}

fn u32_host(v: u32) -> Vec<u8> {
    v.to_ne_bytes().to_vec()
}

/// `ip saddr` into reg1.
pub(super) fn saddr() -> Expr {
    nft::payload(Header::Network, 12, 4, Register::Reg1)
}

/// `ip daddr` into reg1.
pub(super) fn daddr() -> Expr {
    nft::payload(Header::Network, 16, 4, Register::Reg1)
}

/// `reg1 = <32-bit host-order value>; reg1 & mask <op> value`.
fn masked(load: Expr, mask: u32, op: Operator, value: u32) -> Vec<Expr> {
    vec![load, nft::bitwise(Register::Reg1, Register::Reg1, u32_host(mask), u32_host(0)), nft::cmp(Register::Reg1, op, u32_host(value))]
}

/// An address under a prefix, in network byte order.
pub(super) fn prefix(load: Expr, net: Ipv4Net, op: Operator) -> Vec<Expr> {
    vec![
        load,
        nft::bitwise(Register::Reg1, Register::Reg1, net.netmask().octets().to_vec(), vec![0; 4]),
        nft::cmp(Register::Reg1, op, net.network().octets().to_vec()),
    ]
}

/// The expressions of one rule.
pub fn encode(rule: &Rule) -> Vec<Expr> {
    let mark = |chain: &str| nft::verdict(Action::Jump, Some(chain));
    match rule {
        Rule::Jump(chain) => vec![nft::verdict(Action::Jump, Some(chain))],
        Rule::Goto(chain) => vec![nft::verdict(Action::Goto, Some(chain))],
        Rule::Dispatch { map, new_only } => {
            let mut out = if *new_only { masked(nft::ct(CtKey::State, Register::Reg1), CT_STATE_NEW, Operator::NotEqual, 0) } else { Vec::new() };
            if map.by_address() {
                out.push(nft::payload(Header::Network, 16, 4, Register::Reg32_00));
                out.push(nft::meta(MetaKey::L4Proto, Register::Reg32_01));
                out.push(nft::payload(Header::Transport, 2, 2, Register::Reg32_02));
            } else {
                out.push(nft::fib_daddr_type(Register::Reg1));
                out.push(nft::cmp(Register::Reg1, Operator::Equal, u32_host(RTN_LOCAL)));
                out.push(nft::meta(MetaKey::L4Proto, Register::Reg32_00));
                out.push(nft::payload(Header::Transport, 2, 2, Register::Reg32_01));
            }
            out.push(nft::lookup(map.name(), None, Register::Reg1, Some(Register::Verdict)));
            out
        }
        Rule::MasqueradeUnlessFrom(net) => {
            let mut out = prefix(saddr(), *net, Operator::NotEqual);
            out.push(mark(MARK_FOR_MASQUERADE));
            out
        }
        Rule::MasqueradeIfFrom(ip) => vec![saddr(), nft::cmp(Register::Reg1, Operator::Equal, ip.octets().to_vec()), mark(MARK_FOR_MASQUERADE)],
        Rule::GotoIfFrom(net, chain) => {
            let mut out = prefix(saddr(), *net, Operator::Equal);
            out.push(nft::verdict(Action::Goto, Some(chain)));
            out
        }
        Rule::JumpIfFromNode(chain) | Rule::GotoIfFromNode(chain) => {
            let action = if matches!(rule, Rule::JumpIfFromNode(_)) { Action::Jump } else { Action::Goto };
            vec![nft::fib_saddr_type(Register::Reg1), nft::cmp(Register::Reg1, Operator::Equal, u32_host(RTN_LOCAL)), nft::verdict(action, Some(chain))]
        }
        Rule::StickyGoto { set, chain } => {
            vec![saddr(), nft::lookup(set, None, Register::Reg1, None), nft::verdict(Action::Goto, Some(chain))]
        }
        Rule::Balance { map, size } => {
            vec![nft::numgen_random(*size, Register::Reg1), nft::lookup(map, None, Register::Reg1, Some(Register::Verdict))]
        }
        Rule::RememberClient { set, timeout } => vec![saddr(), nft::dynset_update(set, Register::Reg1, *timeout)],
        Rule::Dnat { address, port } => vec![
            nft::immediate(Register::Reg1, address.octets().to_vec()),
            nft::immediate(Register::Reg2, port.to_be_bytes().to_vec()),
            nft::dnat(Register::Reg1, Register::Reg2),
        ],
        Rule::ReturnUnlessMarked => {
            let mut out = masked(nft::meta(MetaKey::Mark, Register::Reg1), MASQUERADE_MARK, Operator::Equal, 0);
            out.push(nft::verdict(Action::Return, None));
            out
        }
        Rule::ClearMark | Rule::SetMark => {
            let mask = if matches!(rule, Rule::ClearMark) { u32::MAX } else { !MASQUERADE_MARK };
            vec![
                nft::meta(MetaKey::Mark, Register::Reg1),
                nft::bitwise(Register::Reg1, Register::Reg1, u32_host(mask), u32_host(MASQUERADE_MARK)),
                nft::meta_set(MetaKey::Mark, Register::Reg1),
            ]
        }
        Rule::Masquerade => vec![nft::masquerade_fully_random()],
        Rule::RejectTcpWithReset => vec![
            nft::meta(MetaKey::L4Proto, Register::Reg1),
            nft::cmp(Register::Reg1, Operator::Equal, vec![Protocol::Tcp.number()]),
            nft::reject_tcp_reset(),
        ],
        Rule::Reject => vec![nft::reject_port_unreachable()],
        Rule::Drop => vec![nft::verdict(Action::Drop, None)],
        Rule::DropLocalnetMartians => {
            let loopback: Ipv4Net = "127.0.0.0/8".parse().expect("valid prefix");
            let mut out = prefix(daddr(), loopback, Operator::Equal);
            out.extend(prefix(saddr(), loopback, Operator::NotEqual));
            out.extend(masked(nft::ct(CtKey::Status, Register::Reg1), IPS_DST_NAT, Operator::Equal, 0));
            out.push(nft::verdict(Action::Drop, None));
            out
        }
    }
}

fn add_rules(batch: &mut Batch, name: &str, chain: &Chain) {
    for rule in &chain.rules {
        batch.add_rule(name, encode(rule));
    }
}

fn add_elements<'a>(batch: &mut Batch, elements: impl Iterator<Item = (&'a (Map, Key), &'a String)>) {
    let mut by_map: BTreeMap<Map, Vec<(Vec<u8>, String)>> = BTreeMap::new();
    for ((map, key), chain) in elements {
        by_map.entry(*map).or_default().push((key.bytes(), chain.clone()));
    }
    for (map, elements) in by_map {
        batch.add_map_elements(map.name(), &elements);
    }
}

fn delete_elements<'a>(batch: &mut Batch, keys: impl Iterator<Item = &'a (Map, Key)>) {
    let mut by_map: BTreeMap<Map, Vec<Vec<u8>>> = BTreeMap::new();
    for (map, key) in keys {
        by_map.entry(*map).or_default().push(key.bytes());
    }
    for (map, keys) in by_map {
        batch.delete_elements(map.name(), &keys);
    }
}

fn add_balancer(batch: &mut Batch, name: &str, chains: &[String]) {
    let elements: Vec<(Vec<u8>, String)> = chains.iter().enumerate().map(|(i, c)| ((i as u32).to_ne_bytes().to_vec(), c.clone())).collect();
    batch.add_map_elements(name, &elements);
}

fn declare_balancer(batch: &mut Batch, name: &str) {
    batch.add_set(name, &[nft::TYPE_INTEGER], 4, SetKind::VerdictMap);
}

/// The transaction that turns `old` into `new` in the batch's current table,
/// touching only what differs. What refers to an object goes before the object
/// is removed, and comes after it exists.
pub fn update(batch: &mut Batch, old: &Ruleset, new: &Ruleset) {
    let gone_or_changed = |(k, v): (&(Map, Key), &String)| new.elements.get(k) != Some(v);
    delete_elements(batch, old.elements.iter().filter(|e| gone_or_changed(*e)).map(|(k, _)| k));
    for (name, chain) in &old.chains {
        if new.chains.get(name) != Some(chain) {
            batch.flush_chain(name);
        }
    }
    for (name, chains) in &old.balancers {
        match new.balancers.get(name) {
            None => batch.delete_set(name),
            Some(c) if c != chains => batch.flush_set(name),
            Some(_) => {}
        }
    }
    for name in old.chains.keys().filter(|n| !new.chains.contains_key(*n)) {
        batch.delete_chain(name);
    }
    for name in old.sets.difference(&new.sets) {
        batch.delete_set(name);
    }
    for name in new.sets.difference(&old.sets) {
        batch.add_set(name, &[nft::TYPE_IPV4_ADDR], 4, SetKind::Dynamic);
    }
    for (name, chain) in &new.chains {
        if !old.chains.contains_key(name) {
            batch.add_chain(name, chain.base);
        }
    }
    for (name, chains) in &new.balancers {
        if old.balancers.get(name) != Some(chains) {
            if !old.balancers.contains_key(name) {
                declare_balancer(batch, name);
            }
            add_balancer(batch, name, chains);
        }
    }
    for (name, chain) in &new.chains {
        if old.chains.get(name) != Some(chain) {
            add_rules(batch, name, chain);
        }
    }
    add_elements(batch, new.elements.iter().filter(|(k, v)| old.elements.get(*k) != Some(*v)));
}

/// What a table holds, as listed when the proxy starts.
#[derive(Debug, Default)]
pub struct Existing {
    pub chains: BTreeSet<String>,
    pub sets: BTreeSet<String>,
}

/// The transaction that makes the batch's current table exactly `wanted`
/// (declaring the maps `maps`), whatever it held before: maps and existing
/// chains are emptied and refilled; chains and sets nobody wants any more are
/// deleted. Affinity sets that stay keep their entries.
pub fn resync(batch: &mut Batch, existing: &Existing, wanted: &Ruleset, maps: impl Iterator<Item = Map>) {
    batch.add_table();
    let mut declared = BTreeSet::new();
    for map in maps {
        map.declare(batch);
        batch.flush_set(map.name());
        declared.insert(map.name());
    }
    for name in &existing.chains {
        batch.flush_chain(name);
    }
    for name in existing.sets.iter().filter(|n| !declared.contains(n.as_str())) {
        if wanted.balancers.contains_key(name) {
            batch.flush_set(name);
        } else if !wanted.sets.contains(name) {
            batch.delete_set(name);
        }
    }
    for name in existing.chains.iter().filter(|n| !wanted.chains.contains_key(*n)) {
        batch.delete_chain(name);
    }
    for name in &wanted.sets {
        batch.add_set(name, &[nft::TYPE_IPV4_ADDR], 4, SetKind::Dynamic);
    }
    for (name, chain) in &wanted.chains {
        if !existing.chains.contains(name) {
            batch.add_chain(name, chain.base);
        }
    }
    for (name, chains) in &wanted.balancers {
        declare_balancer(batch, name);
        add_balancer(batch, name, chains);
    }
    for (name, chain) in &wanted.chains {
        add_rules(batch, name, chain);
    }
    add_elements(batch, wanted.elements.iter());
}

/// rk's tables: the shared one and the Service shards.
#[derive(Clone, Debug)]
pub struct Tables {
    pub shared: String,
    pub shards: Vec<String>,
}

impl Tables {
    /// `prefix` and `prefix-services-00` … for `SHARDS` shards.
    pub fn new(prefix: &str) -> Self {
        Self { shared: prefix.to_owned(), shards: (0..SHARDS).map(|i| format!("{prefix}-services-{i:02}")).collect() }
    }

    /// The shard table of the Service `key` (FNV-1a, stable across restarts).
    pub fn shard_of(&self, key: &str) -> &str {
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
        &self.shards[(hash % self.shards.len() as u64) as usize]
    }

    pub fn all(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.shared.as_str()).chain(self.shards.iter().map(String::as_str))
    }

    /// One Service's change: its shard's part and the shared part, in one batch.
    pub fn update(&self, batch: &mut Batch, key: &str, old: &Ruleset, new: &Ruleset) {
        let (old_shared, old_own) = old.clone().split_shared();
        let (new_shared, new_own) = new.clone().split_shared();
        batch.use_table(self.shard_of(key));
        update(batch, &old_own, &new_own);
        batch.use_table(&self.shared);
        update(batch, &old_shared, &new_shared);
    }

    /// Every table made exactly what `services` (by key) want, in one batch.
    /// `existing` is what each table holds now, by table name.
    pub fn resync<'a>(&self, batch: &mut Batch, existing: &BTreeMap<String, Existing>, services: impl Iterator<Item = (&'a str, &'a Ruleset)>) {
        let mut wanted: BTreeMap<&str, Ruleset> = self.shards.iter().map(|t| (t.as_str(), shard_skeleton())).collect();
        wanted.insert(&self.shared, shared_skeleton());
        for (key, rules) in services {
            let (shared, own) = rules.clone().split_shared();
            wanted.get_mut(self.shard_of(key)).expect("every shard is wanted").extend(&own);
            wanted.get_mut(self.shared.as_str()).expect("the shared table is wanted").extend(&shared);
        }
        let none = Existing::default();
        for (table, rules) in &wanted {
            batch.use_table(table);
            resync(batch, existing.get(*table).unwrap_or(&none), rules, maps(*table == self.shared));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use netlink_packet_core::Emitable;
    use netlink_packet_netfilter::nftables::NfTablesMessage;

    fn kinds(batch: &Batch) -> Vec<String> {
        batch.ops().iter().map(|op| op.what.clone()).collect()
    }

    fn service(endpoints: &[&str]) -> Ruleset {
        let chains: Vec<String> = endpoints.iter().map(|e| format!("ep/{e}")).collect();
        let mut rules = Ruleset::default();
        for (chain, e) in chains.iter().zip(endpoints) {
            rules.chains.insert(chain.clone(), Chain::regular(vec![Rule::Dnat { address: e.parse().unwrap(), port: 80 }]));
        }
        rules.chains.insert("svc/x".into(), Chain::regular(vec![Rule::Balance { map: "lb/x".into(), size: chains.len() as u32 }]));
        rules.balancers.insert("lb/x".into(), chains);
        rules.elements.insert((Map::Services, Key::Address("10.43.0.9".parse().unwrap(), Protocol::Tcp, 80)), "svc/x".into());
        rules
    }

    #[test]
    fn map_keys_pad_each_field_to_32_bits_in_network_order() {
        assert_eq!(Key::Address("10.43.0.9".parse().unwrap(), Protocol::Udp, 53).bytes(), [10, 43, 0, 9, 17, 0, 0, 0, 0, 53, 0, 0]);
        assert_eq!(Key::Port(Protocol::Tcp, 30080).bytes(), [6, 0, 0, 0, 0x75, 0x80, 0, 0]);
    }

    #[test]
    fn an_unchanged_service_needs_no_messages() {
        let mut batch = Batch::new("t");
        update(&mut batch, &service(&["10.42.0.2", "10.42.0.3"]), &service(&["10.42.0.2", "10.42.0.3"]));
        assert!(batch.is_empty());
    }

    #[test]
    fn removing_an_endpoint_touches_only_its_chains_and_unhooks_before_deleting() {
        let mut batch = Batch::new("t");
        update(&mut batch, &service(&["10.42.0.2", "10.42.0.3"]), &service(&["10.42.0.2"]));
        assert_eq!(
            kinds(&batch),
            [
                "flushing chain ep/10.42.0.3",
                "flushing chain svc/x",
                "flushing set lb/x",
                "deleting chain ep/10.42.0.3",
                "adding elements to map lb/x",
                "adding a rule to chain svc/x",
            ]
        );
    }

    #[test]
    fn a_new_service_creates_chains_before_the_maps_that_jump_to_them() {
        let mut batch = Batch::new("t");
        update(&mut batch, &Ruleset::default(), &service(&["10.42.0.2", "10.42.0.3"]));
        let what = kinds(&batch);
        let position = |w: &str| what.iter().position(|x| x == w).unwrap_or_else(|| panic!("{w} in {what:?}"));
        assert!(position("creating chain ep/10.42.0.2") < position("adding elements to map lb/x"));
        assert!(position("creating set lb/x") < position("adding a rule to chain svc/x"));
        assert!(position("adding a rule to chain svc/x") < position("adding elements to map service-ips"));
    }

    #[test]
    fn dnat_loads_address_and_port_into_registers_the_nat_expression_reads() {
        let rule = encode(&Rule::Dnat { address: "10.42.0.7".parse().unwrap(), port: 8080 });
        let mut buffer = vec![0; rule.as_slice().buffer_len()];
        rule.as_slice().emit(&mut buffer);
        let find = |needle: &[u8]| buffer.windows(needle.len()).any(|w| w == needle);
        assert!(find(b"immediate\0") && find(b"nat\0"));
        assert!(find(&[10, 42, 0, 7]), "the address in network order");
        assert!(find(&8080u16.to_be_bytes()), "the port in network order");
        // NFTA_NAT_TYPE = NFT_NAT_DNAT, NFTA_NAT_FAMILY = NFPROTO_IPV4
        assert!(find(&[8, 0, 1, 0, 0, 0, 0, 1, 8, 0, 2, 0, 0, 0, 0, 2]));
    }

    #[test]
    fn a_resync_flushes_what_exists_and_deletes_what_nobody_wants() {
        let existing = Existing {
            chains: ["services", "svc/stale", "svc/x"].into_iter().map(String::from).collect(),
            sets: ["service-ips", "lb/stale", "lb/x"].into_iter().map(String::from).collect(),
        };
        let mut wanted = shard_skeleton();
        wanted.extend(&service(&["10.42.0.2", "10.42.0.3"]));
        let mut batch = Batch::new("t");
        resync(&mut batch, &existing, &wanted, maps(false));
        let what = kinds(&batch);
        let position = |w: &str| what.iter().position(|x| x == w).unwrap_or_else(|| panic!("{w} in {what:?}"));
        assert!(position("flushing set service-ips") < position("deleting chain svc/stale"));
        assert!(position("deleting set lb/stale") < position("deleting chain svc/stale"));
        assert!(what.contains(&"flushing set lb/x".to_owned()) && !what.contains(&"deleting set lb/x".to_owned()));
        assert!(!what.contains(&"creating chain svc/x".to_owned()), "existing chains are refilled, not recreated");
        assert!(matches!(batch.ops()[0].message, NfTablesMessage::NewTable(_)));
    }

    #[test]
    fn services_stay_in_their_shard() {
        let tables = Tables::new("rk");
        assert_eq!(tables.shard_of("default/web"), tables.shard_of("default/web"));
        let used: BTreeSet<&str> = (0..200).map(|i| tables.shard_of(&format!("ns/svc-{i}"))).collect();
        assert_eq!(used.len(), SHARDS, "keys spread over every shard");
    }
}
