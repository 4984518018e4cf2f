//! Per-CPU scratch memory for the values too big for the BPF stack.
//!
//! Before 6.13 the verifier allows 512 bytes of stack for a program's whole
//! call chain, so parsed headers, event details and a track being built sit
//! in a per-CPU map slot instead. A program takes a slot with
//! [`Frame::enter`] once it knows the packet matters (unrelated traffic never
//! pays for it) and gives it back when the `Frame` is dropped. Slots are
//! taken by nesting level: a softirq that interrupts a program on the same CPU
//! gets the next slot, never the one in use.

use tracer_common::STAT_NESTED;

use crate::{
    emit::Extra,
    kernel::stat_inc,
    maps::{NEST, SCRATCH, Track},
    parse::Parsed,
};

/// Nesting levels with their own slot. Deeper nesting (not seen in practice:
/// process context, softirq, hardirq, NMI) is counted and skipped.
pub const SCRATCH_SLOTS: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Scratch {
    /// The packet's headers at this hook.
    pub p: Parsed,
    /// What the event adds to the packet.
    pub x: Extra,
    /// A track being created, or the stand-in for a packet past its trace
    /// budget whose drop is reported.
    pub tr: Track,
}

pub struct Frame {
    s: *mut Scratch,
    nest: *mut u32,
}

impl Frame {
    #[inline(always)]
    pub fn enter() -> Option<Self> {
        let nest = NEST.get_ptr_mut(0)?;
        let level = unsafe { *nest };
        if level >= SCRATCH_SLOTS {
            stat_inc(STAT_NESTED);
            aya_log_ebpf::debug!(
                &(),
                "programs nested {} deep on this CPU: event skipped",
                level
            );
            return None;
        }
        let s = SCRATCH.get_ptr_mut(level)?;
        unsafe { *nest = level + 1 };
        Some(Self { s, nest })
    }

    #[inline(always)]
    pub fn get(&self) -> &'static mut Scratch {
        // SAFETY: the slot is this CPU's and held by this frame alone until
        // it is dropped; programs run to completion without migrating.
        unsafe { &mut *self.s }
    }
}

impl Drop for Frame {
    #[inline(always)]
    fn drop(&mut self) {
        unsafe { *self.nest -= 1 };
    }
}
