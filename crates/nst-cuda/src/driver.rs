//! [`Runtime`] on a real GPU: the CUDA driver API and cuBLAS through cudarc, both loaded at
//! run time.
//!
//! - Memory comes from `cuMemAllocAsync`, the device's stream-ordered pool, with its release
//!   threshold raised to "keep everything": after the first iteration every allocation is a
//!   reuse, without a caching allocator of our own. [`Runtime::release_cached_memory`] trims
//!   the pool (between image scales).
//! - All work goes to one non-blocking stream; only downloads wait for it.
//! - Kernels are the NVRTC-compiled `kernels.cu`, launched with `cuLaunchKernel` and the
//!   argument array of [`KernelParams`].
//! - Convolutions (forward and input gradient) go to cuDNN where it loads
//!   ([`crate::cudnn`]); without it, to im2col + SGEMM, and [`Runtime::describe`] says why.
//!
//! Every driver call first makes the context current on the calling thread: `nst serve` runs
//! jobs on a worker thread, and the driver API's context is per thread.

use crate::blas::Sgemm;
use crate::runtime::{Arg, ConvEngine, DevicePtr, GpuResult, KernelParams, Runtime};
use crate::{compiled_kernels, kernels};
use cudarc::cublas::{sys::cublasMath_t, CudaBlas};
use cudarc::driver::sys::{self, CUmemPool_attribute};
use cudarc::driver::{CudaContext, CudaFunction, CudaStream};
use std::collections::HashMap;
use std::sync::Arc;

/// Device `ordinal` with the nst kernels loaded and a cuBLAS handle on its stream.
///
/// Fields drop in order: cuDNN's handle first, while the stream it works on and the context
/// are alive (the stream goes with the last of `stream` and `blas`, the context after both).
pub struct CudaRuntime {
    /// cuDNN, or why not (then convolutions are im2col + SGEMM).
    cudnn: Result<crate::cudnn::Cudnn, String>,
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    functions: HashMap<&'static str, CudaFunction>,
    pool: sys::CUmemoryPool,
    name: String,
}

impl Drop for CudaRuntime {
    /// Gives cuDNN's workspace back to the pool (the fields then drop, cuDNN first).
    fn drop(&mut self) {
        if let Ok(c) = &self.cudnn {
            c.release(self);
        }
    }
}

// SAFETY: the memory pool handle is a driver object usable from any thread whose current
// context is this device's (every method binds it first); the rest is Send + Sync already.
unsafe impl Send for CudaRuntime {}
// SAFETY: as above; the driver API is thread-safe for these calls.
unsafe impl Sync for CudaRuntime {}

fn err(what: &str, e: impl std::fmt::Debug) -> String {
    format!("CUDA {what} failed: {e:?}")
}

