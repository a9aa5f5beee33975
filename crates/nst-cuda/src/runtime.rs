//! The seam between nst's CUDA code and what executes it: device memory, kernel launches and
//! cuBLAS products, as one object-safe trait with two implementations.
//!
//! - [`crate::driver::CudaRuntime`]: a real GPU through the CUDA driver API (cudarc, loaded
//!   at run time): `cuMemAllocAsync` from the device's memory pool, `cuLaunchKernel` on the
//!   NVRTC-compiled kernels, `cublasSgemm`.
//! - `emulator::Emulator` (feature `emulator`): the same `kernels.cu` compiled as C++
//!   for the host (`host/cuda_host.h`), "device" pointers that are host addresses, and a GEMM
//!   with cuBLAS's column-major semantics. It lets everything above this trait — every op of
//!   [`crate::Gpu`] and nst-tensor's CUDA storage — run and be tested on a machine with no
//!   GPU, with the exact argument lists a GPU would receive.
//!
//! Kernel arguments travel as cuLaunchKernel takes them (an array of pointers to each
//! argument's value), so an argument-order or argument-type mistake breaks the emulator
//! exactly as it would break a GPU.

use crate::blas::Sgemm;
use nst_params::{AlgorithmSearch, Conv2dParams, Layout};
use std::ffi::c_void;
use std::marker::PhantomData;
use std::sync::Arc;

/// A device address: a `CUdeviceptr` on a GPU, a host address in the emulator.
pub type DevicePtr = u64;

/// A one-line error for the user (driver, cuBLAS, out of memory).
pub type GpuResult<T> = Result<T, String>;

/// The out-of-memory error of every runtime: how much failed, and what to do about it.
pub fn out_of_memory(bytes: usize, detail: impl std::fmt::Display) -> String {
    format!(
        "the GPU could not allocate {} ({detail}); try a smaller --size",
        human_bytes(bytes)
    )
}

/// `bytes` in the largest binary unit that leaves at least 1 of it ("512 bytes", "4.0 KiB",
/// "2.5 GiB"): a failed allocation of a few words does not read "0.0 MiB".
fn human_bytes(bytes: usize) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// One kernel argument, of one of the C types our kernels take.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    /// A pointer (`float*`, `const int*`, …) to device memory.
    Ptr(DevicePtr),
    /// `int`.
    I32(i32),
    /// `long long`.
    I64(i64),
    /// `float`.
    F32(f32),
    /// `double`.
    F64(f64),
}

impl Arg {
    /// The argument's bytes in an 8-byte slot (little-endian, so a 4-byte value sits at the
    /// start, where the kernel reads it).
    fn slot(self) -> u64 {
        match self {
            Arg::Ptr(p) => p,
            Arg::I32(v) => u64::from(v as u32),
            Arg::I64(v) => v as u64,
            Arg::F32(v) => u64::from(v.to_bits()),
            Arg::F64(v) => v.to_bits(),
        }
    }
}

/// Arguments laid out for cuLaunchKernel: `params()[i]` points at argument i's value.
pub struct KernelParams {
    slots: Vec<u64>,
}

impl KernelParams {
    /// Packs `args` into their slots.
    pub fn new(args: &[Arg]) -> Self {
        KernelParams {
            slots: args.iter().map(|a| a.slot()).collect(),
        }
    }

    /// The pointer array; valid while `self` is alive and not moved.
    pub fn pointers(&mut self) -> Vec<*mut c_void> {
        self.slots
            .iter_mut()
            .map(|s| s as *mut u64 as *mut c_void)
            .collect()
    }
}

/// How a convolution call asks the library to compute: TF32 or f32, and how an algorithm is
/// picked for a shape seen for the first time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConvOptions {
    /// Round the operands to TF32 (tensor cores); else f32 throughout.
    pub tf32: bool,
    /// Measure the candidates, or take the library's heuristic ranking.
    pub search: AlgorithmSearch,
    /// How x, y (and dx, dy) lie in memory; with [`Layout::Nhwc`] the weights are KRSC (each
    /// output channel's C values per kernel tap side by side), as cuDNN's NHWC filters are.
    pub layout: Layout,
}

