//! nf_tables objects and expressions as `netlink-packet-netfilter` messages,
//! gathered into a [`Batch`] that the kernel applies as one transaction.
//! Expressions the crate lacks (ct, fib, nat, masq, numgen, reject, dynset) are
//! built here from their raw attributes in `linux/netfilter/nf_tables.h`.

use super::netlink::Op;
use netlink_packet_core::{DefaultNla, NLM_F_CREATE};
use netlink_packet_netfilter::nftables::{
    Bitwise, ChainAttribute, ChainMessage, Cmp, DataAttribute, ExpressionAttribute, Expressions, Hook, HookNumber,
    Immediate, InetHookNumber, ListAttribute, Lookup, Meta, MetaKey, NfTablesMessage, Operator, Payload, Register,
    RuleAttribute, RuleMessage, SetAttribute, SetElementAttribute, SetElementList, SetElementMessage, SetFlags,
    SetMessage, TableAttribute, TableMessage, Verdict, VerdictAttribute,
};

pub type Expr = ListAttribute<ExpressionAttribute>;

/// `NFT_PAYLOAD_*_HEADER`.
#[derive(Clone, Copy)]
pub enum Header {
    Network = 1,
    Transport = 2,
}

/// `NFT_CT_*` keys.
#[derive(Clone, Copy)]
pub enum CtKey {
    State = 0,
    Status = 2,
}

/// `NF_DROP`, `NF_ACCEPT` and the chain verdicts.
#[derive(Clone, Copy, Debug)]
pub enum Action {
    Drop,
    Accept,
    Return,
    Jump,
    Goto,
}

/// Data types, as `nft` names them in set declarations (informational for the kernel).
pub const TYPE_INTEGER: u32 = 4;
pub const TYPE_IPV4_ADDR: u32 = 7;
pub const TYPE_INET_PROTO: u32 = 12;
pub const TYPE_INET_SERVICE: u32 = 13;
/// `NFT_DATA_VERDICT`: the data of a verdict map.
const NFT_DATA_VERDICT: u32 = 0xffff_ff00;
/// Set elements per NEWSETELEM message (attribute lengths are 16 bits).
const ELEMENTS_PER_MESSAGE: usize = 128;

/// The type id `nft` gives a concatenation of `types`.
pub fn concat_type(types: &[u32]) -> u32 {
    types.iter().fold(0, |acc, t| (acc << 6) | t)
}

fn raw(name: &str, attributes: Vec<DefaultNla>) -> Expr {
    Expressions::Other { expression_type: name.to_owned(), attributes }.into()
}

fn be32(kind: u16, value: u32) -> DefaultNla {
    DefaultNla::new(kind, value.to_be_bytes().to_vec())
}

fn reg(r: Register) -> u32 {
    r.into()
}

/// `payload load`: `len` bytes at `offset` of `header` into `dreg`.
pub fn payload(header: Header, offset: u32, len: u32, dreg: Register) -> Expr {
    Expressions::Payload(vec![
        Payload::DestinationRegister(dreg),
        Payload::Base(header as u32),
        Payload::Offset(offset),
        Payload::Len(len),
    ])
    .into()
}

pub fn meta(key: MetaKey, dreg: Register) -> Expr {
    Expressions::Meta(vec![Meta::Key(key), Meta::DestinationRegister(dreg)]).into()
}

pub fn meta_set(key: MetaKey, sreg: Register) -> Expr {
    Expressions::Meta(vec![Meta::Key(key), Meta::SourceRegister(sreg)]).into()
}

pub fn cmp(sreg: Register, op: Operator, data: Vec<u8>) -> Expr {
    Expressions::Cmp(vec![Cmp::SourceRegister(sreg), Cmp::Op(op), Cmp::Data(DataAttribute::Value(data))]).into()
}

/// `dreg = (sreg & mask) ^ xor` over `mask.len()` bytes.
pub fn bitwise(sreg: Register, dreg: Register, mask: Vec<u8>, xor: Vec<u8>) -> Expr {
    Expressions::Bitwise(vec![
        Bitwise::SourceRegister(sreg),
        Bitwise::DestinationRegister(dreg),
        Bitwise::Length(mask.len() as u32),
        Bitwise::Mask(DataAttribute::Value(mask)),
        Bitwise::Xor(DataAttribute::Value(xor)),
    ])
    .into()
}

pub fn immediate(dreg: Register, data: Vec<u8>) -> Expr {
    Expressions::Immediate(vec![Immediate::DestinationRegister(dreg), Immediate::Data(DataAttribute::Value(data))]).into()
}

