//! f32 buffers from the system allocator rather than the program's global one, for data that
//! lives through a whole run but is allocated in the middle of it (the kernel cache).
//!
//! nst's binaries use mimalloc and have it keep freed memory for reuse (no page faults in
//! steady state). Long-lived buffers allocated among the first iteration's short-lived
//! activations then sit between their freed blocks, which later activations of other sizes
//! cannot fully reuse: with the kernel cache in mimalloc, peak RSS at 1024² was 2210 MiB,
//! against 1726 MiB when the same cache was filled before the first iteration (1358 MiB with
//! no cache; `xtask bench-worker --size 1024 --iters 2`). From the system allocator (on
//! Linux, glibc's malloc: a heap of its own, which serves blocks of megabytes by mapping
//! them from the OS), the cache stays out of mimalloc's way.

use std::alloc::{handle_alloc_error, GlobalAlloc, Layout, System};
use std::ptr::NonNull;

/// `len` f32 values, zeroed at creation, owned like a `Vec<f32>` that cannot grow.
pub(crate) struct SystemBuffer {
    ptr: NonNull<f32>,
    len: usize,
}

// SAFETY: the buffer owns its memory exclusively, as a Vec<f32> does; shared access is
// read-only through `&[f32]`.
unsafe impl Send for SystemBuffer {}
// SAFETY: as above.
unsafe impl Sync for SystemBuffer {}

impl SystemBuffer {
    pub(crate) fn zeroed(len: usize) -> Self {
        let layout = Self::layout(len);
        if layout.size() == 0 {
            return Self {
                ptr: NonNull::dangling(),
                len,
            };
        }
        // SAFETY: the layout's size is non-zero (checked above).
        let raw = unsafe { System.alloc_zeroed(layout) };
        let ptr = NonNull::new(raw.cast::<f32>()).unwrap_or_else(|| handle_alloc_error(layout));
        Self { ptr, len }
    }

    fn layout(len: usize) -> Layout {
        Layout::array::<f32>(len).expect("a buffer under isize::MAX bytes")
    }
}

impl std::ops::Deref for SystemBuffer {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        // SAFETY: ptr is valid for len initialised (zeroed, then written) f32 values, or
        // dangling and aligned with len 0; the borrow ties the slice to self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for SystemBuffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        // SAFETY: as in `deref`, and &mut self makes this the only access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for SystemBuffer {
    fn drop(&mut self) {
        let layout = Self::layout(self.len);
        if layout.size() != 0 {
            // SAFETY: allocated by System with this same layout in `zeroed`.
            unsafe { System.dealloc(self.ptr.as_ptr().cast(), layout) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SystemBuffer;

    #[test]
    fn zeroed_writable_and_empty_buffers_work() {
        let mut b = SystemBuffer::zeroed(1000);
        assert!(b.iter().all(|&v| v == 0.0));
        b.iter_mut().enumerate().for_each(|(i, v)| *v = i as f32);
        assert_eq!(b[999], 999.0);
        assert_eq!(SystemBuffer::zeroed(0).len(), 0);
    }
}