/// Convolutions by a vendor library (cuDNN on a GPU), where a runtime has one: f32
/// cross-correlation of all `p.batch` images, NCHW or NHWC ([`ConvOptions::layout`]), on
/// device memory of `runtime`.
pub trait ConvEngine: Send + Sync {
    /// The library and its version, for the user.
    fn describe(&self) -> String;
    /// The most values one tensor of a call may have: cuDNN's legacy API indexes with 32
    /// bits (a larger tensor is `CUDNN_STATUS_NOT_SUPPORTED`), so [`crate::Gpu`] splits
    /// larger convolutions into calls on groups of channels.
    fn max_elements(&self) -> usize {
        i32::MAX as usize
    }
    /// `y = conv(x, w)` (no bias) for `operands` `(x, w, y)`, or `y += conv(x, w)` when
    /// `accumulate`.
    ///
    /// # Safety
    /// `x`, `w` and `y` cover the input, weights and output of `p`, on `runtime`.
    unsafe fn forward(
        &self,
        runtime: &dyn Runtime,
        p: &Conv2dParams,
        options: ConvOptions,
        operands: (DevicePtr, DevicePtr, DevicePtr),
        accumulate: bool,
    ) -> GpuResult<()>;
    /// `dx = ∂L/∂x` from `dy` for `operands` `(dy, w, dx)` (the convolution's input
    /// gradient), or `dx += ∂L/∂x` with `accumulate`. Without it dx is not read: it may hold
    /// anything, NaN included (cuDNN's β = 0).
    ///
    /// # Safety
    /// `dy`, `w` and `dx` cover the output, weights and input of `p`, on `runtime`.
    unsafe fn backward_data(
        &self,
        runtime: &dyn Runtime,
        p: &Conv2dParams,
        options: ConvOptions,
        operands: (DevicePtr, DevicePtr, DevicePtr),
        accumulate: bool,
    ) -> GpuResult<()>;
}

/// What executes nst's CUDA work. All calls are ordered as on one CUDA stream: a call sees
/// the effects of every earlier one.
pub trait Runtime: Send + Sync {
    /// What runs the kernels, for the user ("NVIDIA H100 80GB HBM3", "CUDA emulator …").
    fn describe(&self) -> String;
    /// `bytes` of uninitialised device memory (a one-line out-of-memory error names the
    /// size).
    fn alloc(&self, bytes: usize) -> GpuResult<DevicePtr>;
    /// Returns memory from [`Runtime::alloc`].
    ///
    /// # Safety
    /// `ptr` came from this runtime's `alloc` and is not used again.
    unsafe fn free(&self, ptr: DevicePtr);
    /// Copies host bytes to device memory.
    ///
    /// # Safety
    /// `dst` points at `src.len()` bytes of live device memory of this runtime.
    unsafe fn upload(&self, dst: DevicePtr, src: &[u8]) -> GpuResult<()>;
    /// Copies device bytes to the host, after all earlier work has finished.
    ///
    /// # Safety
    /// `src` points at `dst.len()` bytes of live device memory of this runtime.
    unsafe fn download(&self, src: DevicePtr, dst: &mut [u8]) -> GpuResult<()>;
    /// Copies `bytes` between device buffers.
    ///
    /// # Safety
    /// Both point at `bytes` of live device memory of this runtime; they do not overlap.
    unsafe fn copy(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> GpuResult<()>;
    /// Sets `count` 32-bit words at `dst` to `value` (`cuMemsetD32`).
    ///
    /// # Safety
    /// `dst` points at `4·count` bytes of live device memory of this runtime.
    unsafe fn fill_u32(&self, dst: DevicePtr, value: u32, count: usize) -> GpuResult<()>;
    /// Runs kernel `name` of `kernels.cu` on `grid` blocks of `block` threads.
    ///
    /// # Safety
    /// `args` match the kernel's parameters in number, order and type, and every pointer
    /// covers what the kernel reads and writes for those arguments.
    unsafe fn launch(
        &self,
        name: &'static str,
        grid: u32,
        block: u32,
        args: &[Arg],
    ) -> GpuResult<()>;
    /// One `cublasSgemm` call: `C = α·op(A)·op(B) + β·C`, column-major.
    ///
    /// # Safety
    /// The call is valid ([`Sgemm::is_valid`]) and `a`, `b`, `c` cover its extents.
    unsafe fn sgemm(&self, call: &Sgemm, a: DevicePtr, b: DevicePtr, c: DevicePtr)
        -> GpuResult<()>;
    /// The most blocks [`crate::Gpu`] asks a launch for (the emulator runs no more than
    /// this; grid-stride loops stay correct with fewer). Per-block outputs are sized by it.
    fn max_grid(&self) -> u32 {
        65_535
    }
    /// Waits for all work so far (errors of earlier asynchronous work surface here).
    fn synchronize(&self) -> GpuResult<()>;
    /// The convolution library, where this runtime has one (else convolutions are im2col +
    /// SGEMM).
    fn conv_engine(&self) -> Option<&dyn ConvEngine> {
        None
    }
    /// Returns memory kept for reuse (the allocator's pool) to the device.
    fn release_cached_memory(&self);
    /// The most device memory in use at once since the last reset, in bytes, where the
    /// runtime tracks it.
    fn peak_bytes(&self) -> Option<u64>;
    /// Device memory a run could still use, in bytes: free memory plus what the allocator
    /// holds unused. `None` where there is no limit to speak of.
    fn available_bytes(&self) -> Option<u64>;
}

/// Element types device buffers hold (plain 1-, 4- or 8-byte values with no invalid bit
/// patterns).
pub trait DeviceValue: Copy + Default + 'static {}
impl DeviceValue for f32 {}
impl DeviceValue for f64 {}
impl DeviceValue for i32 {}
impl DeviceValue for u32 {}
impl DeviceValue for u8 {}

/// `len` values of `T` in device memory, freed on drop.
pub struct DeviceBuffer<T: DeviceValue> {
    ptr: DevicePtr,
    len: usize,
    runtime: Arc<dyn Runtime>,
    _values: PhantomData<T>,
}

impl<T: DeviceValue> std::fmt::Debug for DeviceBuffer<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DeviceBuffer<{}>[{}]",
            std::any::type_name::<T>(),
            self.len
        )
    }
}

