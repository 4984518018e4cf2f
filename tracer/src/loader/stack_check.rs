//! The pre-6.13 verifier's stack rule, checked on the embedded object
//! without a kernel.
//!
//! Before 6.13 a program's whole call chain may use 512 bytes of stack: the
//! verifier adds up each subprogram's depth, rounded up to 32 bytes, along
//! every chain of bpf-to-bpf calls (`check_max_stack_depth`). 6.13+ gives
//! tracing programs a private stack per subprogram, so a kernel of this
//! machine's age never complains; this test does, on every build.

use std::collections::{BTreeSet, HashSet};

use aya_obj::{Object, generated::bpf_insn};

const MAX_BPF_STACK: u32 = 512;
const BPF_PSEUDO_CALL: u8 = 1;
const FP: u8 = 10;

fn class(i: &bpf_insn) -> u8 {
    i.code & 0x07
}

fn is_pseudo_call(i: &bpf_insn) -> bool {
    i.code == 0x85 && i.src_reg() == BPF_PSEUDO_CALL
}

/// Bytes of stack one subprogram touches: direct `r10 - N` accesses, and
/// pointers made from r10 (`rX = r10; rX += -N`) passed on or dereferenced.
fn frame_depth(insns: &[bpf_insn]) -> u32 {
    // Registers holding r10 + offset; r10 itself is the frame pointer.
    let mut fp_regs: [Option<i64>; 11] = [None; 11];
    fp_regs[FP as usize] = Some(0);
    let mut depth = 0i64;
    let touch = |off: i64, depth: &mut i64| {
        if off < 0 {
            *depth = (*depth).max(-off);
        }
    };
    let mut i = 0;
    while i < insns.len() {
        let insn = &insns[i];
        let (dst, src) = (insn.dst_reg() as usize, insn.src_reg() as usize);
        match class(insn) {
            // LDX: dst = *(src + off)
            0x01 => {
                if let Some(base) = fp_regs.get(src).copied().flatten() {
                    touch(base + insn.off as i64, &mut depth);
                }
                if dst < fp_regs.len() {
                    fp_regs[dst] = None;
                }
            }
            // ST / STX: *(dst + off) = ...
            0x02 | 0x03 => {
                if let Some(base) = fp_regs.get(dst).copied().flatten() {
                    touch(base + insn.off as i64, &mut depth);
                }
            }
            // ALU64
            0x07 if dst < fp_regs.len() => {
                let op = insn.code & 0xf0;
                let from_reg = insn.code & 0x08 != 0;
                fp_regs[dst] = match (op, from_reg) {
                    // mov dst, src
                    (0xb0, true) => fp_regs.get(src).copied().flatten(),
                    // add dst, imm
                    (0x00, false) => fp_regs[dst].map(|b| b + insn.imm as i64),
                    _ => None,
                };
                if let Some(b) = fp_regs[dst] {
                    touch(b, &mut depth);
                }
            }
            // JMP: a call clobbers the argument and return registers.
            0x05 if insn.code & 0xf0 == 0x80 => {
                for r in fp_regs.iter_mut().take(6) {
                    *r = None;
                }
            }
            // LD (ld_imm64 takes two slots).
            0x00 => {
                if dst < fp_regs.len() {
                    fp_regs[dst] = None;
                }
                i += 1;
            }
            0x04 if dst < fp_regs.len() => fp_regs[dst] = None,
            _ => {}
        }
        i += 1;
    }
    depth as u32
}

