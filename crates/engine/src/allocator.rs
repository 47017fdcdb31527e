//! The global allocator of the binary and the benches: mimalloc, entered
//! through its plain `mi_malloc`/`mi_realloc` for the common alignments.
//!
//! The `mimalloc` crate's `GlobalAlloc` sends every allocation through
//! `mi_malloc_aligned`, whose extra checks cost ~60 instructions per call
//! (callgrind: ~85 against ~25 for `mi_malloc`). A load allocates about 40
//! times per resource (JSON trees, FHIRPath results, view rows), so that was
//! ~3 % of its instructions. Every mimalloc block is aligned to at least
//! the machine word (its size classes are multiples of 8 bytes), so requests
//! aligned to 8 or less need no aligned call; larger alignments (Arrow's
//! 64-byte buffers) still take the aligned path.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

/// Alignment every `mi_malloc` block has (mimalloc's `MI_INTPTR_SIZE`).
const WORD_ALIGN: usize = std::mem::size_of::<usize>();

/// mimalloc as the global allocator (see the module documentation).
pub struct MiMalloc;

// SAFETY: every path hands out memory from mimalloc, aligned as `layout`
// asks: `mi_malloc`/`mi_zalloc`/`mi_realloc` blocks are word-aligned, used
// only for alignments up to a word; other requests use the aligned calls.
// `mi_free` frees blocks of either kind.
unsafe impl GlobalAlloc for MiMalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: plain C allocation calls; the caller owns the result.
        unsafe {
            if layout.align() <= WORD_ALIGN {
                libmimalloc_sys::mi_malloc(layout.size()) as *mut u8
            } else {
                libmimalloc_sys::mi_malloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as `alloc`.
        unsafe {
            if layout.align() <= WORD_ALIGN {
                libmimalloc_sys::mi_zalloc(layout.size()) as *mut u8
            } else {
                libmimalloc_sys::mi_zalloc_aligned(layout.size(), layout.align()) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator (the `GlobalAlloc` contract).
        unsafe { libmimalloc_sys::mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator with `layout`; the new
        // block keeps that alignment.
        unsafe {
            if layout.align() <= WORD_ALIGN {
                libmimalloc_sys::mi_realloc(ptr as *mut c_void, new_size) as *mut u8
            } else {
                libmimalloc_sys::mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_the_alignment_asked_for() {
        let allocator = MiMalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            for size in [1, 7, 8, 9, 24, 40, 100, 1000, 70_000] {
                let layout = Layout::from_size_align(size, align).expect("layout");
                // SAFETY: non-zero sizes; every block is freed with its layout.
                unsafe {
                    let p = allocator.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    p.write_bytes(0xab, size);
                    let q = allocator.realloc(p, layout, size * 3);
                    assert_eq!(q as usize % align, 0, "realloc: size {size} align {align}");
                    assert_eq!(*q.add(size - 1), 0xab, "realloc keeps the contents");
                    allocator.dealloc(q, Layout::from_size_align(size * 3, align).expect("layout"));
                    let z = allocator.alloc_zeroed(layout);
                    assert_eq!(z as usize % align, 0);
                    assert!((0..size).all(|i| *z.add(i) == 0));
                    allocator.dealloc(z, layout);
                }
            }
        }
    }
}