fn verdict_data(action: Action, chain: Option<&str>) -> DataAttribute {
    let code = match action {
        Action::Drop => Verdict::Other(0),
        Action::Accept => Verdict::Other(1),
        Action::Return => Verdict::Return,
        Action::Jump => Verdict::Jump,
        Action::Goto => Verdict::Goto,
    };
    let mut attributes = vec![VerdictAttribute::Code(code)];
    attributes.extend(chain.map(|c| VerdictAttribute::Chain(c.to_owned())));
    DataAttribute::Verdict(attributes)
}

/// The rule's verdict: drop, return, or jump/goto `chain`.
pub fn verdict(action: Action, chain: Option<&str>) -> Expr {
    Expressions::Immediate(vec![Immediate::DestinationRegister(Register::Verdict), Immediate::Data(verdict_data(action, chain))]).into()
}

/// Looks `sreg` up in a set (`dreg: None`, a match) or a verdict map (`Some(Register::Verdict)`).
pub fn lookup(set: &str, set_id: Option<u32>, sreg: Register, dreg: Option<Register>) -> Expr {
    let mut attributes = vec![Lookup::Set(set.to_owned()), Lookup::SourceRegister(sreg)];
    attributes.extend(set_id.map(Lookup::SetId));
    attributes.extend(dreg.map(Lookup::DestinationRegister));
    Expressions::Lookup(attributes).into()
}

/// `ct <key>` into `dreg` (host byte order, 32 bits).
pub fn ct(key: CtKey, dreg: Register) -> Expr {
    // NFTA_CT_DREG, NFTA_CT_KEY
    raw("ct", vec![be32(1, reg(dreg)), be32(2, key as u32)])
}

/// `fib daddr type` into `dreg` (an `RTN_*` value in host byte order).
pub fn fib_daddr_type(dreg: Register) -> Expr {
    // NFTA_FIB_DREG, NFTA_FIB_RESULT = NFT_FIB_RESULT_ADDRTYPE, NFTA_FIB_FLAGS = NFTA_FIB_F_DADDR
    raw("fib", vec![be32(1, reg(dreg)), be32(2, 3), be32(3, 2)])
}

/// `fib saddr type` into `dreg` (an `RTN_*` value, host byte order).
pub fn fib_saddr_type(dreg: Register) -> Expr {
    // NFTA_FIB_DREG, NFTA_FIB_RESULT = NFT_FIB_RESULT_ADDRTYPE, NFTA_FIB_FLAGS = NFTA_FIB_F_SADDR
    raw("fib", vec![be32(1, reg(dreg)), be32(2, 3), be32(3, 1)])
}

/// `numgen random mod modulus` into `dreg` (host byte order).
pub fn numgen_random(modulus: u32, dreg: Register) -> Expr {
    // NFTA_NG_DREG, NFTA_NG_MODULUS, NFTA_NG_TYPE = NFT_NG_RANDOM
    raw("numgen", vec![be32(1, reg(dreg)), be32(2, modulus), be32(3, 1)])
}

/// `dnat to <address in addr>:<port in port>` (IPv4).
pub fn dnat(addr: Register, port: Register) -> Expr {
    // NFTA_NAT_TYPE = NFT_NAT_DNAT, NFTA_NAT_FAMILY = NFPROTO_IPV4, NFTA_NAT_REG_ADDR_MIN, NFTA_NAT_REG_PROTO_MIN
    raw("nat", vec![be32(1, 1), be32(2, 2), be32(3, reg(addr)), be32(5, reg(port))])
}

/// `masquerade fully-random`.
pub fn masquerade_fully_random() -> Expr {
    // NFTA_MASQ_FLAGS = NF_NAT_RANGE_PROTO_RANDOM_FULLY
    raw("masq", vec![be32(1, 0x10)])
}

/// `reject with tcp reset`.
pub fn reject_tcp_reset() -> Expr {
    // NFTA_REJECT_TYPE = NFT_REJECT_TCP_RST
    raw("reject", vec![be32(1, 1)])
}

/// `reject with icmp port-unreachable`.
pub fn reject_port_unreachable() -> Expr {
    // NFTA_REJECT_TYPE = NFT_REJECT_ICMP_UNREACH, NFTA_REJECT_ICMP_CODE = ICMP_PORT_UNREACH
    raw("reject", vec![be32(1, 0), DefaultNla::new(2, vec![3])])
}

/// `update @set { <sreg> timeout <seconds>s }`: adds the key or refreshes its timeout.
pub fn dynset_update(set: &str, sreg: Register, timeout_seconds: u32) -> Expr {
    let mut name = set.as_bytes().to_vec();
    name.push(0);
    let timeout_ms = u64::from(timeout_seconds) * 1000;
    // NFTA_DYNSET_SET_NAME, NFTA_DYNSET_OP = NFT_DYNSET_OP_UPDATE, NFTA_DYNSET_SREG_KEY, NFTA_DYNSET_TIMEOUT
    raw("dynset", vec![DefaultNla::new(1, name), be32(3, 1), be32(4, reg(sreg)), DefaultNla::new(6, timeout_ms.to_be_bytes().to_vec())])
}

