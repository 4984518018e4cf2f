//! What the kernel under test offers, read from its BTF independently of
//! lbpath, so tests assert what lbpath should manage on that kernel.

use std::sync::OnceLock;

fn btf() -> &'static [u8] {
    static BTF: OnceLock<Vec<u8>> = OnceLock::new();
    BTF.get_or_init(|| std::fs::read("/sys/kernel/btf/vmlinux").unwrap_or_default())
}

/// Whether the BTF string table holds `name` as a whole string.
fn has_name(name: &str) -> bool {
    let needle: Vec<u8> = [&[0u8][..], name.as_bytes(), &[0u8]].concat();
    btf().windows(needle.len()).any(|w| w == needle)
}

/// BPF netfilter links (6.4+): NAT and netfilter drops are observed, not inferred.
pub fn has_netfilter_links() -> bool {
    has_name("bpf_nf_ctx")
}

/// tcx links (6.6+), which lbpath's BGP capture programs attach with.
pub fn has_tcx() -> bool {
    has_name("BPF_TCX_INGRESS")
}

/// `kfree_skb` passes a drop reason (5.17+).
pub fn has_drop_reasons() -> bool {
    has_name("SKB_DROP_REASON_NOT_SPECIFIED")
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_kernel_is_described() {
        // Every kernel lbpath supports has BTF with sk_buff in it.
        assert!(super::has_name("sk_buff"));
        assert!(!super::has_name("no_such_type_lbpath"));
    }
}
