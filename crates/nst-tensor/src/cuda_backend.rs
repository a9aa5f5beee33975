//! The CUDA backend: tensors in GPU memory and the operations of `nst_cuda::Gpu` (NVRTC
//! kernels, cuBLAS), one call each, as the CPU backend calls nst-cpu.
//!
//! A [`CudaDevice`] is a real GPU ([`CudaDevice::new`], through the CUDA driver API loaded at
//! run time) or the emulator ([`CudaDevice::emulated`]: the same kernels compiled for the host,
//! the same argument lists, cuBLAS's semantics on the CPU). The emulator is how this backend
//! is tested on machines without a GPU: [`crate::test_device!`] runs every device test on it
//! too. Devices are opened once per process and shared (the kernels are compiled once).
//!
//! Nothing here copies to the host except [`BackendStorage::to_vec`] and the scalar results
//! of `dot`, `abs_sum` and `abs_max` (the optimizer's decisions); sums stay on the device.

use crate::backend::{BackendDevice, BackendStorage, BinaryOp};
use crate::{Device, Precision, Result, TensorError};
/// Opt-in GPU time per operation (`NST_CUDA_PROFILE=1`; see [`nst_cuda::profile`]).
pub use nst_cuda::profile;
use nst_cuda::{DeviceBuffer, Floats, Gpu};
use nst_params::{AdamParams, AlgorithmSearch, Conv2dParams, ConvAlgorithm, Pool2dParams};
use std::sync::{Mutex, OnceLock};

/// A device opened once per process (a `Gpu` is a shared handle: cloning it is cheap), or
/// why it could not be.
type Opened = std::result::Result<Gpu, String>;

fn failed(message: String) -> TensorError {
    TensorError::CudaFailed { message }
}

/// A CUDA device (or the emulator), with its kernels loaded.
#[derive(Clone)]
pub struct CudaDevice {
    gpu: Gpu,
    ordinal: usize,
    emulated: bool,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice({})", self.name())
    }
}

impl PartialEq for CudaDevice {
    fn eq(&self, other: &Self) -> bool {
        self.gpu.same_device(&other.gpu)
    }
}

impl Eq for CudaDevice {}

impl CudaDevice {
    /// Opens CUDA device `ordinal` (once per process; later calls share it), computing in
    /// f32 ([`Precision::Fp32`]), or says in one line what is missing: driver, NVRTC, cuBLAS,
    /// a device, or kernels that load.
    pub fn new(ordinal: usize) -> Result<Self> {
        static OPENED: Mutex<Vec<(usize, Opened)>> = Mutex::new(Vec::new());
        let mut opened = OPENED.lock().unwrap_or_else(|e| e.into_inner());
        let gpu = match opened.iter().find(|(o, _)| *o == ordinal) {
            Some((_, result)) => result.clone(),
            None => {
                let result = Gpu::open(ordinal);
                opened.push((ordinal, result.clone()));
                result
            }
        };
        let gpu = gpu.map_err(|reason| TensorError::CudaUnavailable { reason })?;
        Ok(CudaDevice {
            gpu,
            ordinal,
            emulated: false,
        })
    }

    /// The CUDA emulator: every kernel of the CUDA backend compiled for the host and run on
    /// the CPU (needs `g++`; slow — for tests). See `nst_cuda::emulator`.
    pub fn emulated() -> Result<Self> {
        static EMULATOR: OnceLock<Opened> = OnceLock::new();
        let gpu = EMULATOR
            .get_or_init(Gpu::emulated)
            .clone()
            .map_err(|reason| TensorError::CudaUnavailable { reason })?;
        Ok(CudaDevice {
            gpu,
            ordinal: 0,
            emulated: true,
        })
    }

    /// The same device computing convolutions in `precision` (see [`Precision`]); tensors
    /// of either are interchangeable.
    pub fn with_precision(&self, precision: Precision) -> CudaDevice {
        CudaDevice {
            gpu: self
                .gpu
                .clone()
                .with_tf32_convolutions(precision == Precision::Tf32),
            ..self.clone()
        }
    }

    /// The same device picking convolution algorithms for new shapes by `search` (see
    /// [`AlgorithmSearch`]); tensors of either are interchangeable.
    pub fn with_algorithm_search(&self, search: AlgorithmSearch) -> CudaDevice {
        CudaDevice {
            gpu: self.gpu.clone().with_algorithm_search(search),
            ..self.clone()
        }
    }

