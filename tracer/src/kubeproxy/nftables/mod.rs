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

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::Value;

use super::{ParseError, Ruleset};
use model::Model;

/// Parses `nft -j list ruleset` output, one object of the "nftables" array
/// at a time (see [`model`]: the whole document as a JSON tree would take
/// many times its size).
pub fn parse_nft_json(json: &str) -> Result<Ruleset, ParseError> {
    parse_from(serde_json::Deserializer::from_str(json))
}

/// Reads `nft -j list ruleset` output from `r` as it comes (a pipe from nft),
/// so the document is never held whole; None when there is none (only
/// white space: an older nft with an empty ruleset).
pub fn read_nft_json(r: impl std::io::Read) -> Result<Option<Ruleset>, ParseError> {
    use std::io::BufRead;
    let mut r = std::io::BufReader::with_capacity(64 << 10, r);
    loop {
        let buf = r
            .fill_buf()
            .map_err(|e| ParseError::new(None, format!("reading nft's output: {e}")))?;
        if buf.is_empty() {
            return Ok(None);
        }
        match buf.iter().position(|b| !b.is_ascii_whitespace()) {
            Some(at) => {
                r.consume(at);
                break;
            }
            None => {
                let n = buf.len();
                r.consume(n);
            }
        }
    }
    parse_from(serde_json::Deserializer::from_reader(r)).map(Some)
}

fn parse_from<'de, R: serde_json::de::Read<'de>>(
    mut de: serde_json::Deserializer<R>,
) -> Result<Ruleset, ParseError> {
    let mut doc = Document {
        model: reader::model(),
        error: None,
        found: false,
    };
    let read = (&mut doc).deserialize(&mut de).and_then(|()| de.end());
    if let Some(e) = doc.error.take() {
        return Err(e);
    }
    match read {
        Err(e) if e.is_syntax() || e.is_eof() || e.is_io() => {
            let line = (e.line() > 0).then_some(e.line());
            Err(ParseError::new(line, format!("not valid JSON: {e}")))
        }
        Err(_) => Err(not_nft_output()),
        Ok(()) if !doc.found => Err(not_nft_output()),
        Ok(()) => Ok(reader::build(&doc.model)),
    }
}

fn not_nft_output() -> ParseError {
    ParseError::new(
        None,
        "not `nft -j list ruleset` output: expected an object with an \"nftables\" array",
    )
}

/// The top-level object: its "nftables" array goes into the model.
struct Document {
    model: Model,
    /// Why an object of the array was refused (the parse stops there).
    error: Option<ParseError>,
    found: bool,
}

impl<'de> DeserializeSeed<'de> for &mut Document {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for &mut Document {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object with an \"nftables\" array")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            if key == "nftables" && !self.found {
                self.found = true;
                map.next_value_seed(Items(&mut *self))?;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(())
    }
}

/// The "nftables" array, item by item.
struct Items<'a>(&'a mut Document);

impl<'de> DeserializeSeed<'de> for Items<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Items<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("the \"nftables\" array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut i = 0;
        // Each object as a small tree, taken into the model and dropped.
        while let Some(item) = seq.next_element::<Value>()? {
            if let Err(e) = self.0.model.add(i, &item) {
                let msg = e.to_string();
                self.0.error = Some(e);
                return Err(de::Error::custom(msg));
            }
            i += 1;
        }
        Ok(())
    }
}