/// The largest stack a chain of calls in `insns` (a linked program: its own
/// code, then its callees) reaches, as the pre-6.13 verifier counts it, and
/// the chain's frames.
pub fn worst_chain(insns: &[bpf_insn]) -> (u32, Vec<u32>) {
    let mut starts = BTreeSet::from([0usize]);
    for (i, insn) in insns.iter().enumerate() {
        if is_pseudo_call(insn) {
            starts.insert((i as i64 + 1 + insn.imm as i64) as usize);
        }
    }
    let starts: Vec<usize> = starts.into_iter().collect();
    let sub_of = |pc: usize| starts.partition_point(|&s| s <= pc) - 1;
    let bounds = |k: usize| (starts[k], starts.get(k + 1).copied().unwrap_or(insns.len()));
    let depths: Vec<u32> = (0..starts.len())
        .map(|k| {
            let (a, b) = bounds(k);
            frame_depth(&insns[a..b])
        })
        .collect();
    let callees: Vec<HashSet<usize>> = (0..starts.len())
        .map(|k| {
            let (a, b) = bounds(k);
            (a..b)
                .filter(|&i| is_pseudo_call(&insns[i]))
                .map(|i| sub_of((i as i64 + 1 + insns[i].imm as i64) as usize))
                .collect()
        })
        .collect();
    fn walk(
        k: usize,
        depths: &[u32],
        callees: &[HashSet<usize>],
        seen: &mut Vec<usize>,
    ) -> (u32, Vec<u32>) {
        let own = depths[k].max(1).div_ceil(32) * 32;
        let mut best = (0, Vec::new());
        if !seen.contains(&k) {
            seen.push(k);
            for &c in &callees[k] {
                let r = walk(c, depths, callees, seen);
                if r.0 > best.0 {
                    best = r;
                }
            }
            seen.pop();
        }
        let mut chain = vec![depths[k]];
        chain.extend(best.1);
        (own + best.0, chain)
    }
    walk(0, &depths, &callees, &mut Vec::new())
}

/// Every program of `object` with its worst chain.
pub fn programs(object: &[u8]) -> Vec<(String, u32, Vec<u32>)> {
    let mut obj = Object::parse(object).expect("the embedded object parses");
    let text_sections = obj.functions.keys().map(|(section, _)| *section).collect();
    obj.relocate_calls(&text_sections).expect("calls relocate");
    let mut out: Vec<_> = obj
        .programs
        .iter()
        .map(|(name, prog)| {
            let (total, chain) = worst_chain(&obj.functions[&prog.function_key()].instructions);
            (name.clone(), total, chain)
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> bpf_insn {
        // SAFETY: bpf_insn is plain integers; all zeroes is a valid value.
        let mut i: bpf_insn = unsafe { std::mem::zeroed() };
        i.code = code;
        i.off = off;
        i.imm = imm;
        i.set_dst_reg(dst);
        i.set_src_reg(src);
        i
    }

    #[test]
    fn frames_and_chains_are_counted_like_the_verifier() {
        // main: *(u64 *)(r10 - 40) = r1; call sub; exit
        // sub:  r1 = r10; r1 += -300; call helper; exit
        let prog = [
            insn(0x7b, 10, 1, -40, 0),
            insn(0x85, 0, BPF_PSEUDO_CALL, 0, 1),
            insn(0x95, 0, 0, 0, 0),
            insn(0xbf, 1, 10, 0, 0),
            insn(0x07, 1, 0, 0, -300),
            insn(0x85, 0, 0, 0, 113),
            insn(0x95, 0, 0, 0, 0),
        ];
        let (total, chain) = worst_chain(&prog);
        assert_eq!(chain, [40, 300]);
        // 40 → 64, 300 → 320.
        assert_eq!(total, 384);
    }

    /// The rule itself, on the object this binary embeds.
    #[test]
    fn every_program_fits_the_pre_6_13_stack() {
        let progs = programs(super::super::OBJECT);
        assert!(progs.len() > 10, "{progs:?}");
        for (name, total, chain) in &progs {
            eprintln!("{name}: {total} bytes, frames {chain:?}");
            assert!(
                *total <= MAX_BPF_STACK,
                "{name}: combined stack {total} bytes > {MAX_BPF_STACK} (frames {chain:?})"
            );
        }
    }
}
