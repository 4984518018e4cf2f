//! Groups live events by connection (a flow tuple and the kernel's
//! connection id, so a tuple reused by a later connection is a new flow) and
//! decides when a connection has been seen enough to be reported: soon after
//! it is answered or dropped, or once it goes quiet. Later drops of a
//! reported connection come back as updates of it, not as new flows.
//! Bounded: a flood of flows or events is cut and counted, never unbounded.

use std::{collections::VecDeque, rc::Rc};

use tracer_common::{DIR_REPLY, DIR_REQUEST, EV_POD_NS, EV_UNTRACED, Event, Kind, Tuple};

use crate::drops::DropNames;

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// Quiet time after an answer or a drop before reporting.
    pub settle_ns: u64,
    /// Quiet time after which a flow is reported whatever it looks like.
    pub idle_ns: u64,
    /// A flow is reported at the latest this long after its first event.
    pub max_age_ns: u64,
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            settle_ns: 300_000_000,
            idle_ns: 1_500_000_000,
            max_age_ns: 6_000_000_000,
        }
    }
}

struct Pending {
    update: bool,
    events: Vec<Event>,
    first: u64,
    last: u64,
    concluded: bool,
    /// Events left out by the per-flow bound.
    cut: u64,
}

/// One connection of a flow tuple ([`Event::conn`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub flow: Tuple,
    pub conn: u64,
}

impl FlowKey {
    pub fn of(e: &Event) -> Self {
        Self {
            flow: e.flow,
            conn: e.conn,
        }
    }
}

/// A flow ready to report: its events, and how many the bounds left out.
pub struct Done {
    pub events: Vec<Event>,
    pub cut: u64,
    /// Later events of a connection already reported (drops past its trace
    /// budget): an update of that flow, not a new one.
    pub update: bool,
    /// Reported before it settled, to stay within the bounds.
    pub early: bool,
}

/// Flows pending at once; more report the oldest early.
pub const MAX_FLOWS: usize = 4096;

pub struct Assembler {
    timing: Timing,
    pending: foldhash::HashMap<FlowKey, Pending>,
    /// Pending flows in the order they began (with their first event's
    /// time), so the oldest is found without a scan when the bounds are
    /// reached; entries of flows reported since, or begun again, are skipped
    /// there, and compacted away.
    order: VecDeque<(FlowKey, u64)>,
    /// Connections already reported, oldest first (bounded).
    done: VecDeque<FlowKey>,
    done_set: foldhash::HashSet<FlowKey>,
    max_flows: usize,
    max_events: usize,
    /// Events held in all pending flows at most (memory stays bounded
    /// whatever the flow rate).
    max_total: usize,
    total: usize,
    /// Events dropped by these bounds.
    pub dropped_events: u64,
    node_netns: u32,
    drops: Rc<DropNames>,
}

impl Assembler {
    pub fn new(timing: Timing, node_netns: u32, drops: Rc<DropNames>) -> Self {
        Self {
            timing,
            pending: foldhash::HashMap::default(),
            order: VecDeque::new(),
            done: VecDeque::new(),
            done_set: foldhash::HashSet::default(),
            max_flows: MAX_FLOWS,
            // A traced packet yields up to ~70 events (12 netfilter points
            // on each of 5 hooks, plus devices), and 4 are traced per
            // direction by default: 256 cut healthy flows on busy rulesets.
            max_events: 1024,
            max_total: 32_768,
            total: 0,
            dropped_events: 0,
            node_netns,
            drops,
        }
    }

    /// True when this event settles the flow's fate: the answer left the node,
    /// or a packet was dropped or refused.
    fn concludes(&self, e: &Event) -> bool {
        let in_node = e.flags & EV_POD_NS == 0 && (e.netns == 0 || e.netns == self.node_netns);
        match Kind::from_u8(e.kind) {
            Some(Kind::Xmit) => e.dir == DIR_REPLY && in_node,
            // In the pod, only a refusal settles it (other drops there may be
            // the endpoint's housekeeping).
            Some(Kind::Drop) => in_node || self.drops.reason(e) == "NO_SOCKET",
            Some(Kind::Reset) => true,
            _ => false,
        }
    }

