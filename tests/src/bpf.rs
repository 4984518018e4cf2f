//! Which BPF programs are loaded on this kernel, read with the bpf syscall
//! (no bpftool needed): tests check that lbpath leaves nothing behind.

use std::io;

const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_PROG_GET_FD_BY_ID: libc::c_long = 13;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

fn bpf(cmd: libc::c_long, attr: &mut [u64; 16]) -> io::Result<i64> {
    // SAFETY: attr is a zero-padded bpf_attr large enough for these commands.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr) as u32,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

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
    let mut names = Vec::new();
    let mut id = 0u32;
    loop {
        let mut attr = [0u64; 16];
        attr[0] = id as u64;
        if bpf(BPF_PROG_GET_NEXT_ID, &mut attr).is_err() {
            break;
        }
        id = (attr[0] >> 32) as u32;
        let mut attr = [0u64; 16];
        attr[0] = id as u64;
        let Ok(fd) = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr) else {
            continue;
        };
        let mut info = [0u8; 256];
        let mut attr = [0u64; 16];
        attr[0] = fd as u64 | ((info.len() as u64) << 32);
        attr[1] = info.as_mut_ptr() as u64;
        if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).is_ok() {
            // struct bpf_prog_info: name[16] at 64, run_time_ns at 192, run_cnt at 200.
            let name = &info[64..80];
            let end = name.iter().position(|&b| b == 0).unwrap_or(16);
            let u64_at = |o: usize| u64::from_ne_bytes(info[o..o + 8].try_into().expect("8 bytes"));
            names.push(ProgStats {
                name: String::from_utf8_lossy(&name[..end]).into_owned(),
                run_time_ns: u64_at(192),
                run_cnt: u64_at(200),
            });
        }
        // SAFETY: we own this descriptor.
        unsafe { libc::close(fd as i32) };
    }
    names
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
