//! # nst-cuda
//!
//! The CUDA backend of nst, on cudarc with *dynamic loading*: the crate builds and its tests
//! run on machines with no CUDA toolkit, driver or GPU, and a missing piece becomes a
//! run-time answer instead of a link error.
//!
//! - [`probe`]: finds device 0 (or says in one line why not).
//! - [`kernels`]: the CUDA C source of every kernel nst-cpu has (im2col, bias, kernel flip,
//!   ReLU, max/avg pooling forward and backward, elementwise, f64 reductions, Adam), compiled
//!   by NVRTC at run time; CI compiles it with no GPU. [`compiled_kernels`]: the kernels
//!   compiled for the GPU's architecture, kept between runs ([`cache_dir`]: where).
//! - [`blas`]: row-major products as cuBLAS calls, with a host reference of the calls.
//! - [`gpu::Gpu`]: device, stream, loaded kernels and a cuBLAS handle, with the operations
//!   the parity tests check against nst-cpu (convolution as im2col + SGEMM among them).
//!
//! - [`cudnn`]: convolutions through cuDNN where it loads; [`conv_choice`]: when its
//!   algorithms are searched for and when cuDNN's heuristics pick them; [`profile`]: opt-in
//!   time per operation (`NST_CUDA_PROFILE=1`).
//!
//! Status: nst-tensor's `Device::Cuda` runs the whole style-transfer iteration on this crate,
//! and it has run on an NVIDIA H200 (2026-11-28; see the README).
//!
//! cudarc panics when a call needs a library it cannot load, so every entry point checks
//! `is_culib_present()` for the driver, NVRTC and cuBLAS before touching anything else.

pub mod algorithm_cache;
pub mod blas;
pub mod cache_dir;
pub mod compiled_kernels;
pub mod conv_choice;
pub mod cudnn;
pub mod driver;
#[cfg(feature = "emulator")]
pub mod emulator;
pub mod gpu;
pub mod kernels;
pub mod profile;
pub mod runtime;

pub use gpu::{Floats, Gpu};
pub use runtime::{Arg, ConvEngine, ConvOptions, DeviceBuffer, DevicePtr, GpuResult, Runtime};

use std::fmt;

/// What a probe found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A CUDA device is present and its libraries load.
    Available {
        /// The device's name as the driver reports it.
        name: String,
    },
    /// CUDA cannot be used; the reason is one line for the user.
    Unavailable(String),
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Available { name } => write!(f, "CUDA device 0: {name}"),
            Probe::Unavailable(why) => f.write_str(why),
        }
    }
}

/// Looks for CUDA device 0 without panicking when libraries are missing.
pub fn probe() -> Probe {
    // SAFETY: these only try to dlopen the library and report whether that worked.
    let (driver, nvrtc, cublas) = unsafe {
        (
            cudarc::driver::sys::is_culib_present(),
            cudarc::nvrtc::sys::is_culib_present(),
            cudarc::cublas::sys::is_culib_present(),
        )
    };
    if !driver {
        return Probe::Unavailable(
            "no NVIDIA driver found (libcuda.so could not be loaded)".into(),
        );
    }
    if !nvrtc {
        return Probe::Unavailable(
            "the CUDA runtime compiler NVRTC (libnvrtc.so.13) could not be loaded".into(),
        );
    }
    if !cublas {
        return Probe::Unavailable("cuBLAS (libcublas.so.13) could not be loaded".into());
    }
    match cudarc::driver::CudaContext::new(0) {
        Ok(ctx) => Probe::Available {
            name: ctx.name().unwrap_or_else(|_| "unknown GPU".into()),
        },
        Err(e) => Probe::Unavailable(format!("no usable CUDA device: {e}")),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn probe_never_panics_and_explains_itself() {
        match super::probe() {
            super::Probe::Available { name } => assert!(!name.is_empty()),
            super::Probe::Unavailable(why) => {
                eprintln!("skipped GPU checks: {why}");
                assert!(!why.is_empty() && !why.contains('\n'));
            }
        }
    }
}
