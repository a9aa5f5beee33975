//! The memory allocator nst's binaries (`nst`, the benchmarks) use with these tensors:
//! mimalloc, told to keep the memory it gets back. Only with the `mimalloc` feature; a library
//! user keeps whatever allocator their program has.
//!
//! Every iteration frees and re-allocates the same large activation and gradient buffers
//! (tens of MB each at 512²). With glibc (or mimalloc's default 10 ms purge delay) they go
//! back to the OS and come back as fresh pages that the kernel must zero: 8–10% of an
//! iteration's time in `perf` was `clear_page_erms` under page faults. Keeping freed memory
//! costs about 10% more peak RSS at 512² (1.41 vs 1.27 GB).

/// The allocator: mimalloc, counting the bytes in use for [`crate::memory_trace`] (two
/// relaxed atomic operations an allocation). A binary declares it with `#[global_allocator]`:
///
/// ```ignore
/// #[global_allocator]
/// static ALLOCATOR: nst_tensor::allocator::Allocator = nst_tensor::allocator::Allocator {};
/// ```
pub struct Allocator;

// SAFETY: every call forwards to mimalloc with the same arguments; the counting only reads
// sizes from the layouts.
unsafe impl std::alloc::GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { mimalloc::MiMalloc.alloc(layout) };
        if !p.is_null() {
            crate::memory_trace::allocated(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) };
        if !p.is_null() {
            crate::memory_trace::allocated(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        crate::memory_trace::freed(layout.size());
        // SAFETY: forwarded.
        unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded.
        let p = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            crate::memory_trace::freed(layout.size());
            crate::memory_trace::allocated(new_size);
        }
        p
    }
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
/// memory at once only where memory is tight (its lean mode).
pub fn return_freed_memory_at_once(on: bool) {
    // SAFETY: sets a plain integer option; mimalloc reads it when it next considers purging.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, if on { 0 } else { -1 }) }
}

/// Gives the memory freed so far back to the OS, once, and keeps freed memory again
/// afterwards: for a long-lived process between runs (`nst serve` after each job), so that
/// what one large run needed is not held while idle.
pub fn return_freed_memory() {
    // SAFETY: plain integer options and a collection mimalloc allows at any time.
    unsafe {
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 0);
        libmimalloc_sys::mi_collect(true);
        libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1);
    }
}
