//! The pod network's packet filtering and NAT, in nf_tables over netlink:
//!
//! - `table ip rk-podnet`, rk's own: a postrouting NAT chain masquerading what
//!   the node's pods send outside the cluster (not to other pods, not to
//!   Service IPs, not to multicast), so the world answers the node.
//! - two accept rules at the head of Docker's `DOCKER-USER` chain (`table ip
//!   filter`), for traffic from and to the cluster CIDR. Docker sets the policy
//!   of `filter FORWARD` to DROP; nf_tables runs every table's base chains, so
//!   an accept in rk's own table could not overrule that drop — only a rule in
//!   Docker's chain can, and `DOCKER-USER` is the chain Docker keeps for rules
//!   of others (it never flushes it, and jumps to it first). Without Docker's
//!   table there is nothing to open, and nothing is done.
//!
//! Every rule carries a comment naming what it is for; [`ensure`] compares the
//! comments with what it would install and rewrites only what differs, so it
//! can run periodically (after a restart of Docker or a flushed ruleset).

use super::model::{daddr, prefix, saddr};
use super::netlink::{Error, Nfnetlink};
use super::nft::{self, Action, BaseHook, Batch, Expr, Hook4};
use ipnet::Ipv4Net;
use netlink_packet_netfilter::nftables::{NfTablesMessage, Operator, RuleAttribute, RuleMessage};

/// rk's table for the pod network.
pub const TABLE: &str = "rk-podnet";
const POSTROUTING: &str = "postrouting";
/// Docker's table and the chain it leaves to others.
const DOCKER_TABLE: &str = "filter";
const DOCKER_USER: &str = "DOCKER-USER";
/// The prefix of every comment rk puts into chains it does not own.
const OURS: &str = "rk pod network";
/// `srcnat` priority.
const SRCNAT: i32 = 100;

/// The ranges the rules are made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ranges {
    /// This node's pods.
    pub pod_cidr: Ipv4Net,
    /// Every node's pods.
    pub cluster_cidr: Ipv4Net,
    pub service_cidr: Ipv4Net,
}

/// What [`ensure`] found missing and installed.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Installed {
    pub masquerade: bool,
    pub docker_user: bool,
    /// Whether Docker's `filter` table with `DOCKER-USER` exists.
    pub docker_present: bool,
}

fn multicast() -> Ipv4Net {
    Ipv4Net::new(std::net::Ipv4Addr::new(224, 0, 0, 0), 4).expect("valid prefix")
}

fn masquerade_comment(r: &Ranges) -> String {
    format!("rk: masquerade {} leaving {} and {}", r.pod_cidr, r.cluster_cidr, r.service_cidr)
}

/// `ip saddr <pod cidr> ip daddr != <cluster> ip daddr != <services> ip daddr != 224.0.0.0/4 masquerade`.
fn masquerade_rule(r: &Ranges) -> Vec<Expr> {
    let mut out = prefix(saddr(), r.pod_cidr, Operator::Equal);
    for excluded in [r.cluster_cidr, r.service_cidr, multicast()] {
        out.extend(prefix(daddr(), excluded, Operator::NotEqual));
    }
    out.push(nft::masquerade_fully_random());
    out
}

/// The `DOCKER-USER` rules, in chain order, with their comments.
fn docker_user_rules(cluster: Ipv4Net) -> [(String, Vec<Expr>); 2] {
    let accept = |load: Expr| {
        let mut out = prefix(load, cluster, Operator::Equal);
        out.push(nft::verdict(Action::Accept, None));
        out
    };
    [(format!("{OURS}: from {cluster}"), accept(saddr())), (format!("{OURS}: to {cluster}"), accept(daddr()))]
}

/// The comment in a rule's user data (the `nft` TLV of type 0), if any.
fn comment_of(userdata: &[u8]) -> Option<String> {
    let mut rest = userdata;
    while let [kind, len, tail @ ..] = rest {
        let (value, next) = tail.split_at_checked(*len as usize)?;
        if *kind == 0 {
            return Some(String::from_utf8_lossy(value).trim_end_matches('\0').to_owned());
        }
        rest = next;
    }
    None
}