    /// How this device picks convolution algorithms for new shapes.
    pub fn algorithm_search(&self) -> AlgorithmSearch {
        self.gpu.algorithm_search()
    }

    /// How this device computes convolutions.
    pub fn precision(&self) -> Precision {
        if self.gpu.tf32_convolutions() {
            Precision::Tf32
        } else {
            Precision::Fp32
        }
    }

    /// The device's index.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// Whether this is the emulator rather than a GPU.
    pub fn is_emulated(&self) -> bool {
        self.emulated
    }

    /// What runs the kernels ("NVIDIA H100 80GB HBM3", "CUDA emulator …").
    pub fn name(&self) -> String {
        self.gpu.describe()
    }

    /// The most device memory in use at once so far, in bytes (the allocator's high-water
    /// mark), where the device reports it.
    pub fn peak_memory_bytes(&self) -> Option<u64> {
        self.gpu.runtime().peak_bytes()
    }

    /// The convolution library in use (cuDNN and its version), if any; else convolutions are
    /// im2col + cuBLAS.
    pub fn conv_library(&self) -> Option<String> {
        self.gpu.conv_library()
    }

    /// Device memory a run could still use (free, plus what the allocator holds unused),
    /// where the device reports it.
    pub fn available_memory_bytes(&self) -> Option<u64> {
        self.gpu.runtime().available_bytes()
    }

    fn storage(&self, buf: Floats) -> CudaStorage {
        CudaStorage {
            buf,
            device: Device::Cuda(self.clone()),
        }
    }
}

/// A tensor's data in device memory.
#[derive(Debug)]
pub struct CudaStorage {
    buf: Floats,
    device: Device,
}

impl CudaStorage {
    fn gpu(&self) -> &Gpu {
        match &self.device {
            Device::Cuda(d) => &d.gpu,
            Device::Cpu => unreachable!("CUDA storage always holds a CUDA device"),
        }
    }

    fn cuda_device(&self) -> &CudaDevice {
        match &self.device {
            Device::Cuda(d) => d,
            Device::Cpu => unreachable!("CUDA storage always holds a CUDA device"),
        }
    }

    /// Wraps a result of this storage's device.
    fn wrap(&self, r: nst_cuda::GpuResult<Floats>) -> Result<Self> {
        Ok(self.cuda_device().storage(r.map_err(failed)?))
    }
}

impl BackendDevice for CudaDevice {
    type Storage = CudaStorage;

    fn storage_from_vec(&self, data: Vec<f32>) -> Result<CudaStorage> {
        Ok(self.storage(self.gpu.upload(&data).map_err(failed)?))
    }

    fn storage_full(&self, value: f32, n: usize) -> Result<CudaStorage> {
        Ok(self.storage(self.gpu.full(value, n).map_err(failed)?))
    }

    fn release_cached_memory(&self) {
        self.gpu.runtime().release_cached_memory();
    }
}

impl BackendStorage for CudaStorage {
    /// Each window's winner, `2·row + column`, one byte an output.
    type PoolIndices = DeviceBuffer<u8>;
    /// 32 elements per word, nst-cpu's layout.
    type ReluMask = DeviceBuffer<u32>;
    /// One double in device memory, with the device that holds it.
    type Scalar = (DeviceBuffer<f64>, CudaDevice);