impl<T: DeviceValue> DeviceBuffer<T> {
    /// Uninitialised memory for `len` values, in whole 32-bit words (at least one), so the
    /// pointer is always a real allocation and [`DeviceBuffer::zeros`] can fill words.
    pub fn uninit(runtime: &Arc<dyn Runtime>, len: usize) -> GpuResult<Self> {
        let ptr = runtime.alloc((len * size_of::<T>()).next_multiple_of(4).max(4))?;
        Ok(DeviceBuffer {
            ptr,
            len,
            runtime: runtime.clone(),
            _values: PhantomData,
        })
    }

    /// `len` zeros.
    pub fn zeros(runtime: &Arc<dyn Runtime>, len: usize) -> GpuResult<Self> {
        let buf = Self::uninit(runtime, len)?;
        // SAFETY: `uninit` allocated the bytes rounded up to whole words.
        unsafe { runtime.fill_u32(buf.ptr, 0, buf.bytes().div_ceil(4))? };
        Ok(buf)
    }

    /// A copy of host values.
    pub fn from_slice(runtime: &Arc<dyn Runtime>, values: &[T]) -> GpuResult<Self> {
        let buf = Self::uninit(runtime, values.len())?;
        // SAFETY: `T` is a plain value type (DeviceValue), so its bytes can be read; the
        // buffer has room for all of them.
        unsafe {
            let bytes =
                std::slice::from_raw_parts(values.as_ptr() as *const u8, size_of_val(values));
            runtime.upload(buf.ptr, bytes)?;
        }
        Ok(buf)
    }

    /// The values, copied to the host (waits for earlier work).
    pub fn to_vec(&self) -> GpuResult<Vec<T>> {
        let mut out = vec![T::default(); self.len];
        // SAFETY: `out` has the buffer's byte length and any bit pattern is a valid `T`.
        unsafe {
            let bytes = std::slice::from_raw_parts_mut(out.as_mut_ptr() as *mut u8, self.bytes());
            self.runtime.download(self.ptr, bytes)?;
        }
        Ok(out)
    }

    /// A copy on the same device.
    pub fn try_clone(&self) -> GpuResult<Self> {
        let copy = Self::uninit(&self.runtime, self.len)?;
        // SAFETY: both buffers hold self.bytes() bytes and are distinct allocations.
        unsafe { self.runtime.copy(copy.ptr, self.ptr, self.bytes())? };
        Ok(copy)
    }

    /// Number of values.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the buffer holds no values.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Size in bytes.
    pub fn bytes(&self) -> usize {
        self.len * size_of::<T>()
    }

    /// The device address of value `index` (for kernel arguments and products over part of
    /// a buffer). Panics when `index > len`.
    pub fn ptr_at(&self, index: usize) -> DevicePtr {
        assert!(
            index <= self.len,
            "offset {index} past a buffer of {}",
            self.len
        );
        self.ptr + (index * size_of::<T>()) as u64
    }

    /// The buffer's start as a kernel argument.
    pub fn arg(&self) -> Arg {
        Arg::Ptr(self.ptr)
    }

    /// The runtime that owns the memory.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }
}

impl<T: DeviceValue> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        // SAFETY: the pointer came from this runtime's alloc and this is its only owner.
        unsafe { self.runtime.free(self.ptr) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_sit_where_a_kernel_reads_them() {
        let mut p = KernelParams::new(&[
            Arg::Ptr(0x1234_5678_9abc),
            Arg::I32(-2),
            Arg::I64(-3),
            Arg::F32(1.5),
        ]);
        let ptrs = p.pointers();
        // SAFETY: each pointer points at a live u64 slot; reading a prefix of it as a
        // smaller type is what the kernel does.
        unsafe {
            assert_eq!(*(ptrs[0] as *const u64), 0x1234_5678_9abc);
            assert_eq!(*(ptrs[1] as *const i32), -2);
            assert_eq!(*(ptrs[2] as *const i64), -3);
            assert_eq!(*(ptrs[3] as *const f32), 1.5);
        }
    }

    #[test]
    fn out_of_memory_names_the_size_in_a_unit_that_shows_it() {
        let sizes = [
            (8, "8 bytes"),
            (1023, "1023 bytes"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (64 << 20, "64.0 MiB"),
            (44_500_000_000, "41.4 GiB"),
            (3 << 40, "3.0 TiB"),
            (5 << 50, "5120.0 TiB"),
        ];
        for (bytes, shown) in sizes {
            assert_eq!(human_bytes(bytes), shown);
        }
        let e = out_of_memory(12, "CUDA_ERROR_OUT_OF_MEMORY");
        assert_eq!(
            e,
            "the GPU could not allocate 12 bytes (CUDA_ERROR_OUT_OF_MEMORY); try a smaller --size"
        );
    }
}