/// The rules of a chain in order, as (handle, comment); `None` when the table
/// or chain does not exist.
fn commented_rules(netlink: &mut Nfnetlink, table: &str, chain: &str) -> Result<Option<Vec<(u64, String)>>, Error> {
    let request = RuleMessage { attributes: vec![RuleAttribute::Table(table.to_owned()), RuleAttribute::Chain(chain.to_owned())] };
    let rules = match netlink.dump(NfTablesMessage::GetRule(request)) {
        Err(e) if e.errno() == Some(libc::ENOENT) => return Ok(None),
        other => other?,
    };
    let mut out = Vec::new();
    for message in rules {
        let NfTablesMessage::NewRule(rule) = message else { continue };
        let in_table = rule.attributes.iter().any(|a| matches!(a, RuleAttribute::Table(t) if t == table));
        let in_chain = rule.attributes.iter().any(|a| matches!(a, RuleAttribute::Chain(c) if c == chain));
        if !in_table || !in_chain {
            continue;
        }
        let handle = rule.attributes.iter().find_map(|a| if let RuleAttribute::Handle(h) = a { Some(*h) } else { None });
        let comment = rule.attributes.iter().find_map(|a| if let RuleAttribute::UserData(d) = a { comment_of(d) } else { None });
        out.extend(handle.map(|h| (h, comment.unwrap_or_default())));
    }
    Ok(Some(out))
}

/// Makes the rules what `ranges` asks for; returns what had to be installed.
pub fn ensure(netlink: &mut Nfnetlink, ranges: &Ranges) -> Result<Installed, Error> {
    let mut installed = Installed::default();
    let wanted = masquerade_comment(ranges);
    let current = commented_rules(netlink, TABLE, POSTROUTING)?;
    if current.as_deref().map(|rules| rules.iter().map(|(_, c)| c.as_str()).collect::<Vec<_>>()) != Some(vec![wanted.as_str()]) {
        let mut batch = Batch::new(TABLE);
        batch.add_table();
        batch.add_chain(POSTROUTING, Some(BaseHook { kind: "nat", hook: Hook4::Postrouting, priority: SRCNAT }));
        batch.flush_chain(POSTROUTING);
        batch.insert_rule(POSTROUTING, masquerade_rule(ranges), &wanted);
        netlink.apply(batch.ops())?;
        installed.masquerade = true;
    }

    // A rule dump of a missing table or chain is empty rather than refused.
    if !super::proxier::list_chains(netlink, DOCKER_TABLE)?.contains(DOCKER_USER) {
        return Ok(installed);
    }
    let Some(current) = commented_rules(netlink, DOCKER_TABLE, DOCKER_USER)? else { return Ok(installed) };
    installed.docker_present = true;
    let rules = docker_user_rules(ranges.cluster_cidr);
    let head: Vec<&str> = current.iter().take(rules.len()).map(|(_, c)| c.as_str()).collect();
    let ours = current.iter().filter(|(_, c)| c.starts_with(OURS)).count();
    if head == rules.iter().map(|(c, _)| c.as_str()).collect::<Vec<_>>() && ours == rules.len() {
        return Ok(installed);
    }
    let mut batch = Batch::new(DOCKER_TABLE);
    for (handle, _) in current.iter().filter(|(_, c)| c.starts_with(OURS)) {
        batch.delete_rule(DOCKER_USER, *handle);
    }
    // Each insert goes to the head: the last one inserted comes first.
    for (comment, expressions) in rules.into_iter().rev() {
        batch.insert_rule(DOCKER_USER, expressions, &comment);
    }
    netlink.apply(batch.ops())?;
    installed.docker_user = true;
    Ok(installed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_round_trip_through_user_data() {
        assert_eq!(comment_of(&nft::rule_comment("rk pod network: from 10.42.0.0/16")).as_deref(), Some("rk pod network: from 10.42.0.0/16"));
        // Another TLV first, then the comment.
        let mut data = vec![7, 2, 1, 2];
        data.extend(nft::rule_comment("x"));
        assert_eq!(comment_of(&data).as_deref(), Some("x"));
        assert_eq!(comment_of(&[0, 9, b'a']), None, "a truncated TLV is no comment");
    }

    #[test]
    fn the_masquerade_comment_changes_with_the_ranges() {
        let ranges = Ranges {
            pod_cidr: "10.42.1.0/24".parse().unwrap(),
            cluster_cidr: "10.42.0.0/16".parse().unwrap(),
            service_cidr: "10.43.0.0/16".parse().unwrap(),
        };
        let moved = Ranges { pod_cidr: "10.42.2.0/24".parse().unwrap(), ..ranges };
        assert_ne!(masquerade_comment(&ranges), masquerade_comment(&moved));
        let [from, to] = docker_user_rules(ranges.cluster_cidr);
        assert!(from.0.starts_with(OURS) && to.0.starts_with(OURS));
    }
}
