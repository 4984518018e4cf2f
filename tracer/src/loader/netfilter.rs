//! BPF netfilter programs and links (kernel 6.4+), done by hand because aya
//! has no netfilter program type. Delete this module the day aya gains one.
//!
//! The programs sit in the object's "classifier/lbp_nf_*" sections, so aya
//! parses and relocates the object as usual and creates every map. Here we
//! parse the same object again with aya-obj, point its map relocations at the
//! maps aya created (so both sides share them), load each program as
//! BPF_PROG_TYPE_NETFILTER, and attach it with BPF_LINK_CREATE at a hook and
//! priority. Links are file descriptors: a killed process leaves nothing.

use std::{
    collections::HashMap,
    ffi::CString,
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

use anyhow::{Context, Result, anyhow, bail};
use aya::{Ebpf, maps::Map};
use aya_obj::{Object, generated::bpf_insn};

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_NETFILTER: u32 = 32;
const BPF_NETFILTER: u32 = 45;
pub const NFPROTO_IPV4: u32 = 2;
pub const NFPROTO_IPV6: u32 = 10;

/// `union bpf_attr` as used by BPF_PROG_LOAD (the fields up to `fd_array`).
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
    attach_prog_fd: u32,
    core_relo_cnt: u32,
    fd_array: u64,
}

/// `union bpf_attr` as used by BPF_LINK_CREATE for netfilter.
#[repr(C)]
#[derive(Default)]
struct NfLinkAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    pf: u32,
    hooknum: u32,
    priority: i32,
    nf_flags: u32,
}

fn sys_bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: attr is a valid, fully initialised bpf_attr prefix of the given size.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_uint,
        )
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new file descriptor we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

/// The map's file descriptor, whatever its kind.
fn map_fd(map: &Map) -> BorrowedFd<'_> {
    let data = match map {
        Map::Array(m)
        | Map::ArrayOfMaps(m)
        | Map::BloomFilter(m)
        | Map::CgroupArray(m)
        | Map::CgroupStorage(m)
        | Map::CgrpStorage(m)
        | Map::CpuMap(m)
        | Map::DevMap(m)
        | Map::DevMapHash(m)
        | Map::HashMap(m)
        | Map::HashOfMaps(m)
        | Map::InodeStorage(m)
        | Map::LpmTrie(m)
        | Map::LruHashMap(m)
        | Map::PerCpuArray(m)
        | Map::PerCpuCgroupStorage(m)
        | Map::PerCpuHashMap(m)
        | Map::PerCpuLruHashMap(m)
        | Map::PerfEventArray(m)
        | Map::ProgramArray(m)
        | Map::Queue(m)
        | Map::ReusePortSockArray(m)
        | Map::RingBuf(m)
        | Map::SockHash(m)
        | Map::SockMap(m)
        | Map::SkStorage(m)
        | Map::Stack(m)
        | Map::StackTraceMap(m)
        | Map::Unsupported(m)
        | Map::XskMap(m) => m,
    };
    data.fd().as_fd()
}

/// Loaded netfilter programs, by name.
pub struct NfPrograms {
    progs: HashMap<String, OwnedFd>,
}

impl NfPrograms {
    pub fn new(progs: HashMap<String, OwnedFd>) -> Self {
        Self { progs }
    }
}

/// The object parsed again, its map references pointing at the maps `ebpf`
/// created: each program can then be loaded on its own (and several at
/// once, from several threads).
pub struct NfObject {
    obj: Object,
    license: CString,
}

/// Relocates the object against the maps `ebpf` already created.
pub fn prepare(bytes: &[u8], ebpf: &Ebpf) -> Result<NfObject> {
    let mut obj = Object::parse(bytes).context("parsing the eBPF object")?;
    let defs: HashMap<String, aya_obj::Map> = obj.maps.drain().collect();
    let mut maps = Vec::new();
    for (name, map) in ebpf.maps() {
        let def = defs
            .get(name)
            .ok_or_else(|| anyhow!("map {name} missing from the object"))?;
        maps.push((name, map_fd(map).as_raw_fd(), def));
    }
    let text_sections = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_maps(maps.into_iter(), &text_sections)
        .map_err(|e| anyhow!("relocating maps: {e}"))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| anyhow!("relocating calls: {e}"))?;
    Ok(NfObject {
        obj,
        license: CString::new("GPL").expect("no NUL"),
    })
}

impl NfObject {
    /// Loads program `name` as a netfilter program (the verifier runs here).
    pub fn load(&self, name: &str) -> Result<OwnedFd> {
        let prog = self
            .obj
            .programs
            .get(name)
            .ok_or_else(|| anyhow!("no program {name} in the object"))?;
        let func = &self.obj.functions[&prog.function_key()];
        load_one(name, &func.instructions, &self.license)
    }
}

fn load_one(name: &str, insns: &[bpf_insn], license: &CString) -> Result<OwnedFd> {
    let mut attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_NETFILTER,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        expected_attach_type: BPF_NETFILTER,
        ..Default::default()
    };
    let short = name.as_bytes();
    let n = short.len().min(15);
    attr.prog_name[..n].copy_from_slice(&short[..n]);
    match sys_bpf(BPF_PROG_LOAD, &mut attr) {
        Ok(fd) => Ok(fd),
        Err(first) => {
            // Load again with the verifier log, to say why.
            let mut log = vec![0u8; 1 << 20];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            let _ = sys_bpf(BPF_PROG_LOAD, &mut attr);
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0');
            let tail: Vec<&str> = text.lines().rev().take(12).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            bail!(
                "loading netfilter program {name}: {first}{}{}",
                if tail.is_empty() { "" } else { "\nverifier: " },
                tail.join("\n  ")
            )
        }
    }
}

impl NfPrograms {
    /// Attaches program `name` at netfilter hook `hooknum` of family `pf`
    /// (NFPROTO_*) at `priority`, in the caller's network namespace.
    pub fn attach(&self, name: &str, pf: u32, hooknum: u32, priority: i32) -> Result<OwnedFd> {
        let prog = self
            .progs
            .get(name)
            .ok_or_else(|| anyhow!("no netfilter program {name}"))?;
        let mut attr = NfLinkAttr {
            prog_fd: prog.as_raw_fd() as u32,
            attach_type: BPF_NETFILTER,
            pf,
            hooknum,
            priority,
            ..Default::default()
        };
        sys_bpf(BPF_LINK_CREATE, &mut attr).with_context(|| {
            format!(
                "attaching {name} to netfilter hook {hooknum} (family {pf}) at priority {priority}"
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attr_layouts_match_the_kernel_abi() {
        // Offsets from include/uapi/linux/bpf.h.
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, fd_array), 120);
        assert_eq!(std::mem::offset_of!(NfLinkAttr, pf), 16);
        assert_eq!(std::mem::offset_of!(NfLinkAttr, priority), 24);
    }
}
