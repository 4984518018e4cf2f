//! The running kernel's struct layout and enum names, from its BTF.
//!
//! Rust eBPF objects carry no CO-RE relocations, so the programs never hold a
//! kernel offset of their own: userspace resolves every field they read here,
//! on the machine it runs on, and hands the result over as `Config::layout`.
//! Enum values (drop reasons) differ between kernels too and are named here.

use std::{
    cell::RefCell,
    collections::HashMap,
    fmt,
    fs::File,
    io::Write,
    os::fd::{AsRawFd, FromRawFd},
    path::{Path, PathBuf},
};

use btf_rs::{Backend, Btf, BtfType, Type};
use tracer_common::Layout;

pub const VMLINUX: &str = "/sys/kernel/btf/vmlinux";

/// The kernel BTF file: `LBPATH_BTF` when set (a kernel whose BTF ships as
/// a separate file, e.g. from BTFHub), else the kernel's own.
pub fn vmlinux_path() -> std::path::PathBuf {
    std::env::var_os("LBPATH_BTF")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| VMLINUX.into())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BtfError {
    /// No BTF file at all (kernel built without CONFIG_DEBUG_INFO_BTF).
    Missing(String),
    /// The file is there but does not parse.
    Unreadable(String),
    /// A type or field lbpath needs is not in this kernel.
    NoField {
        ty: String,
        field: String,
    },
    NoType(String),
}

impl fmt::Display for BtfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing(p) => write!(
                f,
                "no kernel BTF at {p}: lbpath needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (5.x distributions have it)"
            ),
            Self::Unreadable(e) => write!(f, "cannot read the kernel's BTF: {e}"),
            Self::NoField { ty, field } => write!(
                f,
                "this kernel's BTF has no field {ty}.{field}: kernel too old or unsupported"
            ),
            Self::NoType(ty) => {
                write!(
                    f,
                    "this kernel's BTF has no type {ty}: kernel too old or unsupported"
                )
            }
        }
    }
}

impl std::error::Error for BtfError {}

pub struct KernelBtf {
    btf: Btf,
    /// Structs looked up by name so far: each lookup scans every type name
    /// (the mapped backend keeps no index), and a layout asks for the same
    /// few structs over and over.
    structs: RefCell<HashMap<String, Option<Type>>>,
}

impl KernelBtf {
    /// The running kernel's BTF.
    pub fn open_vmlinux() -> Result<Self, BtfError> {
        let from_env = std::env::var_os("LBPATH_BTF").is_some();
        Self::open(&vmlinux_path()).map_err(|e| match e {
            // Name the variable: the user pointed it somewhere wrong.
            BtfError::Missing(p) if from_env => BtfError::Missing(format!("{p} (LBPATH_BTF)")),
            BtfError::Unreadable(why) if from_env => BtfError::Unreadable(format!(
                "LBPATH_BTF={} is not a BTF file: {why}",
                vmlinux_path().display()
            )),
            e => e,
        })
    }

