//! A process-wide pool of reusable f32 buffers for kernel scratch space (im2col columns).
//!
//! Convolution needs a large temporary every call; taking it from a pool instead of the
//! allocator means a style-transfer iteration, which repeats the same shapes, allocates
//! nothing after its first pass. A `Mutex` pool (rather than a thread-local) stays correct
//! when a kernel is called from inside a rayon task.
//!
//! The buffers come from the system allocator ([`SystemBuffer`]), like the kernel cache's:
//! they live through the run but are allocated during its first iteration, and in mimalloc
//! they would split the freed blocks that later activations reuse. With them in mimalloc and
//! the large layers' kernels transformed into scratch, peak RSS at 2048² was 5.4 GB for
//! 3.4 GB of heap; from the system allocator, 4.4 GB (`xtask bench-worker --size 2048
//! --iters 1`).

use crate::system_buffer::SystemBuffer;
use std::sync::Mutex;

static POOL: Mutex<Vec<SystemBuffer>> = Mutex::new(Vec::new());

/// Runs `f` with a scratch buffer of exactly `len` elements (contents unspecified).
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let buf = {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        // Prefer the smallest buffer that is big enough, else the largest one (to be replaced).
        let pick = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.len() >= len)
            .min_by_key(|(_, b)| b.len())
            .map(|(i, _)| i)
            .or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].len()));
        pick.map(|i| pool.swap_remove(i))
    };
    let mut buf = match buf {
        Some(b) if b.len() >= len => b,
        // Replaced rather than grown: the contents need not survive.
        _ => SystemBuffer::zeroed(len),
    };
    let out = f(&mut buf[..len]);
    POOL.lock().unwrap_or_else(|e| e.into_inner()).push(buf);
    out
}

/// Frees every pooled buffer (call when the working size changes, e.g. between scales).
pub fn release_scratch() {
    POOL.lock().unwrap_or_else(|e| e.into_inner()).clear();
}