impl CudaRuntime {
    /// Opens device `ordinal`, compiles and loads the kernels, creates the cuBLAS handle.
    /// Checks first that every library loads ([`crate::probe`]): cudarc panics on a missing
    /// one.
    pub fn new(ordinal: usize) -> GpuResult<CudaRuntime> {
        if let crate::Probe::Unavailable(why) = crate::probe() {
            return Err(why);
        }
        let context = CudaContext::new(ordinal).map_err(|e| err("device open", e))?;
        let name = context.name().unwrap_or_else(|_| "unknown GPU".into());
        let stream = context
            .new_stream()
            .map_err(|e| err("stream creation", e))?;
        let compiling = std::time::Instant::now();
        let arch = context
            .compute_capability()
            .map_err(|e| err("compute capability query", e))?;
        let cache = crate::cache_dir::default_dir();
        let kernels = compiled_kernels::load(cache.as_deref(), arch)?;
        let mut origin = kernels.origin;
        let module = match context.load_module(kernels.code.for_driver()) {
            Ok(module) => module,
            // CUBIN this driver will not load (kept or just compiled: NVRTC gives the same
            // bytes again): PTX, which the driver compiles itself.
            Err(e) if !matches!(origin, compiled_kernels::Origin::Ptx(_)) => {
                let ptx = compiled_kernels::ptx(format!("the driver refused CUBIN: {e:?}"))?;
                origin = ptx.origin;
                context
                    .load_module(ptx.code.for_driver())
                    .map_err(|e| err("module load", e))?
            }
            Err(e) => return Err(err("module load", e)),
        };
        crate::profile::record(
            || format!("{} + module load", origin.describe()),
            compiling.elapsed(),
        );
        let mut functions = HashMap::new();
        for &kernel in kernels::KERNEL_NAMES {
            let f = module
                .load_function(kernel)
                .map_err(|e| err("kernel load", e))?;
            functions.insert(kernel, f);
        }
        let blas = CudaBlas::new(stream.clone()).map_err(|e| err("cuBLAS init", e))?;
        let mut pool = std::ptr::null_mut();
        // SAFETY: the context is current (CudaContext::new binds it); `pool` receives the
        // handle; the attribute takes a u64.
        unsafe {
            sys::cuDeviceGetDefaultMemPool(&mut pool, context.cu_device())
                .result()
                .map_err(|e| err("memory pool lookup", e))?;
            let mut keep_all = u64::MAX;
            sys::cuMemPoolSetAttribute(
                pool,
                CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut keep_all as *mut u64 as *mut _,
            )
            .result()
            .map_err(|e| err("memory pool setup", e))?;
        }
        // NST_CUDNN=0 keeps every convolution on the im2col + cuBLAS path (a way round a cuDNN
        // that misbehaves, and the comparison device-check.sh makes).
        let cudnn = if std::env::var("NST_CUDNN").is_ok_and(|v| v == "0") {
            Err("cuDNN turned off by NST_CUDNN=0".to_string())
        } else {
            let mut driver = 0;
            // SAFETY: writes one int.
            let _ = unsafe { sys::cuDriverGetVersion(&mut driver) };
            let device = format!("{name}, CUDA driver API {driver}");
            crate::cudnn::Cudnn::new(stream.cu_stream(), &device)
        };
        Ok(CudaRuntime {
            cudnn,
            context,
            stream,
            blas,
            functions,
            pool,
            name,
        })
    }

    fn bind(&self) -> GpuResult<()> {
        self.context
            .bind_to_thread()
            .map_err(|e| err("context binding", e))
    }

    fn raw_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }
}

impl Runtime for CudaRuntime {
    fn describe(&self) -> String {
        match &self.cudnn {
            Ok(c) => format!("{}, {}", self.name, c.describe()),
            Err(why) => format!("{}, im2col + cuBLAS: {why}", self.name),
        }
    }

    fn alloc(&self, bytes: usize) -> GpuResult<DevicePtr> {
        self.bind()?;
        // SAFETY: the stream belongs to the current context; the memory is only used on it.
        unsafe { cudarc::driver::result::malloc_async(self.raw_stream(), bytes) }
            .map_err(|e| crate::runtime::out_of_memory(bytes, format!("{e:?}")))
    }

    unsafe fn free(&self, ptr: DevicePtr) {
        if self.bind().is_ok() {
            // SAFETY: the caller gives a live allocation of this stream's pool. A failure here
            // (a context already torn down at exit) leaves nothing to clean up.
            let _ = unsafe { cudarc::driver::result::free_async(ptr, self.raw_stream()) };
        }
    }

    unsafe fn upload(&self, dst: DevicePtr, src: &[u8]) -> GpuResult<()> {
        self.bind()?;
        // SAFETY: the caller guarantees dst's size. Waiting afterwards means `src` (pageable
        // host memory) is not read after this returns.
        unsafe { cudarc::driver::result::memcpy_htod_async(dst, src, self.raw_stream()) }
            .map_err(|e| err("copy to the GPU", e))?;
        self.synchronize()
    }

    unsafe fn download(&self, src: DevicePtr, dst: &mut [u8]) -> GpuResult<()> {
        self.bind()?;
        // SAFETY: the caller guarantees src's size; we wait before `dst` is read.
        unsafe { cudarc::driver::result::memcpy_dtoh_async(dst, src, self.raw_stream()) }
            .map_err(|e| err("copy to the host", e))?;
        self.synchronize()
    }

