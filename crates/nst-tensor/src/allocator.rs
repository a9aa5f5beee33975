//! The memory allocator nst's binaries (`nst`, the benchmarks) use with these tensors:
//! mimalloc, told to keep the memory it gets back. Only with the `mimalloc` feature; a library
//! user keeps whatever allocator their program has.
//!
//! Every iteration frees and re-allocates the same large activation and gradient buffers
//! (tens of MB each at 512²). With glibc (or mimalloc's default 10 ms purge delay) they go
//! back to the OS and come back as fresh pages that the kernel must zero: 8–10% of an
//! iteration's time in `perf` was `clear_page_erms` under page faults. Keeping freed memory
//! costs about 10% more peak RSS at 512² (1.41 vs 1.27 GB).
//!
//! Blocks of 32 MiB or more (the large layers' activations and gradients) bypass mimalloc:
//! `large_blocks` maps them from the OS and keeps freed ones only as far as the most ever live
//! at once, moving their pages into new requests of other sizes. mimalloc's arenas each stayed
//! at their own high-water mark: 4949 against 3697 MB peak RSS at 2048², the same time.

/// The allocator: mimalloc (blocks of 32 MiB or more mapped directly), counting the bytes in
/// use for [`crate::memory_trace`] (two relaxed atomic operations an allocation). A binary
/// declares it with `#[global_allocator]`:
///
/// ```ignore
/// #[global_allocator]
/// static ALLOCATOR: nst_tensor::allocator::Allocator = nst_tensor::allocator::Allocator {};
/// ```
pub struct Allocator;

// SAFETY: every call forwards to mimalloc with the same arguments, or for large layouts to
// `large_blocks`, which returns blocks of at least the size, aligned to 2 MiB (at least the
// layout's alignment, see `is_large`), and takes back only its own (a layout is large or not
// at both ends); the counting only reads sizes from the layouts.
unsafe impl std::alloc::GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = if is_large(layout) {
            large_blocks::allocate(layout.size(), false)
        } else {
            // SAFETY: forwarded.
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        };
        if !p.is_null() {
            crate::memory_trace::allocated(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        let p = if is_large(layout) {
            large_blocks::allocate(layout.size(), true)
        } else {
            // SAFETY: forwarded.
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        };
        if !p.is_null() {
            crate::memory_trace::allocated(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        crate::memory_trace::freed(layout.size());
        if is_large(layout) {
            large_blocks::free(ptr, layout.size());
        } else {
            // SAFETY: forwarded.
            unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        let new_layout = std::alloc::Layout::from_size_align(new_size, layout.align());
        if is_large(layout) || new_layout.as_ref().is_ok_and(|l| is_large(*l)) {
            // Rare (tensors do not grow): a new block, the contents copied, the old one freed.
            let Ok(new_layout) = new_layout else {
                return std::ptr::null_mut();
            };
            // SAFETY: new_size is non-zero (realloc's contract).
            let p = unsafe { self.alloc(new_layout) };
            if !p.is_null() {
                // SAFETY: both blocks are valid for the smaller size and distinct.
                unsafe { std::ptr::copy_nonoverlapping(ptr, p, layout.size().min(new_size)) };
                // SAFETY: ptr was allocated by self with `layout`.
                unsafe { self.dealloc(ptr, layout) };
            }
            return p;
        }
        // SAFETY: forwarded.
        let p = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            crate::memory_trace::freed(layout.size());
            crate::memory_trace::allocated(new_size);
        }
        p
    }
}

#[cfg(target_os = "linux")]
mod large_blocks;

/// Off Linux (no `mremap`) every request stays with mimalloc.
#[cfg(not(target_os = "linux"))]
mod large_blocks {
    pub(super) const MIN_BYTES: usize = usize::MAX;
    pub(super) fn allocate(_bytes: usize, _zeroed: bool) -> *mut u8 {
        unreachable!("no request is large off Linux")
    }
    pub(super) fn free(_addr: *mut u8, _bytes: usize) {
        unreachable!("no request is large off Linux")
    }
    pub(super) fn release_kept() {}
    pub(super) fn keep_freed(_keep: bool) {}
}

/// Whether a request goes to [`large_blocks`]: large, and aligned to 4 KiB at most (its
/// blocks are aligned to 2 MiB).
fn is_large(layout: std::alloc::Layout) -> bool {
    layout.size() >= large_blocks::MIN_BYTES && layout.align() <= 4096
}

/// mimalloc's `mi_option_purge_delay` (index 15 in `mi_option_e` of mimalloc v3's mimalloc.h;
/// libmimalloc-sys names it only for v2).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

/// This process's resident set now and at its peak (`VmRSS`, `VmHWM` in /proc/self/status),
/// in bytes; `None` where they cannot be read (not Linux).
pub fn resident_bytes() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let kib: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()?;
        Some(kib * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Never return freed memory to the OS while the process runs. Call first thing in `main`.
pub fn keep_freed_memory() {
    return_freed_memory_at_once(false);
}

/// Whether freed memory goes back to the OS at once (`true`) or is kept for reuse (`false`,
/// what [`keep_freed_memory`] sets).
///
/// Keeping it is faster (see the module docs) but costs more than the heap's peak: blocks
/// freed in the forward pass are too small or too scattered for the backward pass's largest
/// gradients, which then take fresh memory. At 2048² (`xtask bench-worker --iters 2`) the
/// peak RSS was 5114 MiB when keeping against 3433 MiB when returning, for a heap peak of
/// 3320 MiB; returning took 20–25% more time per iteration (page faults). nst returns
/// memory at once only where memory is tight (its lean mode). Large blocks follow the same
/// switch: kept within their live high-water mark, or unmapped at once (at 2048² in the lean
/// mode, keeping them gave 3137 MB peak RSS against 3015 MB: the large blocks kept at the
/// small blocks' peak).
pub fn return_freed_memory_at_once(on: bool) {
    // SAFETY: sets a plain integer option; mimalloc reads it when it next considers purging.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, if on { 0 } else { -1 }) }
    large_blocks::keep_freed(!on);
}

/// Gives the memory freed so far back to the OS (large blocks included), once, and keeps
/// freed memory again afterwards: for a long-lived process between runs (`nst serve` after
/// each job), so that what one large run needed is not held while idle.
pub fn return_freed_memory() {
    // SAFETY: plain integer options and a collection mimalloc allows at any time.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        libmimalloc_sys::mi_collect(true);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
    large_blocks::release_kept();
}
