//! Where to observe each netfilter hook: priorities placed between the
//! priorities of what is registered there (the kernel's built-in tables and
//! conntrack, and the node's own nftables base chains). A packet seen at
//! point i and not at point i+1 was stopped by what sits between them.

use std::fmt;

use tracer_common::{MAX_NF_POS, NF_HOOKS};

pub const HOOK_NAMES: [&str; NF_HOOKS] =
    ["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"];

pub fn hook_name(hook: u8) -> &'static str {
    HOOK_NAMES.get(hook as usize).copied().unwrap_or("?")
}

/// Something registered at a hook: a built-in table, conntrack, or an
/// nftables base chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occupant {
    pub hook: u8,
    pub priority: i32,
    /// What it is, e.g. "conntrack", "nat (DNAT)", "table ip kube-proxy chain filter-prerouting".
    pub name: String,
    /// A table/chain a user can list (for nftables and iptables chains).
    pub chain: Option<(String, String)>,
}

impl Occupant {
    pub fn builtin(hook: u8, priority: i32, name: &str) -> Self {
        Self {
            hook,
            priority,
            name: name.to_string(),
            chain: None,
        }
    }
}

/// The kernel's own registrations at their fixed priorities
/// (`enum nf_ip_hook_priorities`; IPv6 uses the same values).
pub fn builtin_occupants() -> Vec<Occupant> {
    use tracer_common::{
        NF_INET_FORWARD as FWD, NF_INET_LOCAL_IN as IN, NF_INET_LOCAL_OUT as OUT,
        NF_INET_POST_ROUTING as POST, NF_INET_PRE_ROUTING as PRE,
    };
    let mut v = Vec::new();
    let mut add = |hooks: &[u8], prio: i32, name: &str| {
        for &h in hooks {
            v.push(Occupant::builtin(h, prio, name));
        }
    };
    add(&[PRE, OUT], -400, "defragmentation");
    add(&[PRE, OUT], -300, "raw table");
    add(&[PRE, OUT], -200, "conntrack");
    add(&[PRE, IN, FWD, OUT, POST], -150, "mangle table");
    add(&[PRE, OUT], -100, "nat table (DNAT)");
    add(&[IN, FWD, OUT], 0, "filter table");
    add(&[IN, FWD, OUT], 50, "security table");
    add(&[IN, POST], 100, "nat table (SNAT)");
    add(&[IN, POST], 300, "conntrack helpers");
    add(&[IN, POST], i32::MAX, "conntrack confirm");
    v
}

/// Points per hook: `points[hook][i]` is the priority program i runs at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NfPlan {
    pub points: Vec<Vec<i32>>,
    pub occupants: Vec<Occupant>,
}

/// How much a band matters when points must be merged (more is kept).
fn weight(o: &Occupant) -> u32 {
    if o.chain.is_some() {
        3
    } else if o.name.contains("nat") || o.name.contains("filter") || o.name == "conntrack" {
        2
    } else {
        1
    }
}

impl NfPlan {
    pub fn new(mut occupants: Vec<Occupant>) -> Self {
        occupants.sort_by_key(|o| (o.hook, o.priority));
        let mut points = Vec::with_capacity(NF_HOOKS);
        for hook in 0..NF_HOOKS as u8 {
            let mut prios: Vec<i32> = occupants
                .iter()
                .filter(|o| o.hook == hook)
                .map(|o| o.priority)
                .collect();
            prios.dedup();
            let mut p = vec![i32::MIN + 1];
            for w in prios.windows(2) {
                let (a, b) = (w[0] as i64, w[1] as i64);
                if b - a >= 2 {
                    p.push(((a + b) / 2) as i32);
                }
            }
            if let Some(&last) = prios.last()
                && last < i32::MAX - 1
            {
                p.push(last + 1);
            }
            p.dedup();
            // Too many points: merge the two adjacent bands that matter least.
            while p.len() > MAX_NF_POS {
                let band_weight = |lo: i32, hi: i32| -> u32 {
                    occupants
                        .iter()
                        .filter(|o| o.hook == hook && o.priority > lo && o.priority < hi)
                        .map(weight)
                        .sum()
                };
                let mut best = (u32::MAX, 1);
                for i in 1..p.len() - 1 {
                    let w = band_weight(p[i - 1], p[i]) + band_weight(p[i], p[i + 1]);
                    if w < best.0 {
                        best = (w, i);
                    }
                }
                p.remove(best.1);
            }
            points.push(p);
        }
        Self { points, occupants }
    }

    /// Index of the last point per hook, as `Config::nf_last_pos` wants it.
    pub fn last_pos(&self) -> [u8; 8] {
        let mut out = [0xff; 8];
        for (h, p) in self.points.iter().enumerate() {
            if !p.is_empty() {
                out[h] = (p.len() - 1) as u8;
            }
        }
        out
    }

    pub fn priority(&self, hook: u8, pos: u8) -> Option<i32> {
        self.points.get(hook as usize)?.get(pos as usize).copied()
    }

    /// The priorities point `pos` of `hook` may take without changing what
    /// it observes: strictly between the occupants around it (another
    /// program, e.g. a second lbpath, may already hold the planned one).
    pub fn free_range(&self, hook: u8, pos: u8) -> (i32, i32) {
        let p = self.priority(hook, pos).unwrap_or(0);
        let around = self.occupants.iter().filter(|o| o.hook == hook);
        let lo = around
            .clone()
            .map(|o| o.priority)
            .filter(|&q| q < p)
            .max()
            .unwrap_or(i32::MIN);
        let hi = around
            .map(|o| o.priority)
            .filter(|&q| q > p)
            .min()
            .unwrap_or(i32::MAX);
        (lo.saturating_add(1), hi.saturating_sub(1))
    }