    /// Reads the file in place (mapped), rather than parsing every type and
    /// string into memory: lbpath looks up a few dozen types of the
    /// kernel's 100,000 or so, and the parsed copy took a fifth of a second
    /// and tens of MiB. Recent kernels let sysfs map their BTF; on older
    /// ones it is copied into a memfd, which maps.
    pub fn open(path: &Path) -> Result<Self, BtfError> {
        if !path.exists() {
            return Err(BtfError::Missing(path.display().to_string()));
        }
        let unreadable = |e: &dyn std::fmt::Display| BtfError::Unreadable(e.to_string());
        let btf = match Btf::from_file_with_backend(path, Backend::Mmap) {
            Ok(b) => b,
            Err(direct) => {
                let copy = MemCopy::of(path).map_err(|e| unreadable(&e))?;
                Btf::from_file_with_backend(copy.path(), Backend::Mmap)
                    .map_err(|e| unreadable(&format!("{e} (mapped directly: {direct})")))?
            }
        };
        Ok(Self::new(btf))
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BtfError> {
        let btf = Btf::from_bytes(bytes).map_err(|e| BtfError::Unreadable(e.to_string()))?;
        Ok(Self::new(btf))
    }

    fn new(btf: Btf) -> Self {
        Self {
            btf,
            structs: RefCell::default(),
        }
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn strip(&self, mut t: Type) -> Result<Type, BtfError> {
        loop {
            t = match &t {
                Type::Typedef(x) => self.chained(x)?,
                Type::Const(x) => self.chained(x)?,
                Type::Volatile(x) => self.chained(x)?,
                Type::Restrict(x) => self.chained(x)?,
                Type::TypeTag(x) => self.chained(x)?,
                _ => return Ok(t),
            };
        }
    }

    fn chained(&self, t: &dyn BtfType) -> Result<Type, BtfError> {
        self.btf
            .resolve_chained_type(t)
            .map_err(|e| BtfError::Unreadable(e.to_string()))
    }

    fn struct_named(&self, name: &str) -> Result<Type, BtfError> {
        if let Some(found) = self.structs.borrow().get(name) {
            return found
                .clone()
                .ok_or_else(|| BtfError::NoType(name.to_string()));
        }
        // Skip forward declarations: take the definition that has members.
        let found = self.btf.resolve_types_by_name(name).ok().and_then(|types| {
            types
                .into_iter()
                .find(|t| matches!(t, Type::Struct(s) | Type::Union(s) if !s.members.is_empty()))
        });
        self.structs
            .borrow_mut()
            .insert(name.to_string(), found.clone());
        found.ok_or_else(|| BtfError::NoType(name.to_string()))
    }

    fn size_of(&self, t: &Type) -> Result<u32, BtfError> {
        Ok(match self.strip(t.clone())? {
            Type::Struct(s) | Type::Union(s) => s.size() as u32,
            Type::Int(i) => i.size() as u32,
            Type::Enum(e) => e.size() as u32,
            Type::Enum64(e) => e.size() as u32,
            Type::Ptr(_) => 8,
            Type::Array(a) => {
                let elem = self.chained(&a)?;
                self.size_of(&elem)? * a.len() as u32
            }
            other => {
                return Err(BtfError::Unreadable(format!(
                    "cannot size BTF type {}",
                    other.name()
                )));
            }
        })
    }

    /// Byte offset of `field` inside aggregate `t`, looking through anonymous
    /// structs and unions. Returns the offset and the field's type.
    fn find_member(&self, t: &Type, field: &str) -> Result<Option<(u32, Type)>, BtfError> {
        let s = match self.strip(t.clone())? {
            Type::Struct(s) | Type::Union(s) => s,
            _ => return Ok(None),
        };
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            if m.bitfield_size().is_some_and(|b| b != 0) {
                if name == field {
                    return Err(BtfError::Unreadable(format!(
                        "field {field} is a bitfield; lbpath cannot read it"
                    )));
                }
                continue;
            }
            let off = m.bit_offset() / 8;
            let mt = self.chained(m)?;
            if name == field {
                return Ok(Some((off, mt)));
            }
            if name.is_empty()
                && let Some((inner, it)) = self.find_member(&mt, field)?
            {
                return Ok(Some((off + inner, it)));
            }
        }
        Ok(None)
    }

    /// Offset of a member path such as `tuplehash[1].tuple` or `ns.inum` in
    /// struct `ty`.
    pub fn offset(&self, ty: &str, path: &str) -> Result<u32, BtfError> {
        let mut cur = self.struct_named(ty)?;
        let mut total = 0u32;
        let no_field = || BtfError::NoField {
            ty: ty.to_string(),
            field: path.to_string(),
        };
        for part in path.split('.') {
            let (name, index) = match part.split_once('[') {
                Some((n, rest)) => {
                    let idx: u32 = rest.trim_end_matches(']').parse().map_err(|_| no_field())?;
                    (n, Some(idx))
                }
                None => (part, None),
            };
            let (off, mt) = self.find_member(&cur, name)?.ok_or_else(no_field)?;
            total += off;
            cur = self.strip(mt)?;
            if let Some(idx) = index {
                let Type::Array(a) = &cur else {
                    return Err(no_field());
                };
                if idx as usize >= a.len() {
                    return Err(no_field());
                }
                let elem = self.strip(self.chained(a)?)?;
                total += idx * self.size_of(&elem)?;
                cur = elem;
            }
        }
        Ok(total)
    }

    /// Values of an enum by name, e.g. `skb_drop_reason`.
    pub fn enum_values(&self, name: &str) -> Result<HashMap<u64, String>, BtfError> {
        let types = self
            .btf
            .resolve_types_by_name(name)
            .map_err(|_| BtfError::NoType(name.to_string()))?;
        for t in types {
            match t {
                Type::Enum(e) => {
                    return Ok(e
                        .members
                        .iter()
                        .map(|m| (m.val() as u64, self.btf.resolve_name(m).unwrap_or_default()))
                        .collect());
                }
                Type::Enum64(e) => {
                    return Ok(e
                        .members
                        .iter()
                        .map(|m| (m.val(), self.btf.resolve_name(m).unwrap_or_default()))
                        .collect());
                }
                _ => {}
            }
        }
        Err(BtfError::NoType(name.to_string()))
    }

    /// How many arguments tracepoint `name` hands to BPF programs, from its
    /// `btf_trace_<name>` typedef (a pointer to a function whose first
    /// parameter is the probe's private data, not an argument). None when
    /// the kernel has no such tracepoint.
    pub fn tracepoint_args(&self, name: &str) -> Option<usize> {
        let types = self
            .btf
            .resolve_types_by_name(&format!("btf_trace_{name}"))
            .ok()?;
        types.into_iter().find_map(|t| {
            let Type::Typedef(td) = t else {
                return None;
            };
            let Type::Ptr(ptr) = self.chained(&td).ok()? else {
                return None;
            };
            match self.chained(&ptr).ok()? {
                Type::FuncProto(f) => Some(f.parameters.len().saturating_sub(1)),
                _ => None,
            }
        })
    }

    /// Whether the kernel defines struct or union `name` (with members).
    pub fn has_struct(&self, name: &str) -> bool {
        self.struct_named(name).is_ok()
    }

    /// Whether enum `name` has a member called `member`.
    pub fn has_enum_member(&self, name: &str, member: &str) -> bool {
        self.enum_values(name)
            .is_ok_and(|v| v.values().any(|m| m == member))
    }

    /// Everything the eBPF programs read, for this kernel.
    pub fn layout(&self) -> Result<Layout, BtfError> {
        let o = |t: &str, f: &str| self.offset(t, f);
        let tuple = |f: &str| self.offset("nf_conntrack_tuple", f);
        let net_ns = o("net", "ns")?;
        Ok(Layout {
            skb_head: o("sk_buff", "head")?,
            skb_data: o("sk_buff", "data")?,
            skb_len: o("sk_buff", "len")?,
            skb_network_header: o("sk_buff", "network_header")?,
            skb_transport_header: o("sk_buff", "transport_header")?,
            skb_mac_header: o("sk_buff", "mac_header")?,
            skb_dev: o("sk_buff", "dev")?,
            skb_nfct: o("sk_buff", "_nfct")?,
            skb_protocol: o("sk_buff", "protocol")?,
            dev_ifindex: o("net_device", "ifindex")?,
            dev_name: o("net_device", "name")?,
            dev_nd_net: o("net_device", "nd_net.net")?,
            dev_mtu: o("net_device", "mtu")?,
            net_inum: net_ns + self.offset("ns_common", "inum")?,
            ct_tuple_orig: o("nf_conn", "tuplehash[0].tuple")?,
            ct_tuple_reply: o("nf_conn", "tuplehash[1].tuple")?,
            ct_status: o("nf_conn", "status")?,
            tuple_src_u3: tuple("src.u3")?,
            tuple_src_u: tuple("src.u")?,
            tuple_dst_u3: tuple("dst.u3")?,
            tuple_dst_u: tuple("dst.u")?,
            tuple_dst_protonum: tuple("dst.protonum")?,
            state_hook: o("nf_hook_state", "hook")?,
            state_in: o("nf_hook_state", "in")?,
            state_out: o("nf_hook_state", "out")?,
            fl4_oif: o("flowi4", "__fl_common.flowic_oif")?,
            fl4_iif: o("flowi4", "__fl_common.flowic_iif")?,
            fl4_saddr: o("flowi4", "saddr")?,
            fl4_daddr: o("flowi4", "daddr")?,
            fl4_proto: o("flowi4", "__fl_common.flowic_proto")?,
            nhc_dev: o("fib_nh_common", "nhc_dev")?,
            nhc_gw: o("fib_nh_common", "nhc_gw")?,
            nhc_gw_family: o("fib_nh_common", "nhc_gw_family")?,
            skb_data_len: o("sk_buff", "data_len")?,
        })
    }
}

/// A file's bytes in an anonymous memory file (memfd), for a file that
/// cannot be mapped itself. Closed on drop; a mapping made through
/// [`MemCopy::path`] stays valid after.
struct MemCopy(File);

impl MemCopy {
    fn of(path: &Path) -> std::io::Result<Self> {
        let bytes = std::fs::read(path)?;
        // SAFETY: a NUL-terminated name; the descriptor is checked.
        let fd = unsafe { libc::memfd_create(c"lbpath-btf".as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new descriptor we own.
        let mut f = unsafe { File::from_raw_fd(fd) };
        f.write_all(&bytes)?;
        Ok(Self(f))
    }

    fn path(&self) -> PathBuf {
        format!("/proc/self/fd/{}", self.0.as_raw_fd()).into()
    }
}

/// What lbpath needs to know about the running kernel, read from its BTF in
/// one go, so the parsed BTF can be dropped before the loader parses it
/// again for aya (which needs its own): the two never sit in memory together.
#[derive(Debug, Clone)]
pub struct KernelFacts {
    pub layout: Layout,
    /// Arguments each tracepoint lbpath may attach to passes (absent: no
    /// such tracepoint).
    pub tracepoint_args: HashMap<String, usize>,
    /// BPF netfilter links (6.4+): `struct bpf_nf_ctx`.
    pub netfilter_links: bool,
    /// tcx links (6.6+).
    pub tcx: bool,
    /// `enum skb_drop_reason` names (empty before 5.17).
    pub drop_reasons: EnumNames,
}

impl KernelFacts {
    pub fn read(btf: &KernelBtf, tracepoints: &[&str]) -> Result<Self, BtfError> {
        Ok(Self {
            layout: btf.layout()?,
            tracepoint_args: tracepoints
                .iter()
                .filter_map(|t| Some((t.to_string(), btf.tracepoint_args(t)?)))
                .collect(),
            netfilter_links: btf.has_struct("bpf_nf_ctx"),
            tcx: btf.has_enum_member("bpf_attach_type", "BPF_TCX_INGRESS"),
            drop_reasons: EnumNames::from_btf(btf, "skb_drop_reason", "SKB_DROP_REASON_"),
        })
    }
}

/// Kernel enum values to short names: `SKB_DROP_REASON_IP_RPFILTER` → `IP_RPFILTER`.
#[derive(Debug, Clone, Default)]
pub struct EnumNames {
    names: HashMap<u64, String>,
}

impl EnumNames {
    pub fn from_btf(btf: &KernelBtf, enum_name: &str, prefix: &str) -> Self {
        let names = btf
            .enum_values(enum_name)
            .unwrap_or_default()
            .into_iter()
            .map(|(v, n)| (v, n.strip_prefix(prefix).unwrap_or(&n).to_string()))
            .collect();
        Self { names }
    }

    pub fn from_pairs(pairs: &[(u64, &str)]) -> Self {
        Self {
            names: pairs.iter().map(|(v, n)| (*v, n.to_string())).collect(),
        }
    }

    pub fn name(&self, v: u64) -> String {
        self.names
            .get(&v)
            .cloned()
            .unwrap_or_else(|| format!("reason {v}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny hand-built BTF blob: `struct outer { int a; union { int b; struct
    /// inner in; }; struct inner arr[2]; }` with `struct inner { int x; int y; }`
    /// and `enum color { RED = 1, BLUE = 7 }`.
    fn blob() -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut s = |name: &str| -> u32 {
            let off = strings.len() as u32;
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
            off
        };
        let (n_int, n_inner, n_x, n_y, n_outer, n_a, n_b, n_in, n_arr, n_color, n_red, n_blue) = (
            s("int"),
            s("inner"),
            s("x"),
            s("y"),
            s("outer"),
            s("a"),
            s("b"),
            s("in"),
            s("arr"),
            s("color"),
            s("RED"),
            s("BLUE"),
        );
        let mut t: Vec<u32> = Vec::new();
        // 1: int (INT kind 1, size 4, encoding signed, 32 bits)
        t.extend([n_int, 1 << 24, 4, (1 << 24) | 32]);
        // 2: struct inner { int x; int y; } (STRUCT kind 4, vlen 2, size 8)
        t.extend([n_inner, (4 << 24) | 2, 8, n_x, 1, 0, n_y, 1, 32]);
        // 3: anonymous union { int b; struct inner in; } (UNION kind 5, vlen 2, size 8)
        t.extend([0, (5 << 24) | 2, 8, n_b, 1, 0, n_in, 2, 0]);
        // 4: array of 2 struct inner (ARRAY kind 3): type, index_type, nelems
        t.extend([0, 3 << 24, 0, 2, 1, 2]);
        // 5: struct outer { int a; union anon; struct inner arr[2]; } size 28
        t.extend([
            n_outer,
            (4 << 24) | 3,
            28,
            n_a,
            1,
            0,
            0,
            3,
            32,
            n_arr,
            4,
            96,
        ]);
        // 6: enum color (ENUM kind 6, vlen 2, size 4)
        t.extend([n_color, (6 << 24) | 2, 4, n_red, 1, n_blue, 7]);
        let types: Vec<u8> = t.iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut out = Vec::new();
        out.extend(0xeb9fu16.to_le_bytes());
        out.push(1); // version
        out.push(0); // flags
        out.extend(24u32.to_le_bytes()); // hdr_len
        out.extend(0u32.to_le_bytes()); // type_off
        out.extend((types.len() as u32).to_le_bytes());
        out.extend((types.len() as u32).to_le_bytes()); // str_off
        out.extend((strings.len() as u32).to_le_bytes());
        out.extend(types);
        out.extend(strings);
        out
    }

    #[test]
    fn offsets_through_anonymous_unions_and_arrays() {
        let btf = KernelBtf::from_bytes(&blob()).unwrap();
        assert_eq!(btf.offset("outer", "a").unwrap(), 0);
        assert_eq!(btf.offset("outer", "b").unwrap(), 4);
        assert_eq!(btf.offset("outer", "in.y").unwrap(), 8);
        assert_eq!(btf.offset("outer", "arr[0].x").unwrap(), 12);
        assert_eq!(btf.offset("outer", "arr[1].y").unwrap(), 24);
    }

    #[test]
    fn missing_field_is_named() {
        let btf = KernelBtf::from_bytes(&blob()).unwrap();
        let err = btf.offset("outer", "nope").unwrap_err();
        assert_eq!(
            err,
            BtfError::NoField {
                ty: "outer".into(),
                field: "nope".into()
            }
        );
        assert!(err.to_string().contains("outer.nope"));
        assert!(matches!(
            btf.offset("outer", "arr[2].x"),
            Err(BtfError::NoField { .. })
        ));
        assert_eq!(
            btf.offset("no_such_struct", "a").unwrap_err(),
            BtfError::NoType("no_such_struct".into())
        );
    }

    #[test]
    fn enum_names() {
        let btf = KernelBtf::from_bytes(&blob()).unwrap();
        let names = EnumNames::from_btf(&btf, "color", "");
        assert_eq!(names.name(7), "BLUE");
        assert_eq!(names.name(3), "reason 3");
    }

    #[test]
    fn a_file_that_cannot_be_mapped_is_read_through_a_copy() {
        let dir = std::env::temp_dir().join(format!("lbpath-btf-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("blob");
        std::fs::write(&file, blob()).unwrap();
        let copy = MemCopy::of(&file).unwrap();
        let btf = Btf::from_file_with_backend(copy.path(), Backend::Mmap).unwrap();
        drop(copy);
        let btf = KernelBtf::new(btf);
        assert_eq!(btf.offset("outer", "arr[1].y").unwrap(), 24);
        // The same through open (mapped directly), twice (the second from the cache).
        let direct = KernelBtf::open(&file).unwrap();
        assert_eq!(direct.offset("outer", "in.y").unwrap(), 8);
        assert_eq!(direct.offset("outer", "in.y").unwrap(), 8);
        assert!(direct.offset("nothing", "x").is_err());
        assert!(direct.offset("nothing", "x").is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn missing_btf_file() {
        let err = KernelBtf::open(Path::new("/nonexistent/vmlinux"))
            .err()
            .unwrap();
        assert!(matches!(err, BtfError::Missing(_)));
        assert!(err.to_string().contains("CONFIG_DEBUG_INFO_BTF"));
    }

    /// Against the running kernel (every machine lbpath supports has BTF).
    #[test]
    fn running_kernel_layout() {
        let btf = KernelBtf::open_vmlinux().expect("this machine has kernel BTF");
        let l = btf.layout().unwrap();
        // Both conntrack directions are one nf_conntrack_tuple_hash apart.
        let hash = btf.struct_named("nf_conntrack_tuple_hash").unwrap();
        assert_eq!(
            l.ct_tuple_reply - l.ct_tuple_orig,
            btf.size_of(&hash).unwrap()
        );
        let skb = btf.size_of(&btf.struct_named("sk_buff").unwrap()).unwrap();
        for off in [
            l.skb_head,
            l.skb_data,
            l.skb_len,
            l.skb_dev,
            l.skb_nfct,
            l.skb_protocol,
        ] {
            assert!(off < skb);
        }
        // IPv4 destination follows the source in struct flowi4.
        assert_eq!(l.fl4_daddr, l.fl4_saddr + 4);
        // kfree_skb's arguments: skb and location, then the reason (5.17+).
        assert!(btf.tracepoint_args("kfree_skb").unwrap() >= 3);
        assert_eq!(btf.tracepoint_args("netif_receive_skb"), Some(1));
        assert_eq!(btf.tracepoint_args("no_such_tracepoint"), None);
        assert!(btf.has_struct("sk_buff"));
        assert!(!btf.has_struct("no_such_struct_lbpath"));
        assert!(btf.has_enum_member("bpf_attach_type", "BPF_TRACE_RAW_TP"));
        // This machine runs lbpath, so the minimum-kernel check passes here.
        assert!(crate::cli::check_kernel(|e, m| btf.has_enum_member(e, m)).is_ok());
        let reasons = EnumNames::from_btf(&btf, "skb_drop_reason", "SKB_DROP_REASON_");
        assert!(reasons.names.values().any(|n| n == "IP_RPFILTER"));
        assert!(reasons.names.values().any(|n| n == "NETFILTER_DROP"));
    }
}