    /// Adds an event (`now` and event times are CLOCK_MONOTONIC ns). Returns
    /// flows that had to be reported early to stay within bounds.
    pub fn push(&mut self, e: Event) -> Vec<Done> {
        let key = FlowKey::of(&e);
        let mut out = Vec::new();
        let reported = self.done_set.contains(&key);
        if reported && e.flags & EV_UNTRACED == 0 {
            // Stragglers of a reported connection (its last ACKs): only
            // drops past the trace budget, which may tell something new,
            // make an update.
            return out;
        }
        let full = (!self.pending.contains_key(&key) && self.pending.len() >= self.max_flows)
            || self.total >= self.max_total;
        if full {
            // Report the oldest early rather than grow without bound.
            while let Some((oldest, first)) = self.order.pop_front() {
                if self.pending.get(&oldest).is_none_or(|p| p.first != first) {
                    continue;
                }
                if let Some(mut d) = self.finish(&oldest) {
                    d.early = true;
                    out.push(d);
                    break;
                }
            }
        }
        let concludes = self.concludes(&e);
        let p = match self.pending.entry(key) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                self.order.push_back((key, e.ts));
                v.insert(Pending {
                    // A connection begins with a traced request: the kernel
                    // traces replies, and reports drops past the budget,
                    // only of connections whose requests it traced. Begun
                    // otherwise, it was reported and forgotten here (a late
                    // straggler, more flows than `done` holds ago) or its
                    // request's events were lost: not a new flow.
                    update: reported || e.dir != DIR_REQUEST || e.flags & EV_UNTRACED != 0,
                    // A traced packet makes a dozen events or more: fewer
                    // regrowths.
                    events: Vec::with_capacity(16),
                    first: e.ts,
                    last: e.ts,
                    concluded: false,
                    cut: 0,
                })
            }
        };
        if p.events.len() >= self.max_events {
            self.dropped_events += 1;
            p.cut += 1;
            return out;
        }
        p.last = p.last.max(e.ts);
        p.concluded |= concludes;
        p.events.push(e);
        self.total += 1;
        out
    }

    fn finish(&mut self, key: &FlowKey) -> Option<Done> {
        let p = self.pending.remove(key)?;
        if self.order.len() > 2 * self.pending.len() + 64 {
            let pending = &self.pending;
            self.order
                .retain(|(k, first)| pending.get(k).is_some_and(|p| p.first == *first));
        }
        self.total -= p.events.len();
        if self.done_set.insert(*key) {
            self.done.push_back(*key);
            if self.done.len() > 16384
                && let Some(old) = self.done.pop_front()
            {
                self.done_set.remove(&old);
            }
        }
        Some(Done {
            events: p.events,
            cut: p.cut,
            update: p.update,
            early: false,
        })
    }

    /// Flows ready to be reported at time `now`.
    pub fn ready(&mut self, now: u64) -> Vec<Done> {
        let t = self.timing;
        let keys: Vec<FlowKey> = self
            .pending
            .iter()
            .filter(|(_, p)| {
                let quiet = now.saturating_sub(p.last);
                (p.concluded && quiet >= t.settle_ns)
                    || quiet >= t.idle_ns
                    || now.saturating_sub(p.first) >= t.max_age_ns
            })
            .map(|(k, _)| *k)
            .collect();
        let mut out: Vec<Done> = keys.iter().filter_map(|k| self.finish(k)).collect();
        out.sort_by_key(|d| d.events.iter().map(|e| e.ts).min().unwrap_or(0));
        out
    }

    /// Everything still pending (on exit).
    pub fn drain(&mut self) -> Vec<Done> {
        self.ready(u64::MAX)
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// CLOCK_MONOTONIC now, the clock of bpf_ktime_get_ns.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracer_common::{Fib, NO_HOOK};

    fn ev(kind: Kind, dir: u8, ts: u64, sport: u16) -> Event {
        let flow = Tuple {
            sport,
            family: 2,
            ..Tuple::default()
        };
        Event {
            kind: kind as u8,
            dir,
            hook: NO_HOOK,
            pos: 0,
            tcp_flags: 0,
            ct: 0,
            seq: 1,
            netns: 7,
            ifindex: 1,
            ts,
            skb: 1,
            flow,
            pkt: flow,
            len: 0,
            mtu: 0,
            reason: 12,
            ct_status: 0,
            location: 0,
            ifname: [0; 16],
            ct_reply: Tuple::default(),
            in_ifindex: 0,
            out_ifindex: 0,
            fib: Fib::default(),
            mac_src: [0; 6],
            flags: 0,
            _pad: 0,
            conn: 1,
        }
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn answered_flow_reported_after_settling() {
        let mut a = Assembler::new(Timing::default(), 7, Rc::new(DropNames::new(None)));
        a.push(ev(Kind::Arrive, 0, 10 * MS, 1));
        a.push(ev(Kind::Xmit, 1, 11 * MS, 1));
        assert!(a.ready(100 * MS).is_empty());
        let r = a.ready(400 * MS);
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].events.len(), 2);
        // Stragglers of a reported flow are ignored, untraced drops are not.
        a.push(ev(Kind::Arrive, 0, 500 * MS, 1));
        a.push(ev(Kind::Drop, 0, 501 * MS, 1));
        assert_eq!(a.pending(), 0);
        let mut d = ev(Kind::Drop, 0, 502 * MS, 1);
        d.flags = EV_UNTRACED;
        a.push(d);
        assert_eq!(a.pending(), 1);
        let u = a.ready(900 * MS);
        assert!(
            u.len() == 1 && u[0].update,
            "an update of the flow reported"
        );
        // Forgotten (more connections reported since than `done` holds),
        // its late reply is still no new flow.
        for c in 10..10 + 16_400 {
            let mut e = ev(Kind::Arrive, 0, 1_000 * MS, 2);
            e.conn = c;
            a.push(e);
            a.ready(3_000 * MS);
        }
        a.push(ev(Kind::Arrive, 1, 1_000 * MS, 1));
        let u = a.ready(3_000 * MS);
        assert!(u.len() == 1 && u[0].update, "a late reply is an update");
        // The same tuple, a later connection: a new flow, not a straggler.
        let mut e = ev(Kind::Arrive, 0, 1_000 * MS, 1);
        e.conn = 2;
        a.push(e);
        assert_eq!(a.pending(), 1);
        let r = a.ready(3_000 * MS);
        assert!(r.len() == 1 && !r[0].update);
    }

    #[test]
    fn silent_flow_reported_when_idle_or_old() {
        let mut a = Assembler::new(Timing::default(), 7, Rc::new(DropNames::new(None)));
        a.push(ev(Kind::Arrive, 0, 0, 2));
        assert!(a.ready(1_000 * MS).is_empty());
        assert_eq!(a.ready(1_600 * MS).len(), 1);
        // A flow that keeps talking is cut at max_age.
        for i in 0..70 {
            a.push(ev(Kind::Arrive, 0, i * 100 * MS, 3));
        }
        assert_eq!(a.ready(6_900 * MS).len(), 1);
    }

    #[test]
    fn bounded() {
        let mut a = Assembler::new(Timing::default(), 7, Rc::new(DropNames::new(None)));
        a.max_flows = 2;
        a.max_events = 3;
        for i in 0..5 {
            a.push(ev(Kind::Arrive, 0, i, 9));
        }
        assert_eq!(a.dropped_events, 2);
        a.push(ev(Kind::Arrive, 0, 10, 10));
        let early = a.push(ev(Kind::Arrive, 0, 11, 11));
        assert_eq!(early.len(), 1);
        // The flow reported early says how many of its events were cut.
        assert_eq!((early[0].events.len(), early[0].cut), (3, 2));
        assert_eq!(a.pending(), 2);
        // The bound on all pending events reports the oldest flow early.
        let mut a = Assembler::new(Timing::default(), 7, Rc::new(DropNames::new(None)));
        a.max_total = 4;
        for port in 0..4 {
            a.push(ev(Kind::Arrive, 0, port as u64, port));
        }
        let early = a.push(ev(Kind::Arrive, 0, 9, 9));
        assert_eq!(early.len(), 1);
        assert_eq!(early[0].events[0].flow.sport, 0);
        assert_eq!(a.total, 4);
    }

    /// A flow reported and begun again (an update) is younger than the
    /// flows that began in between: they are reported early first.
    #[test]
    fn bounded_reports_the_oldest_flow_not_the_oldest_key() {
        let mut a = Assembler::new(Timing::default(), 7, Rc::new(DropNames::new(None)));
        a.max_flows = 2;
        a.push(ev(Kind::Arrive, 0, 0, 1));
        assert_eq!(a.ready(2_000 * MS).len(), 1);
        a.push(ev(Kind::Arrive, 0, 2_100 * MS, 2));
        let mut again = ev(Kind::Drop, 0, 2_200 * MS, 1);
        again.flags |= EV_UNTRACED;
        a.push(again);
        let early = a.push(ev(Kind::Arrive, 0, 2_300 * MS, 3));
        assert_eq!(early.len(), 1);
        assert_eq!(early[0].events[0].flow.sport, 2);
        assert_eq!(a.pending(), 2);
    }
}
