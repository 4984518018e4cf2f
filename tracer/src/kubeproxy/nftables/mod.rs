//! `nft -j list ruleset` into services, drop/reject rules and base chains.
//!
//! kube-proxy in nftables mode keeps everything in table `ip kube-proxy`
//! (and `ip6 kube-proxy`); services are map elements, not rules:
//!
//! ```text
//! services                  ip daddr . meta l4proto . th dport vmap @service-ips
//!                           fib daddr type local … meta l4proto . th dport vmap @service-nodeports
//!   @service-ips            IP . tcp . P   : goto service-H-ns/svc/tcp/p   (ClusterIP)
//!                           LB . tcp . P   : goto external-H-ns/svc/tcp/p  (LoadBalancer, externalIP)
//!   external-…              goto service-… / local-…   (plus short-circuits)
//!   service-… / local-…     numgen random mod N vmap { 0 : goto endpoint-H-ns/svc/tcp/p__IP/PORT, … }
//!   endpoint-…              meta l4proto tcp dnat to IP:PORT
//! service-endpoints-check   … vmap @no-endpoint-services   (IP . tcp . P : goto reject-chain | drop)
//! firewall-check            … vmap @firewall-ips -> firewall-…: ip saddr != { ranges } drop
//! ```
//!
//! iptables-nft's tables (`ip filter`, `ip nat`, …) show up here too, with
//! opaque `xt` expressions: their base chains and drop/reject rules are
//! collected, but services in them are read from iptables-save instead.
//!
//! Three layers, each in its own file:
//!
//! - [`model`]: the JSON document read into chains, rules, sets and maps;
//! - [`reader`]: kube-proxy's meaning of them: services, endpoints, drop and
//!   reject rules, base chains;
//! - [`render`]: rules back into the text nft prints, as users see them.
//!
//! This file only ties them together.

mod model;
mod reader;
mod render;

use serde_json::Value;

use super::{ParseError, Ruleset};
use model::Model;

/// Parses `nft -j list ruleset` output.
pub fn parse_nft_json(json: &str) -> Result<Ruleset, ParseError> {
    let doc: Value = serde_json::from_str(json).map_err(|e| {
        let line = (e.line() > 0).then_some(e.line());
        ParseError::new(line, format!("not valid JSON: {e}"))
    })?;
    let items = doc
        .get("nftables")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            ParseError::new(
                None,
                "not `nft -j list ruleset` output: expected an object with an \"nftables\" array",
            )
        })?;
    let model = Model::read(items)?;
    Ok(reader::build(&model))
}