    fn len(&self) -> usize {
        self.buf.len()
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn to_vec(&self) -> Result<Vec<f32>> {
        self.buf.to_vec().map_err(failed)
    }

    fn try_clone(&self) -> Result<Self> {
        self.wrap(self.buf.try_clone())
    }

    /// The algorithm choice is the CPU's (Winograd or not); the GPU has its own.
    fn conv2d(
        &self,
        w: &Self,
        b: Option<&Self>,
        p: &Conv2dParams,
        _algo: ConvAlgorithm,
        relu: bool,
    ) -> Result<Self> {
        self.wrap(
            self.gpu()
                .conv2d(&self.buf, &w.buf, b.map(|b| &b.buf), p, relu),
        )
    }

    fn conv2d_backward_input(
        &self,
        w: &Self,
        p: &Conv2dParams,
        algo: ConvAlgorithm,
    ) -> Result<Self> {
        let mut dx = self.wrap(self.gpu().zeros(p.input_len()))?;
        self.conv2d_backward_input_accumulate(w, p, algo, &mut dx)?;
        Ok(dx)
    }

    fn conv2d_backward_input_accumulate(
        &self,
        w: &Self,
        p: &Conv2dParams,
        _algo: ConvAlgorithm,
        dx: &mut Self,
    ) -> Result<()> {
        self.gpu()
            .conv2d_backward_input_add(&self.buf, &w.buf, p, &mut dx.buf)
            .map_err(failed)
    }

    fn conv2d_backward_weight(
        &self,
        dy: &Self,
        p: &Conv2dParams,
        with_bias: bool,
    ) -> Result<(Self, Option<Self>)> {
        let (dw, db) = self
            .gpu()
            .conv2d_backward_weight(&self.buf, &dy.buf, p, with_bias)
            .map_err(failed)?;
        let device = self.cuda_device();
        Ok((device.storage(dw), db.map(|db| device.storage(db))))
    }

    fn relu(&self) -> Result<Self> {
        self.wrap(self.gpu().relu(&self.buf))
    }

    fn relu_mask(&self) -> Result<DeviceBuffer<u32>> {
        self.gpu().relu_mask(&self.buf).map_err(failed)
    }

    fn apply_relu_mask(&mut self, mask: &DeviceBuffer<u32>) -> Result<()> {
        let gpu = self.cuda_device().gpu.clone();
        gpu.apply_relu_mask(&mut self.buf, mask).map_err(failed)
    }

    fn max_pool2d(&self, p: &Pool2dParams) -> Result<(Self, DeviceBuffer<u8>)> {
        let (y, winners) = self.gpu().max_pool(&self.buf, p).map_err(failed)?;
        Ok((self.cuda_device().storage(y), winners))
    }

    fn max_pool2d_backward(&self, indices: &DeviceBuffer<u8>, p: &Pool2dParams) -> Result<Self> {
        self.wrap(self.gpu().max_pool_backward(&self.buf, indices, p))
    }

    fn avg_pool2d(&self, p: &Pool2dParams) -> Result<Self> {
        self.wrap(self.gpu().avg_pool(&self.buf, p))
    }

    fn avg_pool2d_backward(&self, p: &Pool2dParams) -> Result<Self> {
        self.wrap(self.gpu().avg_pool_backward(&self.buf, p))
    }

    fn matmul(
        &self,
        b: &Self,
        m: usize,
        k: usize,
        n: usize,
        trans_a: bool,
        trans_b: bool,
    ) -> Result<Self> {
        self.wrap(
            self.gpu()
                .matmul(&self.buf, &b.buf, (m, k, n), trans_a, trans_b),
        )
    }

    fn gram(&self, batch: usize, c: usize, m: usize, scale: f32) -> Result<Self> {
        self.wrap(self.gpu().gram(&self.buf, batch, c, m, scale))
    }

    fn gram_backward(
        &self,
        dg: &Self,
        batch: usize,
        c: usize,
        m: usize,
        scale: f32,
    ) -> Result<Self> {
        self.wrap(
            self.gpu()
                .gram_backward(&self.buf, &dg.buf, batch, c, m, scale),
        )
    }

    fn gram_backward_in_place(
        &mut self,
        dg: &Self,
        batch: usize,
        c: usize,
        m: usize,
        scale: f32,
    ) -> Result<()> {
        let gpu = self.cuda_device().gpu.clone();
        gpu.gram_backward_in_place(&mut self.buf, &dg.buf, batch, c, m, scale)
            .map_err(failed)
    }

    fn transpose(&self, rows: usize, cols: usize) -> Result<Self> {
        self.wrap(self.gpu().transpose(&self.buf, rows, cols))
    }

    fn binary(&self, b: &Self, op: BinaryOp) -> Result<Self> {
        let gpu = self.gpu();
        self.wrap(match op {
            BinaryOp::Add => gpu.axpby(1.0, &self.buf, 1.0, &b.buf),
            BinaryOp::Sub => gpu.axpby(1.0, &self.buf, -1.0, &b.buf),
            BinaryOp::Mul => gpu.scaled_mul(1.0, &self.buf, &b.buf),
        })
    }

    fn scaled_mul(&self, b: &Self, s: f32) -> Result<Self> {
        self.wrap(self.gpu().scaled_mul(s, &self.buf, &b.buf))
    }

    fn scale(&self, s: f32) -> Result<Self> {
        self.wrap(self.gpu().scale(s, &self.buf))
    }

    fn square(&self) -> Result<Self> {
        self.wrap(self.gpu().scaled_mul(1.0, &self.buf, &self.buf))
    }

    fn add_assign(&mut self, other: &Self) -> Result<()> {
        let gpu = self.cuda_device().gpu.clone();
        gpu.axpby_in_place(1.0, &mut self.buf, 1.0, &other.buf)
            .map_err(failed)
    }

    fn sum(&self) -> Result<Self> {
        self.wrap(self.gpu().sum(&self.buf))
    }

    fn broadcast(&self, n: usize) -> Result<Self> {
        self.wrap(self.gpu().broadcast(&self.buf, n))
    }

    fn squared_distance(&self, b: &Self) -> Result<Self> {
        self.wrap(self.gpu().squared_distance(&self.buf, &b.buf))
    }

    fn scaled_difference_in_place(&mut self, b: &Self, g: &Self, s: f32) -> Result<()> {
        let gpu = self.cuda_device().gpu.clone();
        gpu.scaled_difference_in_place(&mut self.buf, &b.buf, &g.buf, s)
            .map_err(failed)
    }

    fn axpby(&self, alpha: f32, y: &Self, beta: f32) -> Result<Self> {
        self.wrap(self.gpu().axpby(alpha, &self.buf, beta, &y.buf))
    }

    fn dot(&self, y: &Self) -> Result<f64> {
        self.gpu().dot(&self.buf, &y.buf).map_err(failed)
    }

    fn dot_scalar(&self, y: &Self) -> Result<Self::Scalar> {
        let d = self
            .gpu()
            .dot_on_device(&self.buf, &y.buf)
            .map_err(failed)?;
        Ok((d, self.cuda_device().clone()))
    }

    fn scalar_scale((a, dev): &Self::Scalar, r: f64) -> Result<Self::Scalar> {
        Ok((dev.gpu.scalar_scale(a, r).map_err(failed)?, dev.clone()))
    }

    fn scalar_sub((a, dev): &Self::Scalar, (b, _): &Self::Scalar) -> Result<Self::Scalar> {
        Ok((dev.gpu.scalar_sub(a, b).map_err(failed)?, dev.clone()))
    }

    fn scalar_value((a, _): &Self::Scalar) -> Result<f64> {
        Ok(a.to_vec().map_err(failed)?[0])
    }

    fn add_scaled(&self, y: &Self, (coef, _): &Self::Scalar, factor: f64) -> Result<Self> {
        self.wrap(self.gpu().axpy_device_coef(&self.buf, &y.buf, coef, factor))
    }

    fn dot_scalar_scaled(&self, y: &Self, r: f64) -> Result<Self::Scalar> {
        let d = self
            .gpu()
            .dot_scaled_on_device(&self.buf, &y.buf, r)
            .map_err(failed)?;
        Ok((d, self.cuda_device().clone()))
    }

    fn add_scaled_dot(
        &self,
        y: &Self,
        (coef, _): &Self::Scalar,
        minus: Option<&Self::Scalar>,
        factor: f64,
        dot_with: Option<(&Self, f64)>,
    ) -> Result<(Self, Option<Self::Scalar>)> {
        let (out, dot) = self
            .gpu()
            .axpy_coef_dot(
                &self.buf,
                &y.buf,
                (coef, minus.map(|(m, _)| m)),
                factor,
                dot_with.map(|(v, r)| (&v.buf, r)),
            )
            .map_err(failed)?;
        let dev = self.cuda_device();
        Ok((dev.storage(out), dot.map(|d| (d, dev.clone()))))
    }

    fn abs_sum(&self) -> Result<f64> {
        self.gpu().abs_sum(&self.buf).map_err(failed)
    }

    fn abs_max(&self) -> Result<f32> {
        self.gpu().abs_max(&self.buf).map_err(failed)
    }

    fn adam_update(&mut self, g: &Self, m: &mut Self, v: &mut Self, p: &AdamParams) -> Result<()> {
        let gpu = self.cuda_device().gpu.clone();
        gpu.adam_update(&mut self.buf, &g.buf, &mut m.buf, &mut v.buf, p)
            .map_err(failed)
    }
}
