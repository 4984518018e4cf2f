//! What the fuzz targets share: the real captures their structure-aware
//! mutators splice from, a seeded random source (a custom mutator must be a
//! function of its seed), and the step that hands a mutated input back to
//! libFuzzer.

use libfuzzer_sys::fuzzer_mutate;

/// `iptables-save -c` output of the lab node (tracer/src/kubeproxy/testdata),
/// and the rules file it was restored from.
pub const IPTABLES_CAPTURES: [&str; 4] = [
    include_str!("../../src/kubeproxy/testdata/iptables-nft.save"),
    include_str!("../../src/kubeproxy/testdata/iptables-nft-before.save"),
    include_str!("../../src/kubeproxy/testdata/nftables.iptables-nft.save"),
    include_str!("../../src/kubeproxy/testdata/lab-iptables.rules"),
];

/// `nft -j list ruleset` of the lab node, kube-proxy in nftables mode (after
/// and before the traffic), and iptables-nft's tables as nft sees them.
pub const NFT_CAPTURES: [&str; 3] = [
    include_str!("../../src/kubeproxy/testdata/nftables.json"),
    include_str!("../../src/kubeproxy/testdata/nftables-before.json"),
    include_str!("../../src/kubeproxy/testdata/iptables-nft.nft.json"),
];

/// splitmix64: small, and the same sequence for the same seed.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u32) -> Self {
        Rng(u64::from(seed) ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A number in `0..n`; 0 when `n` is 0.
    pub fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next_u64() % n as u64) as usize
        }
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        items.get(self.below(items.len()))
    }
}

/// Puts `out` in libFuzzer's buffer as the new input, or, when it does not
/// fit in `max_size`, lets libFuzzer mutate the old one instead.
pub fn emit(data: &mut [u8], size: usize, max_size: usize, out: &[u8]) -> usize {
    if out.len() > max_size {
        return fuzzer_mutate(data, size, max_size);
    }
    data[..out.len()].copy_from_slice(out);
    out.len()
}

/// libFuzzer's own mutation of a piece of an input (a line, a string),
/// which may grow it by up to 64 bytes. An empty piece starts as a space
/// (libFuzzer never mutates an empty input itself).
pub fn mutate_piece(piece: &[u8]) -> Vec<u8> {
    let mut buf = if piece.is_empty() {
        vec![b' ']
    } else {
        piece.to_vec()
    };
    let size = buf.len();
    buf.resize(size + 64, 0);
    let max = buf.len();
    let n = fuzzer_mutate(&mut buf, size, max);
    buf.truncate(n);
    buf
}
