//! The CUDA C source of every nst kernel ([`SOURCE`], from `kernels.cu`) and its compilation
//! to PTX with NVRTC at run time.
//!
//! Compiling needs only `libnvrtc.so.13`, not a GPU: CI installs it from PyPI
//! (`nvidia-cuda-nvrtc`) and compiles every kernel, so a syntax or type error in the CUDA
//! source fails CI even on a machine without a GPU.

use cudarc::nvrtc::{compile_ptx_with_opts, CompileOptions, Ptx};

/// The CUDA C source of all kernels.
pub const SOURCE: &str = include_str!("kernels.cu");

/// Every `__global__` function in [`SOURCE`] (the names the runtime loads).
pub const KERNEL_NAMES: &[&str] = &[
    "im2col",
    "col2im_add",
    "add_bias",
    "add_bias_relu",
    "relu_forward",
    "relu_mask_pack",
    "relu_mask_apply",
    "max_pool2x2_forward",
    "max_pool2x2_backward",
    "avg_pool2x2_forward",
    "avg_pool2x2_backward",
    "axpby",
    "scale",
    "scaled_mul",
    "transpose2d",
    "copy2d",
    "broadcast_first",
    "scaled_difference",
    "double_to_float",
    "scalar_scale",
    "scalar_sub",
    "axpy_device_coef",
    "axpy_coef_dot",
    "reduce_partial",
    "reduce_finish",
    "abs_max",
    "adam_update",
];

/// Whether NVRTC can be loaded (checked before any call: cudarc panics otherwise).
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Compiles [`SOURCE`] to PTX. Errors are one line (NVRTC's log is appended after a colon).
pub fn compile() -> Result<Ptx, String> {
    if !nvrtc_present() {
        return Err("the CUDA runtime compiler NVRTC (libnvrtc.so.13) could not be loaded".into());
    }
    let opts = CompileOptions {
        name: Some("nst_kernels.cu".into()),
        // IEEE division and square root, and no fused multiply-adds, so elementwise results
        // track the CPU kernels' rounding (these kernels are memory-bound: FMA would not
        // make them faster). cuBLAS and cuDNN use FMA as they like.
        prec_div: Some(true),
        prec_sqrt: Some(true),
        fmad: Some(false),
        ..Default::default()
    };
    compile_ptx_with_opts(SOURCE, opts)
        .map_err(|e| format!("NVRTC could not compile the nst kernels: {e}").replace('\n', " "))
}