    /// What runs between point `pos` and the next point of `hook` (or the
    /// end of the hook): where a packet last seen at `pos` was stopped.
    pub fn band_after(&self, hook: u8, pos: u8) -> Band<'_> {
        let lo = self.priority(hook, pos).unwrap_or(i32::MIN);
        let hi = self
            .priority(hook, pos.saturating_add(1))
            .unwrap_or(i32::MAX);
        let hi_incl = self.priority(hook, pos.saturating_add(1)).is_none();
        let occupants = self
            .occupants
            .iter()
            .filter(|o| {
                o.hook == hook
                    && o.priority > lo
                    && (o.priority < hi || (hi_incl && o.priority == hi))
            })
            .collect();
        Band {
            hook,
            lo,
            hi,
            occupants,
        }
    }
}

/// A stretch of a hook between two observation points.
#[derive(Debug)]
pub struct Band<'a> {
    pub hook: u8,
    pub lo: i32,
    pub hi: i32,
    pub occupants: Vec<&'a Occupant>,
}

impl fmt::Display for Band<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self
            .occupants
            .iter()
            .map(|o| format!("{} (priority {})", o.name, prio_name(o.priority)))
            .collect();
        if names.is_empty() {
            write!(
                f,
                "{} between priorities {} and {}",
                hook_name(self.hook),
                prio_name(self.lo),
                prio_name(self.hi)
            )
        } else {
            write!(f, "{}: {}", hook_name(self.hook), names.join(", "))
        }
    }
}

fn prio_name(p: i32) -> String {
    match p {
        i32::MAX => "INT_MAX".into(),
        i32::MIN => "INT_MIN".into(),
        p => p.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ranges_stay_inside_the_band() {
        let plan = NfPlan::new(builtin_occupants());
        // PREROUTING: the point between conntrack (-200) and mangle (-150).
        let pos = plan.points[0].iter().position(|&p| p == -175).unwrap() as u8;
        assert_eq!(plan.free_range(0, pos), (-199, -151));
        // The first point may move up to just below the first occupant.
        assert_eq!(plan.free_range(0, 0), (i32::MIN + 1, -401));
    }
    use tracer_common::{NF_INET_FORWARD, NF_INET_POST_ROUTING, NF_INET_PRE_ROUTING};

    #[test]
    fn points_bracket_every_builtin_band() {
        let plan = NfPlan::new(builtin_occupants());
        let pre = &plan.points[NF_INET_PRE_ROUTING as usize];
        assert_eq!(pre, &vec![i32::MIN + 1, -350, -250, -175, -125, -99]);
        // A packet last seen at -125 and not at -99 was stopped by DNAT.
        let band = plan.band_after(NF_INET_PRE_ROUTING, 4);
        assert_eq!(band.occupants.len(), 1);
        assert_eq!(band.occupants[0].name, "nat table (DNAT)");
        // POSTROUTING ends just before confirm, which is the last band.
        let post = &plan.points[NF_INET_POST_ROUTING as usize];
        assert_eq!(
            *post.last().unwrap(),
            ((300i64 + i32::MAX as i64) / 2) as i32
        );
        let last = plan.band_after(NF_INET_POST_ROUTING, (post.len() - 1) as u8);
        assert_eq!(last.occupants[0].name, "conntrack confirm");
        assert_eq!(
            plan.last_pos()[NF_INET_FORWARD as usize] as usize,
            plan.points[2].len() - 1
        );
    }

    #[test]
    fn nft_chains_get_their_own_band() {
        let mut occ = builtin_occupants();
        occ.push(Occupant {
            hook: NF_INET_PRE_ROUTING,
            priority: -110,
            name: "table ip kube-proxy chain filter-prerouting".into(),
            chain: Some(("ip kube-proxy".into(), "filter-prerouting".into())),
        });
        let plan = NfPlan::new(occ);
        let pre = &plan.points[NF_INET_PRE_ROUTING as usize];
        let i = pre.iter().position(|&p| p == -130).unwrap();
        let band = plan.band_after(NF_INET_PRE_ROUTING, i as u8);
        assert_eq!(band.occupants.len(), 1);
        assert!(band.occupants[0].name.contains("filter-prerouting"));
        assert!(band.to_string().contains("PREROUTING"));
    }

    #[test]
    fn adjacent_priorities_and_too_many_chains() {
        let mut occ = Vec::new();
        for i in 0..40 {
            occ.push(Occupant::builtin(NF_INET_FORWARD, i * 3, "x"));
        }
        occ.push(Occupant::builtin(NF_INET_FORWARD, 200, "y"));
        occ.push(Occupant::builtin(NF_INET_FORWARD, 201, "z"));
        let plan = NfPlan::new(occ);
        let fwd = &plan.points[NF_INET_FORWARD as usize];
        assert!(fwd.len() <= MAX_NF_POS);
        assert!(fwd.windows(2).all(|w| w[0] < w[1]));
        // No point can sit between 200 and 201.
        assert!(!fwd.iter().any(|&p| p > 200 && p < 201));
    }
}
