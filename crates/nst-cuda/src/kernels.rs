//! The CUDA C source of every nst kernel ([`SOURCE`], from `kernels.cu`) and its compilation
//! with NVRTC at run time: to PTX ([`compile`]), which the driver compiles for whatever GPU it
//! has, or to one GPU architecture's machine code ([`compile_cubin`]), which
//! [`crate::compiled_kernels`] keeps between runs.
//!
//! Compiling needs only `libnvrtc.so.13`, not a GPU: CI installs it from PyPI
//! (`nvidia-cuda-nvrtc`) and compiles every kernel, so a syntax or type error in the CUDA
//! source fails CI even on a machine without a GPU.

use cudarc::nvrtc::{compile_ptx_with_opts, result, CompileOptions, Ptx};
use std::ffi::{CStr, CString};

/// The CUDA C source of all kernels.
pub const SOURCE: &str = include_str!("kernels.cu");

/// Every `__global__` function in [`SOURCE`] (the names the runtime loads).
pub const KERNEL_NAMES: &[&str] = &[
    "im2col",
    "col2im_add",
    "add_bias",
    "add_bias_relu",
    "add_bias_relu_mask",
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
    "copy_window",
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

/// NVRTC's options for every compile. IEEE division and square root, and no fused
/// multiply-adds, so elementwise results track the CPU kernels' rounding (these kernels are
/// memory-bound: FMA would not make them faster). cuBLAS and cuDNN use FMA as they like.
pub const OPTIONS: [&str; 3] = ["--prec-div=true", "--prec-sqrt=true", "--fmad=false"];

/// The name NVRTC gives the source in its messages.
const NAME: &CStr = c"nst_kernels.cu";

const NO_NVRTC: &str = "the CUDA runtime compiler NVRTC (libnvrtc.so.13) could not be loaded";

/// Compiles [`SOURCE`] to PTX. Errors are one line (NVRTC's log is appended after a colon).
pub fn compile() -> Result<Ptx, String> {
    if !nvrtc_present() {
        return Err(NO_NVRTC.into());
    }
    let opts = CompileOptions {
        name: NAME.to_str().ok().map(String::from),
        options: OPTIONS.iter().map(|o| o.to_string()).collect(),
        ..Default::default()
    };
    compile_ptx_with_opts(SOURCE, opts)
        .map_err(|e| format!("NVRTC could not compile the nst kernels: {e}").replace('\n', " "))
}

/// Compiles [`SOURCE`] to the machine code (CUBIN) of compute capability `major.minor`
/// (`--gpu-architecture=sm_XY`), which the driver loads without compiling anything. Fails
/// where this NVRTC does not know the architecture. Errors are one line.
pub fn compile_cubin((major, minor): (i32, i32)) -> Result<Vec<u8>, String> {
    if !nvrtc_present() {
        return Err(NO_NVRTC.into());
    }
    let failed = |what: &str| {
        format!("NVRTC could not compile the nst kernels for sm_{major}{minor}: {what}")
    };
    let source = CString::new(SOURCE).map_err(|e| failed(&e.to_string()))?;
    let program =
        result::create_program(&source, Some(NAME)).map_err(|e| failed(&format!("{e:?}")))?;
    let mut options: Vec<String> = OPTIONS.iter().map(|o| o.to_string()).collect();
    options.push(format!("--gpu-architecture=sm_{major}{minor}"));
    // SAFETY: `program` was created above from `source`, which outlives it, and is destroyed
    // only after the last call that uses it.
    let code = unsafe {
        let code = result::compile_program(program, &options)
            .map_err(|e| failed(&format!("{e:?}: {}", program_log(program))))
            .and_then(|()| cubin(program).map_err(|e| failed(&format!("{e:?}"))));
        let _ = result::destroy_program(program);
        code
    };
    code.map_err(|e| e.replace('\n', " "))
}

/// The CUBIN of a compiled program.
///
/// # Safety
/// `program` must be live and compiled for a real architecture (`sm_XY`).
unsafe fn cubin(program: cudarc::nvrtc::sys::nvrtcProgram) -> Result<Vec<u8>, result::NvrtcError> {
    use cudarc::nvrtc::sys;
    let mut size = 0usize;
    // SAFETY: `program` is live and compiled (the caller's promise); NVRTC writes `size`
    // bytes into a buffer of that size.
    unsafe {
        sys::nvrtcGetCUBINSize(program, &mut size).result()?;
        let mut code = vec![0u8; size];
        sys::nvrtcGetCUBIN(program, code.as_mut_ptr().cast()).result()?;
        Ok(code)
    }
}

/// NVRTC's log for `program` (empty if it has none).
///
/// # Safety
/// `program` must be live.
unsafe fn program_log(program: cudarc::nvrtc::sys::nvrtcProgram) -> String {
    // SAFETY: `program` is live (the caller's promise).
    unsafe { result::get_program_log(program) }
        .map(|log| {
            let bytes: Vec<u8> = log
                .iter()
                .map(|&c| c as u8)
                .take_while(|&b| b != 0)
                .collect();
            String::from_utf8_lossy(&bytes).trim().to_string()
        })
        .unwrap_or_default()
}

/// NVRTC's version (major, minor), or `None` without NVRTC.
pub fn nvrtc_version() -> Option<(i32, i32)> {
    if !nvrtc_present() {
        return None;
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: NVRTC is loaded (checked above); writes two ints.
    let status = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    status.result().ok().map(|()| (major, minor))
}
