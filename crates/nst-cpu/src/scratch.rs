//! A process-wide pool of reusable f32 buffers for kernel scratch space (im2col columns).
//!
//! Convolution needs a large temporary every call; taking it from a pool instead of the
//! allocator means a style-transfer iteration, which repeats the same shapes, allocates
//! nothing after its first pass. A `Mutex` pool (rather than a thread-local) stays correct
//! when a kernel is called from inside a rayon task.

use std::sync::Mutex;

static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// Runs `f` with a scratch buffer of exactly `len` elements (contents unspecified).
pub(crate) fn with_scratch<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    let mut buf = {
        let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
        // Prefer the smallest buffer that is big enough, else the largest one (it will grow).
        let pick = pool
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i)
            .or_else(|| (0..pool.len()).max_by_key(|&i| pool[i].capacity()));
        pick.map(|i| pool.swap_remove(i)).unwrap_or_default()
    };
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
    let out = f(&mut buf[..len]);
    POOL.lock().unwrap_or_else(|e| e.into_inner()).push(buf);
    out
}

/// Frees every pooled buffer (call when the working size changes, e.g. between scales).
pub fn release_scratch() {
    POOL.lock().unwrap_or_else(|e| e.into_inner()).clear();
}
