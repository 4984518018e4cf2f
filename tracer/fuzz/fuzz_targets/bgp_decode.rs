//! Arbitrary bytes through every layer of `lbpath::bgp`: `decode` on the raw
//! input, then the input cut into TCP segments for a `Stream` and a
//! `Session`, with the segment parameters (direction, flags, sequence jumps,
//! truncation) taken from the input itself so the fuzzer steers them too.
//!
//! Run in tracer/fuzz: `cargo +nightly fuzz run bgp_decode`.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use lbpath::bgp::{self, DecodeOptions, Dir, Segment, Session, SessionKey, Stream, TCP_ACK};
use libfuzzer_sys::fuzz_target;

struct Seg<'a> {
    dir: Dir,
    flags: u8,
    payload: &'a [u8],
    /// Bytes missing from the end of the capture.
    cut: usize,
    /// Moves the sequence number: retransmission, reordering, jumps.
    tweak: i8,
}

/// Each segment is a 4-byte control block [dir+flags, length, cut, tweak]
/// followed by up to 255 payload bytes.
fn segments(mut data: &[u8]) -> Vec<Seg<'_>> {
    let mut out = Vec::new();
    while let [ctl, len, cut, tweak, tail @ ..] = data {
        let n = usize::from(*len).min(tail.len());
        out.push(Seg {
            dir: if ctl & 1 == 0 { Dir::Rx } else { Dir::Tx },
            // Mostly plain ACKs; sometimes any flag combination.
            flags: if ctl & 0x80 != 0 { ctl >> 1 } else { TCP_ACK },
            payload: &tail[..n],
            cut: usize::from(*cut) % (n + 1),
            tweak: *tweak as i8,
        });
        data = &tail[n..];
    }
    out
}

fuzz_target!(|data: &[u8]| {
    for four_octet_as in [None, Some(true), Some(false)] {
        if let Ok((msg, n)) = bgp::decode_with(data, DecodeOptions { four_octet_as }) {
            assert!(n >= bgp::HEADER_LEN && n <= data.len());
            if let bgp::Message::Notification(n) = &msg {
                let _ = n.describe();
            }
        }
    }

    // The whole input as one stream, in order, in small pieces.
    let mut stream = Stream::new();
    for (i, chunk) in data.chunks(37).enumerate() {
        stream.push(1000 + (i * 37) as u32, chunk, chunk.len());
        let _ = stream.messages();
    }
    let _ = stream.flush();

    // Segments as the input describes them, through a stream and a session.
    let key = SessionKey {
        local: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)), 179),
        peer: SocketAddr::new(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)), 40000),
    };
    let mut session = Session::new(key);
    // Starts just below the sequence wrap.
    let mut stream = Stream::starting_at(u32::MAX - 64);
    let mut seq = [7u32, u32::MAX - 64];
    for (ts, s) in segments(data).into_iter().enumerate() {
        let i = usize::from(s.dir == Dir::Tx);
        let at = seq[i].wrapping_add_signed(i32::from(s.tweak));
        let captured = &s.payload[..s.payload.len() - s.cut];
        session.observe(&Segment {
            ts_ns: ts as u64,
            dir: s.dir,
            tcp_flags: s.flags,
            seq: at,
            payload: captured,
            full_len: s.payload.len(),
        });
        if s.dir == Dir::Tx {
            stream.push(at, captured, s.payload.len());
            let _ = stream.messages();
        }
        seq[i] = seq[i].wrapping_add(s.payload.len() as u32);
    }
    let _ = stream.flush();
    session.finish(u64::MAX);
    let _ = session.describe();
    let lb = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 240));
    let _ = bgp::summarize([&session], lb).describe();
});
