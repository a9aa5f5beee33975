//! Which instruction-set extensions the kernels use, chosen at run time.
//!
//! The binary is built for x86-64's baseline (SSE2), so that it runs on any x86-64 CPU. The
//! hottest loops of our own (the Winograd transforms) are also compiled for AVX2 and taken
//! where the CPU has it (`is_x86_feature_detected!`, which caches its answer). The AVX2
//! paths do the same arithmetic in the same order (no fused multiply-add), so the results are
//! bit for bit those of the baseline. GEMM dispatches on its own (the `gemm` crate).

use std::sync::atomic::{AtomicBool, Ordering};

static DISABLED: AtomicBool = AtomicBool::new(false);

/// Turns the AVX2 paths off (`false`) or back on: for comparing them with the baseline, in
/// tests and when chasing a suspected miscompilation. On by default.
pub fn set_enabled(on: bool) {
    DISABLED.store(!on, Ordering::Relaxed);
}

/// Whether to take the AVX2 paths: enabled, and the CPU has AVX2.
#[inline]
pub fn avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        !DISABLED.load(Ordering::Relaxed) && std::is_x86_feature_detected!("avx2")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
