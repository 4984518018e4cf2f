//! The stream layer: one direction of a TCP connection, reassembled from
//! captured segments (retransmitted, reordered, truncated or lost) into BGP
//! messages.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Buf, BytesMut};
use serde::Serialize;

use super::message::{
    DecodeOptions, HEADER_LEN, MARKER, MAX_MESSAGE_LEN, MSG_KEEPALIVE, MSG_NOTIFICATION, MSG_OPEN,
    MSG_ROUTE_REFRESH, MSG_UPDATE, Message, decode_with,
};

/// Segments further ahead than this are not reordering: events were lost in
/// bulk or the connection was replaced. The stream restarts there.
const MAX_AHEAD: i64 = 1 << 20;
/// Out-of-order segments held while waiting for a gap to fill. Past this the
/// gap is taken as lost (e.g. a ring-buffer overflow dropped it).
const MAX_PENDING: usize = 16;
/// No real segment is larger (64 KiB GSO, 512 KiB BIG TCP); bounds arithmetic.
const MAX_SEGMENT: usize = 1 << 24;

/// Reassembles one direction of a TCP connection into BGP messages.
///
/// Positions are kept as u64 offsets from the first sequence number, so
/// 32-bit sequence wrap is handled once, where a segment's `seq` is turned
/// into an offset relative to the in-order end.
#[derive(Debug, Default)]
pub struct Stream {
    /// Sequence number of offset 0; set by the first data segment.
    base: Option<u32>,
    /// End of the in-order byte range (captured or not).
    end: u64,
    /// Next byte to parse; may pass `end` when a message known to be
    /// damaged is skipped before all of it has arrived.
    head: u64,
    /// `head` is at a message boundary.
    synced: bool,
    /// Captured bytes in [head, end) as maximal contiguous runs; what lies
    /// between runs was not captured.
    runs: VecDeque<Run>,
    /// Segments beyond `end`, by offset, waiting for the gap before them.
    pending: BTreeMap<u64, Pending>,
    /// Decoded before a restart, not yet handed out.
    ready: Vec<Message>,
    opts: DecodeOptions,
    stats: StreamStats,
}

#[derive(Debug)]
struct Run {
    off: u64,
    /// `BytesMut` so that dropping parsed bytes from the front (`trim`) is
    /// O(1); the space is reclaimed when the run grows again.
    data: BytesMut,
}

impl Run {
    fn end(&self) -> u64 {
        self.off + self.data.len() as u64
    }
}

#[derive(Debug)]
struct Pending {
    data: Vec<u8>,
    full: usize,
}

/// What a stream could and could not use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StreamStats {
    pub segments: u64,
    /// Segments that brought no new bytes.
    pub retransmitted: u64,
    pub out_of_order: u64,
    /// Payload bytes that were not captured (truncated or lost segments).
    pub bytes_not_captured: u64,
    pub messages: u64,
    /// Messages skipped because part of them was not captured.
    pub skipped: u64,
    pub malformed: u64,
    /// Times framing was lost and the next marker searched for.
    pub resyncs: u64,
    /// Times the stream started over at a far-away sequence number.
    pub restarts: u64,
}

enum Read<'a> {
    Bytes(&'a [u8]),
    /// Part of the range was not captured.
    Gap,
    /// Not all of the range has arrived yet.
    NotYet,
}

enum Find {
    Found(usize),
    /// A marker starts here but its header is cut off by the end of the data.
    Partial(usize),
    /// Nothing; a marker may still start at this index (trailing 0xff bytes).
    Nothing(usize),
}

impl Stream {
    /// A stream that learns its sequence numbers from the first data and
    /// searches for the first marker (the capture may start mid-message).
    pub fn new() -> Self {
        Self::default()
    }

    /// A stream whose first payload byte has sequence number `seq` (the
    /// ISN + 1 of a SYN), so it starts at a message boundary.
    pub fn starting_at(seq: u32) -> Self {
        Stream {
            base: Some(seq),
            synced: true,
            ..Self::default()
        }
    }

