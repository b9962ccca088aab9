//! Reverse lookups (`in-addr.arpa`, `ip6.arpa`) for the cluster's own
//! addresses: a Service's cluster IP names the Service, an endpoint's address
//! names the endpoint under its Service, as CoreDNS's kubernetes plugin
//! answers. Any other address is skipped, so the next handler in the chain
//! (the upstream forwarder) answers it, like the plugin's `fallthrough`.

use super::authority::{Answers, found};
use super::cluster::Cluster;
use super::zone::TTL;
use hickory_server::proto::rr::rdata::PTR;
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};
use hickory_server::zone_handler::{AuthLookup, LookupControlFlow};
use std::net::IpAddr;
use std::sync::Arc;

pub struct ReverseZone {
    cluster: Arc<Cluster>,
}

impl ReverseZone {
    pub fn new(cluster: Arc<Cluster>) -> Self {
        Self { cluster }
    }
}

/// The address a full-length reverse name stands for.
fn address_of(name: &Name) -> Option<IpAddr> {
    let net = name.parse_arpa_name().ok()?;
    (net.prefix_len() == net.max_prefix_len()).then(|| net.addr())
}

#[async_trait::async_trait]
impl Answers for ReverseZone {
    async fn answer(&self, name: &LowerName, rtype: RecordType) -> LookupControlFlow<AuthLookup> {
        if rtype != RecordType::PTR {
            return LookupControlFlow::Skip;
        }
        let name = Name::from(name.clone());
        let Some(ip) = address_of(&name) else { return LookupControlFlow::Skip };
        let targets = self.cluster.names_for(ip);
        if targets.is_empty() {
            return LookupControlFlow::Skip;
        }
        found(targets.into_iter().map(|t| Record::from_rdata(name.clone(), TTL, RData::PTR(PTR(t)))).collect(), Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_reverse_names_give_their_address_and_partial_ones_none() {
        let name = Name::from_ascii("10.0.43.10.in-addr.arpa.").unwrap();
        assert_eq!(address_of(&name), Some("10.43.0.10".parse().unwrap()));
        assert_eq!(address_of(&Name::from_ascii("43.10.in-addr.arpa.").unwrap()), None);
    }
}
