//! Which BPF programs are loaded on this kernel (through aya; no bpftool
//! needed): tests check that lbpath leaves nothing behind, the bench reads
//! their run statistics.

use std::io;

/// A loaded program: name, and the kernel's run statistics (counted while
/// `kernel.bpf_stats_enabled` is 1).
#[derive(Debug, Clone)]
pub struct ProgStats {
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
            name: p.name_as_str().unwrap_or("").to_string(),
            run_time_ns: p.run_time().as_nanos() as u64,
            run_cnt: p.run_count(),
        })
        .collect()
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
