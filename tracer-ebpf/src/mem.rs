//! Zeroing without `memset`. This toolchain lowers every memset, even a
//! 3-byte one or adjacent zero stores merged into one, to a call to
//! aya-ebpf's `memset`: a loop of one-byte stores, about four instructions a
//! byte (an event's 256 bytes took 1000). Volatile stores of the widest
//! word the alignment allows cannot be merged back into a memset, and the
//! constant count unrolls.

use core::{mem::MaybeUninit, ptr::write_volatile};

/// Zeroes `*p`.
///
/// # Safety
/// `p` must be valid for writes and aligned for `T`.
#[inline(always)]
pub unsafe fn zero<T>(p: *mut T) {
    unsafe {
        match align_of::<T>() {
            8.. => words::<T, u64>(p),
            4 => words::<T, u32>(p),
            2 => words::<T, u16>(p),
            _ => words::<T, u8>(p),
        }
    }
}

#[inline(always)]
unsafe fn words<T, W: Default>(p: *mut T) {
    let w = p.cast::<W>();
    // A type's size is a multiple of its alignment, so of W.
    for i in 0..size_of::<T>() / size_of::<W>() {
        unsafe { write_volatile(w.add(i), W::default()) };
    }
}

/// Zeroes `v` where it lies and returns it. In place, not returned by value:
/// a copy of known zeros to its final place would be a memset again.
///
/// # Safety
/// All-zero bytes must be a valid `T` (plain data).
#[inline(always)]
pub unsafe fn zeroed_in<T>(v: &mut MaybeUninit<T>) -> &mut T {
    unsafe {
        zero(v.as_mut_ptr());
        v.assume_init_mut()
    }
}
