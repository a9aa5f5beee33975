//! # nst-tensor
//!
//! A small f32 tensor library with tape-based reverse-mode automatic differentiation, built
//! for neural style transfer but general enough for other small networks.
//!
//! - [`Tensor`]: a contiguous row-major (NCHW for images) array on a [`Device`]. Cloning is
//!   cheap (shared storage); tensors are immutable, every op returns a new one.
//! - Autodiff: a leaf made with [`Tensor::variable`] requires a gradient. Every op whose input
//!   requires one records itself on the *tape*; [`Tensor::backward`] walks the tape in reverse
//!   creation order and returns [`Grads`] for every variable. Inside [`no_grad`] nothing is
//!   recorded, so frozen weights and fixed targets cost nothing extra; [`with_grad`] records
//!   again inside it.
//! - Ops: `conv2d` (optionally with a fused ReLU, [`Conv2dOptions`]), `relu`, `max_pool2d`,
//!   `avg_pool2d`, `matmul`, `gram`, `reshape`, `transpose`, `crop`, `add`, `sub`, `mul`, `scale`,
//!   `square`, `sum`, `mean`, plus untracked vector helpers for optimizers (`dot`, `axpby`,
//!   `abs_sum`, `adam_step`, …). Elementwise ops take operands of one shape (no
//!   broadcasting): `scale` multiplies by a constant, and a learned scalar is a `[1, 1]`
//!   variable used through `matmul`.
//! - Stopping: inside [`interruptible`], raising a flag from another thread makes the next
//!   convolution, matrix product, Gram matrix or backward step return
//!   [`TensorError::Interrupted`], so a long evaluation ends within one op.
//! - Devices: a tensor's data is a [`storage`](backend) of its [`Device`]: `Device::Cpu`
//!   (rayon kernels of `nst-cpu`) or `Device::Cuda`. Each device implements one trait of
//!   kernels, [`backend::BackendStorage`]; ops and the backward pass call only that, so
//!   gradients are computed and accumulated on the device of the tensors. The CUDA backend
//!   ([`cuda_backend`]) loads the driver, NVRTC and cuBLAS at run time: where one is missing,
//!   [`Device::cuda`] answers with [`TensorError::CudaUnavailable`] and the reason, never a
//!   panic. [`Device::cuda_emulated`] runs the same CUDA kernels on the CPU, for tests.
//! - Tests run per device with [`test_device!`] (see [`test_utils`]).
//!
//! ## Feature flags
//! - `cuda` (on): the CUDA backend and its emulator (`nst-cuda`, cudarc; the CUDA libraries
//!   are loaded at run time, so building needs none). Without it, [`cuda_backend`] is a
//!   backend no device can be made for: [`Device::cuda`] answers
//!   [`TensorError::CudaUnavailable`] ("this build has no CUDA backend"), and the build
//!   skips cudarc (about 35 s of a two-core release build).
//! - `openblas` (off): the CPU backend's GEMM on the system OpenBLAS (see `nst-cpu`).
//! - `mimalloc` (off): `allocator`, the allocator nst's binaries use (mimalloc keeping freed
//!   memory: page faults were 8–10% of an iteration with the system allocator).
//!
//! ```
//! use nst_tensor::{Device, Tensor};
//! # fn main() -> Result<(), nst_tensor::TensorError> {
//! let dev = Device::Cpu;
//! // A tiny convolutional regressor: conv → ReLU → max-pool → flatten → linear.
//! let x = Tensor::from_vec((0..2 * 1 * 4 * 4).map(|i| i as f32 / 32.0).collect(), &[2, 1, 4, 4], &dev)?;
//! let w1 = Tensor::variable(vec![0.1; 3 * 1 * 3 * 3], &[3, 1, 3, 3], &dev)?;
//! let b1 = Tensor::variable(vec![0.0; 3], &[3], &dev)?;
//! let w2 = Tensor::variable(vec![0.05; 3 * 2 * 2], &[12, 1], &dev)?;
//! let target = Tensor::from_vec(vec![1.0, -1.0], &[2, 1], &dev)?;
//!
//! let hidden = x.conv2d(&w1, Some(&b1), 1, 1)?.relu()?.max_pool2d()?; // [2, 3, 2, 2]
//! let pred = hidden.reshape(&[2, 12])?.matmul(&w2)?;                    // [2, 1]
//! let loss = pred.sub(&target)?.square()?.mean()?;
//! let grads = loss.backward()?;
//!
//! // One step of gradient descent on the first layer's weights. Optimizer arithmetic is not
//! // recorded, so the result is a constant: make it a variable again for the next step.
//! let g = grads.get(&w1).expect("w1 requires a gradient");
//! let w1_next = w1.axpby(1.0, g, -0.1)?.to_variable();
//! assert!(w1_next.to_vec()?.iter().all(|v| v.is_finite()));
//! assert_eq!(w1_next.dims(), &[3, 1, 3, 3]);
//! # Ok(()) }
//! ```

#[cfg(feature = "mimalloc")]
pub mod allocator;
pub mod backend;
mod backward;
pub mod cpu_backend;
#[cfg(feature = "cuda")]
pub mod cuda_backend;
#[cfg(not(feature = "cuda"))]
#[path = "no_cuda_backend.rs"]
pub mod cuda_backend;
mod device;
mod error;
mod grad_mode;
mod interrupt;
pub mod memory_trace;
mod op;
mod ops;
mod storage;
mod tensor;
pub mod test_utils;

pub use backward::Grads;
pub use device::{Device, Precision};
pub use error::TensorError;
pub use grad_mode::{is_grad_enabled, no_grad, with_grad};
pub use interrupt::interruptible;
pub use nst_params::{
    AdamParams, AlgorithmSearch, Conv2dParams, ConvAlgorithm, Layout, Pool2dParams,
};
pub use ops::conv::Conv2dOptions;
pub use ops::vector::Scalar;
pub use tensor::Tensor;

/// Host-side linear algebra on 3×3 symmetric matrices (colour statistics), which runs on the
/// CPU whatever the tensors' device.
pub mod linalg {
    pub use nst_cpu::linalg::*;
}

/// `Result` with a [`TensorError`].
pub type Result<T> = std::result::Result<T, TensorError>;
