//! # nst-cpu
//!
//! f32 compute kernels for neural style transfer on the CPU: 2-D convolution (forward and the
//! three gradients), ReLU, 2×2 max/average pooling, windows copied between planes (tiles),
//! matrix multiply, Gram matrices, elementwise ops and reductions, and a small symmetric 3×3
//! eigen solver for colour matching.
//!
//! Every kernel works on plain contiguous slices in NCHW order and writes into an output the
//! caller provides, so the layer above (`nst-tensor`) decides where memory lives. Kernels are
//! parallel with rayon. Preconditions (slice lengths matching the shapes) are asserted: the
//! tensor layer checks shapes first and reports errors, so a failed assert here is a bug.
//!
//! ## Feature flags
//! - `openblas` (off): GEMM goes through ndarray's BLAS path on the system OpenBLAS
//!   (`libopenblas-dev`), and [`linalg`] gains an ndarray-linalg eigen solver that the tests
//!   compare with the built-in one. Without it, GEMM uses the `gemm` crate (AVX-512 kernels).

#[cfg(feature = "openblas")]
extern crate blas_src;

pub mod conv;
pub mod elementwise;
pub mod gemm;
pub mod gram;
pub mod kernel_cache;
pub mod linalg;
pub mod pool;
pub mod relu;
mod scratch;
mod shared_out;
pub mod simd;
mod system_buffer;
pub mod window;
pub mod winograd;
pub use scratch::release_scratch;

pub use gemm::{matmul, MatLayout};
pub use nst_params::{AdamParams, Conv2dParams, ConvAlgorithm, Pool2dParams, Window2dParams};