    pub fn set_options(&mut self, opts: DecodeOptions) {
        self.opts = opts;
    }

    pub fn stats(&self) -> StreamStats {
        self.stats
    }

    /// Adds one segment: `payload` holds its captured bytes, `full_len` its
    /// real payload length (larger when the capture was truncated; a smaller
    /// one is taken as `payload.len()`). Segments may repeat or come out of
    /// order; bytes already seen are ignored.
    pub fn push(&mut self, seq: u32, payload: &[u8], full_len: usize) {
        let full = full_len.max(payload.len()).min(MAX_SEGMENT);
        let payload = &payload[..payload.len().min(full)];
        if full == 0 {
            return;
        }
        self.stats.segments += 1;
        let base = *self.base.get_or_insert(seq);
        // Truncation to u32 is the point: sequence space is mod 2^32.
        let end_seq = base.wrapping_add(self.end as u32);
        let delta = i64::from(seq.wrapping_sub(end_seq) as i32);
        if delta > MAX_AHEAD {
            self.restart(seq);
            self.append(0, payload, full);
            return;
        }
        let start = self.end as i64 + delta;
        if delta > 0 {
            self.hold(start as u64, payload, full);
            return;
        }
        if start + full as i64 <= self.end as i64 {
            self.stats.retransmitted += 1;
            return;
        }
        self.append(start, payload, full);
        self.drain_pending();
    }

    /// Complete messages decoded so far, in order.
    pub fn messages(&mut self) -> Vec<Message> {
        let mut out = std::mem::take(&mut self.ready);
        loop {
            if !self.synced && !self.resync() {
                break;
            }
            let len = match self.read(self.head, HEADER_LEN) {
                Read::NotYet => break,
                Read::Gap => {
                    self.lose_sync();
                    continue;
                }
                Read::Bytes(h) => {
                    let len = usize::from(u16::from_be_bytes([h[16], h[17]]));
                    if h[..16] != MARKER || len < HEADER_LEN {
                        self.lose_sync();
                        continue;
                    }
                    len
                }
            };
            match self.read(self.head, len) {
                Read::NotYet => break,
                Read::Gap => {
                    // The header is trustworthy, so the next message starts
                    // right after this one even though this one is lost.
                    self.stats.skipped += 1;
                }
                Read::Bytes(m) => match decode_with(m, self.opts) {
                    Ok((msg, _)) => {
                        self.stats.messages += 1;
                        out.push(msg);
                    }
                    Err(_) => self.stats.malformed += 1,
                },
            }
            self.head += len as u64;
        }
        self.trim();
        out
    }

    /// Takes every gap still waiting for a segment as lost, then decodes what
    /// that frees up: for the end of a capture.
    pub fn flush(&mut self) -> Vec<Message> {
        while !self.pending.is_empty() {
            self.give_up_gap();
        }
        self.messages()
    }

    fn restart(&mut self, seq: u32) {
        let ready = self.flush();
        *self = Stream {
            base: Some(seq),
            ready,
            opts: self.opts,
            stats: self.stats,
            ..Stream::default()
        };
        self.stats.restarts += 1;
    }

    /// Appends a segment starting at `start` (at or before `end`, possibly
    /// before offset 0) and reaching past `end`.
    fn append(&mut self, start: i64, data: &[u8], full: usize) {
        let seg_end = start + full as i64;
        let known_end = start + data.len() as i64;
        // Bytes below `end` are already there; below `head` no longer wanted.
        let from = self.end.max(self.head) as i64;
        if known_end > from {
            let bytes = &data[(from - start) as usize..];
            let from = from as u64;
            match self.runs.back_mut() {
                Some(r) if r.end() == from => r.data.extend_from_slice(bytes),
                _ => self.runs.push_back(Run {
                    off: from,
                    data: BytesMut::from(bytes),
                }),
            }
        }
        let gap_from = known_end.max(self.end as i64);
        if seg_end > gap_from {
            self.stats.bytes_not_captured += (seg_end - gap_from) as u64;
        }
        self.end = seg_end as u64;
    }