/// A rule's user data holding `comment` as `nft` writes it: one
/// `NFTNL_UDATA_RULE_COMMENT` TLV with the NUL-terminated text.
pub fn rule_comment(comment: &str) -> Vec<u8> {
    let mut text = comment.as_bytes()[..comment.len().min(127)].to_vec();
    text.push(0);
    let mut out = vec![0, text.len() as u8];
    out.extend(text);
    out
}

/// A base chain's place in the packet path.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BaseHook {
    /// "nat" or "filter".
    pub kind: &'static str,
    pub hook: Hook4,
    pub priority: i32,
}

/// The IPv4 hooks rk uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook4 {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl From<Hook4> for InetHookNumber {
    fn from(h: Hook4) -> Self {
        match h {
            Hook4::Prerouting => InetHookNumber::PreRouting,
            Hook4::Input => InetHookNumber::LocalIn,
            Hook4::Forward => InetHookNumber::Forward,
            Hook4::Output => InetHookNumber::LocalOut,
            Hook4::Postrouting => InetHookNumber::PostRouting,
        }
    }
}

/// What a set holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SetKind {
    /// A map from keys to chain verdicts.
    VerdictMap,
    /// Keys added from the packet path, each with its own timeout.
    Dynamic,
}

/// Messages for one transaction on one table.
pub struct Batch {
    table: String,
    ops: Vec<Op>,
    next_set_id: u32,
}

impl Batch {
    pub fn new(table: &str) -> Self {
        Self { table: table.to_owned(), ops: Vec::new(), next_set_id: 1 }
    }

    /// The table the following messages are for (one transaction may span tables).
    pub fn use_table(&mut self, table: &str) {
        table.clone_into(&mut self.table);
    }

    pub fn ops(&self) -> &[Op] {
        &self.ops
    }

    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    fn push(&mut self, message: NfTablesMessage, flags: u16, what: impl FnOnce() -> String) {
        self.ops.push(Op { message, flags, what: what() });
    }

    /// Creates the table unless it exists.
    pub fn add_table(&mut self) {
        let message = NfTablesMessage::NewTable(TableMessage { attributes: vec![TableAttribute::Name(self.table.clone())] });
        self.push(message, NLM_F_CREATE, || "creating the table".into());
    }

    /// Deletes the table and everything in it.
    pub fn delete_table(&mut self) {
        let message = NfTablesMessage::DeleteTable(TableMessage { attributes: vec![TableAttribute::Name(self.table.clone())] });
        self.push(message, 0, || "deleting the table".into());
    }

    /// Creates a chain (a base chain when `base` is given) unless it exists.
    pub fn add_chain(&mut self, name: &str, base: Option<BaseHook>) {
        let mut attributes = vec![ChainAttribute::Table(self.table.clone()), ChainAttribute::Name(name.to_owned())];
        if let Some(b) = base {
            attributes.push(ChainAttribute::Hook(vec![
                Hook::Number(HookNumber::Inet(b.hook.into())),
                Hook::Priority(b.priority as u32),
            ]));
            attributes.push(ChainAttribute::Type(b.kind.to_owned()));
            attributes.push(ChainAttribute::Policy(1)); // NF_ACCEPT
        }
        self.push(NfTablesMessage::NewChain(ChainMessage { attributes }), NLM_F_CREATE, || format!("creating chain {name}"));
    }

    /// Removes every rule of a chain.
    pub fn flush_chain(&mut self, name: &str) {
        let attributes = vec![RuleAttribute::Table(self.table.clone()), RuleAttribute::Chain(name.to_owned())];
        self.push(NfTablesMessage::DeleteRule(RuleMessage { attributes }), 0, || format!("flushing chain {name}"));
    }

    pub fn delete_chain(&mut self, name: &str) {
        let attributes = vec![ChainAttribute::Table(self.table.clone()), ChainAttribute::Name(name.to_owned())];
        self.push(NfTablesMessage::DeleteChain(ChainMessage { attributes }), 0, || format!("deleting chain {name}"));
    }

    /// Appends a rule to a chain.
    pub fn add_rule(&mut self, chain: &str, expressions: Vec<Expr>) {
        let attributes = vec![
            RuleAttribute::Table(self.table.clone()),
            RuleAttribute::Chain(chain.to_owned()),
            RuleAttribute::Expressions(expressions),
        ];
        self.push(NfTablesMessage::NewRule(RuleMessage { attributes }), NLM_F_CREATE | netlink_packet_core::NLM_F_APPEND, || {
            format!("adding a rule to chain {name}", name = chain)
        });
    }

