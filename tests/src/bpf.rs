//! Which BPF programs are loaded on this kernel (through aya; no bpftool
//! needed): tests check that lbpath leaves nothing behind, the bench reads
//! their run statistics.

use std::io;

/// A loaded program: name, and the kernel's run statistics (counted while
/// `kernel.bpf_stats_enabled` is 1).
#[derive(Debug, Clone)]
pub struct ProgStats {
    pub id: u32,
    pub name: String,
    pub run_time_ns: u64,
    pub run_cnt: u64,
}

/// Names of all loaded BPF programs.
pub fn program_names() -> Vec<String> {
    programs().into_iter().map(|p| p.name).collect()
}

/// All loaded BPF programs with their run statistics.
pub fn programs() -> Vec<ProgStats> {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|p| ProgStats {
            id: p.id(),
            name: p.name_as_str().unwrap_or("").to_string(),
            run_time_ns: p.run_time().as_nanos() as u64,
            run_cnt: p.run_count(),
        })
        .collect()
}

/// The programs process `pid` holds: through a program descriptor or a
/// link's (a link names its program; lbpath keeps only the links of its
/// netfilter programs). Read from /proc/PID/fdinfo, so it counts one
/// process's programs and not another's of the same name.
pub fn prog_ids_of(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fdinfo")) else {
        return Vec::new();
    };
    let mut ids: Vec<u32> = dir
        .filter_map(Result::ok)
        .filter_map(|e| std::fs::read_to_string(e.path()).ok())
        .filter_map(|info| prog_id_in(&info))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The `prog_id:` of one fdinfo text (program and link descriptors have one).
fn prog_id_in(fdinfo: &str) -> Option<u32> {
    fdinfo
        .lines()
        .find_map(|l| l.strip_prefix("prog_id:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The programs `ids`, each with its statistics.
pub fn programs_of(ids: &[u32]) -> Vec<ProgStats> {
    programs()
        .into_iter()
        .filter(|p| ids.contains(&p.id))
        .collect()
}

/// Run time and run count summed over the programs `ids`.
pub fn stats_of(ids: &[u32]) -> (u64, u64) {
    programs_of(ids)
        .iter()
        .fold((0, 0), |(t, c), p| (t + p.run_time_ns, c + p.run_cnt))
}

/// lbpath's programs (all named lbp_*).
pub fn lbpath_programs() -> usize {
    program_names()
        .iter()
        .filter(|n| n.starts_with("lbp_"))
        .count()
}

/// Turns the kernel's per-program run statistics on or off; returns the old value.
pub fn set_stats(on: bool) -> io::Result<bool> {
    let path = "/proc/sys/kernel/bpf_stats_enabled";
    let old = std::fs::read_to_string(path)?.trim() == "1";
    std::fs::write(path, if on { "1" } else { "0" })?;
    Ok(old)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_ids_come_from_fdinfo() {
        let link = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\nlink_type:\tnetfilter\nlink_id:\t9\nprog_tag:\t3b185187f1855c4c\nprog_id:\t42\npf:\t2\n";
        assert_eq!(prog_id_in(link), Some(42));
        assert_eq!(prog_id_in("pos:\t0\nflags:\t02\n"), None);
        // This process holds none.
        assert!(prog_ids_of(std::process::id()).is_empty());
        assert!(prog_ids_of(u32::MAX).is_empty());
    }
}