    /// Keeps a segment that starts beyond `end` until the gap before it
    /// fills or is given up.
    fn hold(&mut self, start: u64, payload: &[u8], full: usize) {
        self.stats.out_of_order += 1;
        let e = self.pending.entry(start).or_insert(Pending {
            data: Vec::new(),
            full: 0,
        });
        // The same segment again: keep whichever copy has more.
        if full > e.full || payload.len() > e.data.len() {
            *e = Pending {
                data: payload.to_vec(),
                full,
            };
        }
        while self.pending.len() > MAX_PENDING {
            self.give_up_gap();
        }
    }

    fn drain_pending(&mut self) {
        while let Some(e) = self.pending.first_entry() {
            if *e.key() > self.end {
                break;
            }
            let (off, p) = e.remove_entry();
            if off + p.full as u64 <= self.end {
                self.stats.retransmitted += 1;
                continue;
            }
            self.append(off as i64, &p.data, p.full);
        }
    }

    /// The bytes up to the first pending segment will not come: count them
    /// as not captured and carry on after them.
    fn give_up_gap(&mut self) {
        if let Some((&off, _)) = self.pending.first_key_value() {
            if off > self.end {
                self.stats.bytes_not_captured += off - self.end;
                self.end = off;
            }
            self.drain_pending();
        }
    }

    fn lose_sync(&mut self) {
        self.synced = false;
        self.head += 1;
        self.stats.resyncs += 1;
    }

    fn read(&self, off: u64, len: usize) -> Read<'_> {
        if off >= self.end {
            return Read::NotYet;
        }
        let want_end = off + len as u64;
        let Some(run) = self.runs.iter().find(|r| r.off <= off && off < r.end()) else {
            return Read::Gap;
        };
        // Runs are maximal, so whatever follows one inside `end` is a gap.
        if run.end() < want_end.min(self.end) {
            return Read::Gap;
        }
        if want_end > self.end {
            return Read::NotYet;
        }
        let lo = (off - run.off) as usize;
        Read::Bytes(&run.data[lo..lo + len])
    }

    /// Moves `head` to the next plausible header; true if found.
    fn resync(&mut self) -> bool {
        for run in &self.runs {
            if run.end() <= self.head {
                continue;
            }
            let start = self.head.max(run.off);
            let s = &run.data[(start - run.off) as usize..];
            // Only the last run can still grow; a gap cuts the others off.
            let open_ended = run.end() == self.end;
            match find_header(s) {
                Find::Found(p) => {
                    self.head = start + p as u64;
                    self.synced = true;
                    return true;
                }
                Find::Partial(p) | Find::Nothing(p) if open_ended => {
                    self.head = start + p as u64;
                    return false;
                }
                _ => {}
            }
        }
        self.head = self.head.max(self.end);
        false
    }

    /// Drops bytes before `head`.
    fn trim(&mut self) {
        while let Some(r) = self.runs.front_mut() {
            if r.end() <= self.head {
                self.runs.pop_front();
            } else {
                if r.off < self.head {
                    r.data.advance((self.head - r.off) as usize);
                    r.off = self.head;
                }
                break;
            }
        }
    }
}

fn find_header(s: &[u8]) -> Find {
    let mut ones = 0;
    for (j, &b) in s.iter().enumerate() {
        if b != 0xff {
            ones = 0;
            continue;
        }
        ones += 1;
        if ones >= 16 {
            let p = j + 1 - 16;
            match s.get(p..p + HEADER_LEN) {
                None => return Find::Partial(p),
                Some(h) if plausible(h) => return Find::Found(p),
                Some(_) => {}
            }
        }
    }
    Find::Nothing(s.len() - ones)
}