    /// Puts a rule at the head of a chain, with a comment (`nft` shows it;
    /// rk finds its own rules in chains it does not own by it).
    pub fn insert_rule(&mut self, chain: &str, expressions: Vec<Expr>, comment: &str) {
        let attributes = vec![
            RuleAttribute::Table(self.table.clone()),
            RuleAttribute::Chain(chain.to_owned()),
            RuleAttribute::Expressions(expressions),
            RuleAttribute::UserData(rule_comment(comment)),
        ];
        self.push(NfTablesMessage::NewRule(RuleMessage { attributes }), NLM_F_CREATE, || format!("inserting a rule into chain {chain}"));
    }

    /// Deletes one rule by its handle.
    pub fn delete_rule(&mut self, chain: &str, handle: u64) {
        let attributes = vec![RuleAttribute::Table(self.table.clone()), RuleAttribute::Chain(chain.to_owned()), RuleAttribute::Handle(handle)];
        self.push(NfTablesMessage::DeleteRule(RuleMessage { attributes }), 0, || format!("deleting rule {handle} of chain {chain}"));
    }

    /// Creates a named set unless it exists. `key_types` are its concatenated fields.
    pub fn add_set(&mut self, name: &str, key_types: &[u32], key_len: u32, kind: SetKind) {
        let mut attributes = vec![
            SetAttribute::Table(self.table.clone()),
            SetAttribute::Name(name.to_owned()),
            SetAttribute::KeyType(concat_type(key_types)),
            SetAttribute::KeyLen(key_len),
            SetAttribute::Id(self.take_set_id()),
        ];
        match kind {
            SetKind::VerdictMap => {
                attributes.push(SetAttribute::Flags(SetFlags::Map));
                attributes.push(SetAttribute::DataType(NFT_DATA_VERDICT));
            }
            SetKind::Dynamic => attributes.push(SetAttribute::Flags(SetFlags::Timeout | SetFlags::Eval)),
        }
        self.push(NfTablesMessage::NewSet(SetMessage { attributes }), NLM_F_CREATE, || format!("creating set {name}"));
    }

    fn take_set_id(&mut self) -> u32 {
        self.next_set_id += 1;
        self.next_set_id - 1
    }

    /// Removes every element of a set.
    pub fn flush_set(&mut self, name: &str) {
        let attributes = vec![SetElementList::Table(self.table.clone()), SetElementList::Set(name.to_owned())];
        self.push(NfTablesMessage::DeleteSetElement(SetElementMessage { attributes }), 0, || format!("flushing set {name}"));
    }

    pub fn delete_set(&mut self, name: &str) {
        let attributes = vec![SetAttribute::Table(self.table.clone()), SetAttribute::Name(name.to_owned())];
        self.push(NfTablesMessage::DeleteSet(SetMessage { attributes }), 0, || format!("deleting set {name}"));
    }

    /// Adds `key → goto chain` elements to a verdict map.
    pub fn add_map_elements(&mut self, map: &str, elements: &[(Vec<u8>, String)]) {
        for chunk in elements.chunks(ELEMENTS_PER_MESSAGE) {
            let list = chunk
                .iter()
                .map(|(key, chain)| {
                    ListAttribute::Element(vec![
                        SetElementAttribute::Key(DataAttribute::Value(key.clone())),
                        SetElementAttribute::Data(verdict_data(Action::Goto, Some(chain))),
                    ])
                })
                .collect();
            let attributes = vec![SetElementList::Table(self.table.clone()), SetElementList::Set(map.to_owned()), SetElementList::Elements(list)];
            self.push(NfTablesMessage::NewSetElement(SetElementMessage { attributes }), NLM_F_CREATE, || {
                format!("adding elements to map {map}")
            });
        }
    }

    /// Removes elements by key.
    pub fn delete_elements(&mut self, set: &str, keys: &[Vec<u8>]) {
        for chunk in keys.chunks(ELEMENTS_PER_MESSAGE) {
            let list = chunk.iter().map(|key| ListAttribute::Element(vec![SetElementAttribute::Key(DataAttribute::Value(key.clone()))])).collect();
            let attributes = vec![SetElementList::Table(self.table.clone()), SetElementList::Set(set.to_owned()), SetElementList::Elements(list)];
            self.push(NfTablesMessage::DeleteSetElement(SetElementMessage { attributes }), 0, || format!("removing elements from set {set}"));
        }
    }
}
