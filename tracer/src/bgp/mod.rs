//! BGP-4 (RFC 4271) messages seen on TCP port 179, reassembled from captured
//! segments, and what they say about a MetalLB speaker's sessions: did the
//! session come up, why did it go down, and was the LoadBalancer IP announced
//! to each peer (with which next hop) or withdrawn.
//!
//! Captures are lossy: the kernel keeps at most a few hundred bytes of each
//! segment, ring-buffer events can be lost, and TCP retransmits and reorders.
//! So everything here decodes what it can, skips what it cannot (counting
//! it), and never panics on any input (see `no_panic_on_any_input` below and
//! `fuzz/fuzz_targets/bgp_decode.rs`).
//!
//! Layers, bottom up, one module each:
//! - `message`, [`decode`]: one message from a byte slice;
//! - `stream`, [`Stream`]: one direction of a TCP connection to messages;
//! - `session`, [`Session`]: both directions of one 4-tuple to a state and
//!   route events;
//! - `summary`, [`Sessions`] / [`summarize`]: per peer, what happened to the
//!   LB IP.
//!
//! The modules are private: what the rest of lbpath (and the fuzz target)
//! uses is re-exported here.

mod message;
mod session;
mod stream;
mod summary;
#[cfg(test)]
mod testutil;

pub use message::{
    AFI_IPV4, AFI_IPV6, AS_TRANS, AddPathFamily, Capability, Community, DecodeError, DecodeOptions,
    HEADER_LEN, MAX_MESSAGE_LEN, MSG_KEEPALIVE, MSG_NOTIFICATION, MSG_OPEN, MSG_ROUTE_REFRESH,
    MSG_UPDATE, Message, MpReach, MpUnreach, Notification, Open, Prefix, SAFI_MULTICAST,
    SAFI_UNICAST, Update, decode, decode_with,
};
pub use session::{
    Dir, MessageCounts, NotificationEvent, RouteAction, RouteEvent, RouteStatus, Segment, Session,
    SessionKey, SessionState, TCP_ACK, TCP_FIN, TCP_RST, TCP_SYN,
};
pub use stream::{Stream, StreamStats};
pub use summary::{LbBgpSummary, MAX_SESSIONS, PeerSummary, Sessions, summarize};

/// Every layer at once, on random and mutated input (the fuzz target does
/// the same with coverage guidance).
#[cfg(test)]
mod tests {
    use super::session::idx;
    use super::testutil::*;
    use super::*;

    #[test]
    fn no_panic_on_any_input() {
        let corpus = corpus();
        let mut rng = Rng(0x1234_5678_9abc_def1);
        let opts = [
            DecodeOptions::default(),
            DecodeOptions {
                four_octet_as: Some(true),
            },
            DecodeOptions {
                four_octet_as: Some(false),
            },
        ];
        let check = |buf: &[u8], o: DecodeOptions| {
            if let Ok((m, n)) = decode_with(buf, o) {
                assert!((HEADER_LEN..=buf.len()).contains(&n));
                if let Message::Notification(n) = &m {
                    let _ = n.describe();
                }
                let _ = serde_json::to_string(&m).unwrap();
            }
        };
        for i in 0..40_000 {
            let buf = if i % 4 == 0 {
                // Random bytes, behind a valid marker half the time.
                let mut b: Vec<u8> = if i % 8 == 0 {
                    vec![0xff; 16]
                } else {
                    Vec::new()
                };
                b.extend((0..rng.below(64)).map(|_| rng.next() as u8));
                b
            } else {
                let mut m = corpus[rng.below(corpus.len())].clone();
                mutate(&mut rng, &mut m);
                m
            };
            check(&buf, opts[i % 3]);
            let n = Notification {
                code: buf.first().copied().unwrap_or(6),
                subcode: buf.get(1).copied().unwrap_or(2),
                data: buf.get(2..).unwrap_or(&[]).to_vec(),
            };
            let _ = n.describe();
        }
        // Streams and sessions on mutated message sequences and random
        // segment parameters.
        for round in 0..1_500 {
            let mut bytes = Vec::new();
            for _ in 0..1 + rng.below(6) {
                let mut m = corpus[rng.below(corpus.len())].clone();
                if rng.below(3) == 0 {
                    mutate(&mut rng, &mut m);
                }
                bytes.extend(m);
            }
            let isn = rng.next() as u32;
            let _ = feed(&mut rng, &bytes, isn, round % 2 == 0);

            let key = SessionKey {
                local: "10.0.0.5:179".parse().unwrap(),
                peer: "[2001:db8::1]:40000".parse().unwrap(),
            };
            let mut sess = Session::new(key);
            let mut off = 0;
            let mut seqs = [rng.next() as u32, rng.next() as u32];
            while off < bytes.len() {
                let n = (1 + rng.below(100)).min(bytes.len() - off);
                let dir = if rng.below(2) == 0 { Dir::Rx } else { Dir::Tx };
                let flags = if rng.below(6) == 0 {
                    rng.next() as u8
                } else {
                    TCP_ACK
                };
                let i = idx(dir);
                // Mostly in order; sometimes a random jump.
                let seq = if rng.below(10) == 0 {
                    rng.next() as u32
                } else {
                    seqs[i]
                };
                let cap = n - rng.below(n + 1) / 2;
                sess.observe(&Segment {
                    ts_ns: round,
                    dir,
                    tcp_flags: flags,
                    seq,
                    payload: &bytes[off..off + cap],
                    full_len: if rng.below(20) == 0 { usize::MAX } else { n },
                });
                seqs[i] = seqs[i].wrapping_add(n as u32);
                off += n;
            }
            sess.finish(round);
            let _ = sess.describe();
            let _ = serde_json::to_string(&sess).unwrap();
            let sum = summarize([&sess], LB);
            let _ = sum.describe();
        }
    }
}