/// A header worth resynchronising on: marker, a type this decoder knows and
/// a length that type can have.
fn plausible(h: &[u8]) -> bool {
    let len = usize::from(u16::from_be_bytes([h[16], h[17]]));
    let fits = match h[18] {
        MSG_OPEN => len >= 29,
        MSG_UPDATE => len >= 23,
        MSG_NOTIFICATION => len >= 21,
        MSG_KEEPALIVE => len == 19,
        MSG_ROUTE_REFRESH => len == 23,
        _ => false,
    };
    h[..16] == MARKER && fits && len <= MAX_MESSAGE_LEN
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bgp::testutil::*;

    fn names(ms: &[Message]) -> Vec<&'static str> {
        ms.iter().map(Message::name).collect()
    }

    #[test]
    fn stream_several_messages_per_segment_and_split_messages() {
        let bytes = cat(&[open_4octet(), keepalive(), update_v4()]);
        let mut s = Stream::starting_at(100);
        // OPEN + half the KEEPALIVE, then the rest + most of the UPDATE, then its tail.
        let cut1 = open_4octet().len() + 7;
        let cut2 = bytes.len() - 3;
        s.push(100, &bytes[..cut1], cut1);
        assert_eq!(names(&s.messages()), ["OPEN"]);
        s.push(100 + cut1 as u32, &bytes[cut1..cut2], cut2 - cut1);
        assert_eq!(names(&s.messages()), ["KEEPALIVE"]);
        s.push(100 + cut2 as u32, &bytes[cut2..], bytes.len() - cut2);
        let m = s.messages();
        assert_eq!(m, [one(&update_v4())]);
        assert_eq!(s.stats().messages, 3);
    }

    #[test]
    fn stream_retransmission_and_reordering() {
        let bytes = cat(&[keepalive(), update_v4(), keepalive()]);
        let (a, b) = bytes.split_at(30);
        let (b, c) = b.split_at(40);
        let mut s = Stream::starting_at(7);
        s.push(7, a, a.len());
        s.push(7, a, a.len()); // retransmitted
        // c before b.
        s.push(7 + 70, c, c.len());
        assert_eq!(names(&s.messages()), ["KEEPALIVE"]);
        s.push(7 + 30, b, b.len());
        assert_eq!(names(&s.messages()), ["UPDATE", "KEEPALIVE"]);
        // A retransmission overlapping old and new bytes adds only the new.
        let more = keepalive();
        let mut overlap = bytes[bytes.len() - 5..].to_vec();
        overlap.extend(&more);
        s.push(7 + bytes.len() as u32 - 5, &overlap, overlap.len());
        assert_eq!(names(&s.messages()), ["KEEPALIVE"]);
        let st = s.stats();
        assert_eq!((st.retransmitted, st.out_of_order, st.messages), (1, 1, 4));
    }

    #[test]
    fn stream_sequence_wrap() {
        let bytes = cat(&[update_v4(), keepalive()]);
        let isn = u32::MAX - 20;
        let mut s = Stream::starting_at(isn);
        s.push(isn, &bytes[..30], 30);
        s.push(isn.wrapping_add(30), &bytes[30..], bytes.len() - 30);
        assert_eq!(names(&s.messages()), ["UPDATE", "KEEPALIVE"]);
        // Learned from the first segment too.
        let mut s = Stream::new();
        s.push(u32::MAX - 2, &bytes[..10], 10);
        s.push(7, &bytes[10..], bytes.len() - 10);
        assert_eq!(names(&s.messages()), ["UPDATE", "KEEPALIVE"]);
    }

    #[test]
    fn truncated_capture_skips_by_length() {
        // One segment with a KEEPALIVE, an UPDATE and a KEEPALIVE, of which
        // 45 bytes were captured: the UPDATE is lost, but its header says
        // where the last KEEPALIVE starts, so framing holds across the gap
        // and the last KEEPALIVE decodes from the next segment.
        let seg1 = cat(&[keepalive(), update_v4()]);
        let seg2 = cat(&[keepalive(), withdraw_v4()]);
        let mut s = Stream::starting_at(0);
        s.push(0, &seg1[..45], seg1.len());
        assert_eq!(s.messages(), [Message::Keepalive]);
        s.push(seg1.len() as u32, &seg2, seg2.len());
        assert_eq!(s.messages(), [Message::Keepalive, one(&withdraw_v4())]);
        let st = s.stats();
        assert_eq!((st.skipped, st.resyncs), (1, 0));
        assert_eq!(st.bytes_not_captured, (seg1.len() - 45) as u64);
    }

    #[test]
    fn truncated_capture_resynchronises_on_marker() {
        // A message whose header falls into the uncaptured tail: framing is
        // lost until the next marker, which here starts mid-segment because
        // the next segment starts with the end of a long message.
        let big = msg(MSG_UPDATE, &[0; 60]);
        let seg1 = cat(&[keepalive(), big.clone()]);
        let cap = 19 + 10; // KEEPALIVE + 10 bytes of big's header
        let seg2 = cat(&[vec![0xaa; 5], update_v4()]);
        let mut s = Stream::starting_at(1);
        // seg1 truncated, and a lost segment (never seen) before seg2.
        s.push(1, &seg1[..cap], seg1.len());
        s.push(1 + seg1.len() as u32 + 100, &seg2, seg2.len());
        assert_eq!(names(&s.messages()), ["KEEPALIVE"]);
        let m = s.flush();
        assert_eq!(m, [one(&update_v4())]);
        assert!(s.stats().resyncs >= 1);
    }

    #[test]
    fn stream_starting_mid_message() {
        let bytes = cat(&[update_v4(), keepalive(), shutdown()]);
        let mut s = Stream::new();
        // Capture starts 12 bytes into the UPDATE.
        s.push(5000, &bytes[12..40], 28);
        s.push(5028, &bytes[40..], bytes.len() - 40);
        assert_eq!(names(&s.messages()), ["KEEPALIVE", "NOTIFICATION"]);
    }

    #[test]
    fn lost_segment_is_given_up_after_a_window() {
        let mut s = Stream::starting_at(0);
        let ka = keepalive();
        // Segment 0 never arrives; the next ones do.
        for i in 1..=(MAX_PENDING as u32 + 1) {
            s.push(i * 19, &ka, 19);
        }
        assert_eq!(s.messages().len(), MAX_PENDING + 1);
        assert_eq!(s.stats().bytes_not_captured, 19);
    }

    #[test]
    fn far_jump_restarts_the_stream() {
        let mut s = Stream::starting_at(0);
        s.push(0, &keepalive(), 19);
        s.push(3_000_000, &keepalive(), 19);
        assert_eq!(s.messages().len(), 2);
        assert_eq!(s.stats().restarts, 1);
    }

    #[test]
    fn reassembly_property() {
        let corpus = corpus();
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        for round in 0..600 {
            let picks: Vec<&Vec<u8>> = (0..1 + rng.below(8))
                .map(|_| &corpus[rng.below(corpus.len())])
                .collect();
            let bytes: Vec<u8> = picks.iter().flat_map(|m| m.iter().copied()).collect();
            let want: Vec<Message> = picks.iter().map(|m| one(m)).collect();
            // Near the wrap every other round.
            let isn = if round % 2 == 0 {
                u32::MAX - rng.below(300) as u32
            } else {
                rng.next() as u32
            };
            let (got, st) = feed(&mut rng, &bytes, isn, false);
            assert_eq!(got, want, "round {round}");
            assert_eq!(st.bytes_not_captured, 0);
            // Truncated: whatever is decoded is genuine and in order.
            let (got, _) = feed(&mut rng, &bytes, isn, true);
            let mut rest = want.iter();
            for m in &got {
                assert!(rest.any(|w| w == m), "round {round}: {m:?} not in order");
            }
        }
    }
}
