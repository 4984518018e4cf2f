//! The node's conntrack figures: how full the table is, and the statistics
//! that count what conntrack itself dropped (a full table, insert failures).
//! They name drops at the conntrack and confirm points, which no rule made.

/// Table use and dropping counters, summed over CPUs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CtFigures {
    pub count: u64,
    pub max: u64,
    /// Entries that could not be inserted at confirm: a clash with an
    /// existing one (racing packets, SNAT without a free port).
    pub insert_failed: u64,
    /// Packets conntrack dropped: for a full table, or a clash it could
    /// not resolve.
    pub drop: u64,
    /// Entries evicted early to make room.
    pub early_drop: u64,
}

impl CtFigures {
    /// This namespace's figures; None without conntrack.
    pub fn read() -> Option<Self> {
        let num = |p: &str| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
        let count = num("/proc/sys/net/netfilter/nf_conntrack_count")?;
        let max = num("/proc/sys/net/netfilter/nf_conntrack_max").unwrap_or(0);
        let (insert_failed, drop, early_drop) =
            std::fs::read_to_string("/proc/net/stat/nf_conntrack")
                .ok()
                .and_then(|t| parse_stat(&t))
                .unwrap_or_default();
        Some(Self {
            count,
            max,
            insert_failed,
            drop,
            early_drop,
        })
    }

    /// The counters since `base` (table use as it is now).
    pub fn since(&self, base: &Self) -> Self {
        Self {
            insert_failed: self.insert_failed.saturating_sub(base.insert_failed),
            drop: self.drop.saturating_sub(base.drop),
            early_drop: self.early_drop.saturating_sub(base.early_drop),
            ..*self
        }
    }

    /// Full, or as good as (entries come and go between the drop and this
    /// read). The drop counter cannot tell: a clash at confirm counts there too.
    pub fn full(&self) -> bool {
        self.max > 0 && self.count * 100 >= self.max * 95
    }
}

/// Sums of insert_failed, drop and early_drop over the CPU rows of
/// /proc/net/stat/nf_conntrack (a header row of names, hex values).
pub fn parse_stat(text: &str) -> Option<(u64, u64, u64)> {
    let mut lines = text.lines();
    let names: Vec<&str> = lines.next()?.split_whitespace().collect();
    let col = |n: &str| names.iter().position(|x| *x == n);
    let (i, d, e) = (col("insert_failed")?, col("drop")?, col("early_drop")?);
    let mut sum = (0u64, 0u64, 0u64);
    for l in lines {
        let v: Vec<u64> = l
            .split_whitespace()
            .map(|x| u64::from_str_radix(x, 16).unwrap_or(0))
            .collect();
        let at = |k: usize| v.get(k).copied().unwrap_or(0);
        sum.0 += at(i);
        sum.1 += at(d);
        sum.2 += at(e);
    }
    Some(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_rows_are_summed_by_column_name() {
        let t = "entries  clashres found new invalid ignore delete chainlength insert insert_failed drop early_drop icmp_error  expect_new expect_create expect_delete search_restart\n\
                 00000010  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000003 0000000a 00000001 00000000  00000000 00000000 00000000 00000000\n\
                 00000010  00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000000 00000002 00000000 00000000 00000000  00000000 00000000 00000000 00000000\n";
        assert_eq!(parse_stat(t), Some((5, 10, 1)));
        assert_eq!(parse_stat("entries found\n1 2\n"), None);
    }

    #[test]
    fn counters_since_a_baseline() {
        let base = CtFigures {
            count: 5,
            max: 100,
            insert_failed: 7,
            drop: 0,
            early_drop: 0,
        };
        let now = CtFigures {
            count: 100,
            insert_failed: 9,
            ..base
        };
        let d = now.since(&base);
        assert_eq!((d.count, d.insert_failed), (100, 2));
        assert!(d.full());
        assert!(!CtFigures { count: 94, ..d }.full());
    }
}