    unsafe fn copy(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> GpuResult<()> {
        self.bind()?;
        // SAFETY: the caller guarantees both sizes.
        unsafe { cudarc::driver::result::memcpy_dtod_async(dst, src, bytes, self.raw_stream()) }
            .map_err(|e| err("device copy", e))
    }

    unsafe fn fill_u32(&self, dst: DevicePtr, value: u32, count: usize) -> GpuResult<()> {
        self.bind()?;
        // SAFETY: the caller guarantees 4·count bytes at dst.
        unsafe { sys::cuMemsetD32Async(dst, value, count, self.raw_stream()) }
            .result()
            .map_err(|e| err("memset", e))
    }

    unsafe fn launch(
        &self,
        name: &'static str,
        grid: u32,
        block: u32,
        args: &[Arg],
    ) -> GpuResult<()> {
        self.bind()?;
        let f = self
            .functions
            .get(name)
            .ok_or_else(|| format!("no CUDA kernel named {name}"))?;
        let mut params = KernelParams::new(args);
        let mut pointers = params.pointers();
        // SAFETY: the caller guarantees the arguments match the kernel; `params` outlives the
        // call (cuLaunchKernel copies the values before returning).
        unsafe {
            cudarc::driver::result::launch_kernel(
                f.cu_function(),
                (grid, 1, 1),
                (block, 1, 1),
                0,
                self.raw_stream(),
                &mut pointers,
            )
        }
        .map_err(|e| err(name, e))
    }

    unsafe fn sgemm(
        &self,
        call: &Sgemm,
        a: DevicePtr,
        b: DevicePtr,
        c: DevicePtr,
    ) -> GpuResult<()> {
        self.bind()?;
        let mode = if call.tf32 {
            cublasMath_t::CUBLAS_TF32_TENSOR_OP_MATH
        } else {
            cublasMath_t::CUBLAS_DEFAULT_MATH
        };
        // SAFETY: a valid handle; the mode applies to the calls that follow on it.
        unsafe { cudarc::cublas::sys::cublasSetMathMode(*self.blas.handle(), mode) }
            .result()
            .map_err(|e| err("cuBLAS math mode", e))?;
        let g = call.config();
        // SAFETY: the caller guarantees a valid call and the operands' extents; α and β are
        // host values (the handle's default pointer mode).
        unsafe {
            cudarc::cublas::result::sgemm(
                *self.blas.handle(),
                g.transa,
                g.transb,
                g.m,
                g.n,
                g.k,
                &g.alpha,
                a as *const f32,
                g.lda,
                b as *const f32,
                g.ldb,
                &g.beta,
                c as *mut f32,
                g.ldc,
            )
        }
        .map_err(|e| err("SGEMM", e))
    }

    fn synchronize(&self) -> GpuResult<()> {
        self.bind()?;
        self.stream.synchronize().map_err(|e| err("kernel", e))
    }

    fn conv_engine(&self) -> Option<&dyn ConvEngine> {
        self.cudnn.as_ref().ok().map(|c| c as &dyn ConvEngine)
    }

    fn release_cached_memory(&self) {
        if let Ok(c) = &self.cudnn {
            c.release(self);
        }
        if self.synchronize().is_ok() {
            // SAFETY: the pool belongs to this device; trimming frees only unused memory.
            let _ = unsafe { sys::cuMemPoolTrimTo(self.pool, 0) };
        }
    }

    fn available_bytes(&self) -> Option<u64> {
        self.bind().ok()?;
        let (free, _total) = cudarc::driver::result::mem_get_info().ok()?;
        let pool = |attr| {
            let mut v = 0u64;
            // SAFETY: the attribute is a u64 the driver writes.
            unsafe { sys::cuMemPoolGetAttribute(self.pool, attr, &mut v as *mut u64 as *mut _) }
                .result()
                .ok()
                .map(|_| v)
        };
        let reserved = pool(CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)?;
        let used = pool(CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?;
        Some(free as u64 + reserved.saturating_sub(used))
    }

    fn peak_bytes(&self) -> Option<u64> {
        let mut high = 0u64;
        self.bind().ok()?;
        // SAFETY: the attribute is a u64 the driver writes.
        unsafe {
            sys::cuMemPoolGetAttribute(
                self.pool,
                CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
                &mut high as *mut u64 as *mut _,
            )
        }
        .result()
        .ok()?;
        Some(high)
    }
}
