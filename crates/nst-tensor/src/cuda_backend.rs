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
use nst_params::{
    AdamParams, AlgorithmSearch, Conv2dParams, ConvAlgorithm, Layout, Pool2dParams, Window2dParams,
};
use std::sync::{Mutex, OnceLock};

/// Device bytes a Gram gradient of `channels × positions` features takes on top of them
/// (its features' buffer is reused, a band at a time): for memory estimates.
pub fn gram_scratch_bytes(channels: usize, positions: usize) -> usize {
    4 * nst_cuda::gpu::gram_scratch_values(channels, positions)
}

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
    /// How activations are stored where the convolution library can take that layout.
    layout: Layout,
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
            layout: Layout::Nchw,
        })
    }

    /// The CUDA emulator: every kernel of the CUDA backend compiled for the host and run on
    /// the CPU (needs `g++`; slow — for tests). See `nst_cuda::emulator`.
    pub fn emulated() -> Result<Self> {
        static EMULATOR: OnceLock<Opened> = OnceLock::new();
        Self::emulator(EMULATOR.get_or_init(Gpu::emulated))
    }

    /// The CUDA emulator with a convolution library, as a GPU with cuDNN has (nst-cpu's
    /// convolution standing in for it): tests the paths only such a library takes, NHWC
    /// activations among them.
    pub fn emulated_with_library() -> Result<Self> {
        static EMULATOR: OnceLock<Opened> = OnceLock::new();
        Self::emulator(EMULATOR.get_or_init(|| {
            Ok(Gpu::on(
                nst_cuda::emulator::Emulator::with_library_convolutions()?,
            ))
        }))
    }

    fn emulator(opened: &Opened) -> Result<Self> {
        let gpu = opened
            .clone()
            .map_err(|reason| TensorError::CudaUnavailable { reason })?;
        Ok(CudaDevice {
            gpu,
            ordinal: 0,
            emulated: true,
            layout: Layout::Nchw,
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

    /// The same device storing convolutions' activations in `layout` where its convolution
    /// library can take it (cuDNN can; the im2col kernels are NCHW only, so there it changes
    /// nothing). Tensors of either are interchangeable: their values are the same, and
    /// operations convert where layouts meet (see [`Layout`]).
    pub fn with_layout(&self, layout: Layout) -> CudaDevice {
        CudaDevice {
            layout,
            ..self.clone()
        }
    }

    /// How this device stores convolutions' activations: the layout asked for, where the
    /// convolution library can take it, else NCHW.
    pub fn layout(&self) -> Layout {
        match self.layout {
            Layout::Nhwc if self.gpu.convolves_nhwc() => Layout::Nhwc,
            _ => Layout::Nchw,
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
        self.storage_as(buf, Stored::AsShaped)
    }

    fn storage_as(&self, buf: Floats, stored: Stored) -> CudaStorage {
        CudaStorage {
            buf,
            stored,
            krsc: OnceLock::new(),
            device: Device::Cuda(self.clone()),
        }
    }
}

/// How a CUDA storage's values lie in device memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stored {
    /// In the order of the tensor's shape (NCHW for a 4-D tensor), as on every device.
    AsShaped,
    /// Channels last: `batch` images of `channels` channels of `pixels` pixels, NHWC.
    Nhwc {
        batch: usize,
        channels: usize,
        pixels: usize,
    },
}

impl Stored {
    /// The same images and channels over `pixels` pixels (a pooling layer's other side).
    fn with_pixels(self, pixels: usize) -> Stored {
        match self {
            Stored::AsShaped => Stored::AsShaped,
            Stored::Nhwc {
                batch, channels, ..
            } => Stored::Nhwc {
                batch,
                channels,
                pixels,
            },
        }
    }

    /// The NHWC channel count, if NHWC.
    fn channels_last(self) -> Option<usize> {
        match self {
            Stored::AsShaped => None,
            Stored::Nhwc { channels, .. } => Some(channels),
        }
    }
}

/// On a device whose activations are NHWC, tensors of fewer channels than this stay NCHW: the
/// RGB image, which the optimizer works on, and VGG's 1×1 colour preprocessing (3 → 3
/// channels), which runs NCHW. The first convolution with more channels converts its
/// 3-channel input to NHWC and returns that input's gradient NCHW: a 3-channel transpose
/// each way per evaluation (PyTorch's `channels_last` converts its input the same way).
const NHWC_MIN_CHANNELS: usize = 4;

/// A tensor's data in device memory: in the tensor's own order, or, on a device that keeps its
/// activations NHWC ([`CudaDevice::with_layout`]), channels last. Either way it holds the same
/// tensor: operations convert where two layouts meet, and `to_vec` gives the tensor's order.
#[derive(Debug)]
pub struct CudaStorage {
    buf: Floats,
    stored: Stored,
    /// A 4-D weight's KRSC copy for NHWC convolutions, made on first use and kept while the
    /// values do not change (every `&mut` access drops it: see [`CudaStorage::buf_mut`]).
    krsc: OnceLock<Floats>,
    device: Device,
}

/// ReLU's one-bit mask on the device (32 values a word, nst-cpu's packing), with the order of
/// the values it was taken from.
#[derive(Debug)]
pub struct CudaReluMask {
    bits: DeviceBuffer<u32>,
    stored: Stored,
}

/// Max pooling's winners on the device (each window's, `2·row + column`, one byte an output),
/// with the order of the pooled values.
#[derive(Debug)]
pub struct CudaPoolWinners {
    winners: DeviceBuffer<u8>,
    stored: Stored,
}

impl CudaStorage {
    fn gpu(&self) -> &Gpu {
        &self.cuda_device().gpu
    }

    fn cuda_device(&self) -> &CudaDevice {
        match &self.device {
            Device::Cuda(d) => d,
            Device::Cpu => unreachable!("CUDA storage always holds a CUDA device"),
        }
    }

    /// Wraps a result of this storage's device, stored in the tensor's order.
    fn wrap(&self, r: nst_cuda::GpuResult<Floats>) -> Result<Self> {
        self.wrap_as(r, Stored::AsShaped)
    }

    /// Wraps a result of this storage's device, stored as `stored` says.
    fn wrap_as(&self, r: nst_cuda::GpuResult<Floats>, stored: Stored) -> Result<Self> {
        Ok(self.cuda_device().storage_as(r.map_err(failed)?, stored))
    }

    /// The values for writing: the KRSC copy, if any, no longer matches them.
    fn buf_mut(&mut self) -> &mut Floats {
        self.krsc = OnceLock::new();
        &mut self.buf
    }

    /// The values stored as `want`: borrowed when they already are, else converted.
    fn stored_as(&self, want: Stored) -> Result<Values<'_>> {
        if self.stored == want {
            Ok(Values::Borrowed(&self.buf))
        } else {
            Ok(Values::Converted(self.converted(want)?))
        }
    }

    /// A copy stored as `want` (through the tensor's order when both are NHWC of different
    /// shapes).
    fn converted(&self, want: Stored) -> Result<Floats> {
        check_planes(self.len(), want)?;
        let gpu = self.gpu();
        let copy = match (self.stored, want) {
            (Stored::AsShaped, Stored::AsShaped) => self.buf.try_clone(),
            (
                Stored::AsShaped,
                Stored::Nhwc {
                    batch,
                    channels,
                    pixels,
                },
            ) => gpu.nchw_to_nhwc(&self.buf, batch, channels, pixels),
            (
                Stored::Nhwc {
                    batch,
                    channels,
                    pixels,
                },
                Stored::AsShaped,
            ) => gpu.nhwc_to_nchw(&self.buf, batch, channels, pixels),
            (
                Stored::Nhwc {
                    batch,
                    channels,
                    pixels,
                },
                Stored::Nhwc { .. },
            ) => {
                let flat = gpu.nhwc_to_nchw(&self.buf, batch, channels, pixels);
                return self.wrap(flat)?.converted(want);
            }
        };
        copy.map_err(failed)
    }

    /// The values in the tensor's order.
    fn as_shaped(&self) -> Result<Values<'_>> {
        self.stored_as(Stored::AsShaped)
    }

    /// Convolution `p` of this storage (x) with `w` as it runs on this device: its layout
    /// ([`CudaStorage::conv_layout`]), x and w in that layout (NHWC: x converted if it is not,
    /// w as KRSC), and how its output is stored.
    fn conv_operands<'a>(
        &'a self,
        w: &'a Self,
        p: &Conv2dParams,
    ) -> Result<(Layout, Values<'a>, Values<'a>, Stored)> {
        let layout = self.conv_layout(p);
        let (x, w) = self.with_weights_in(w, p, layout, input_nhwc(p))?;
        let stored = match layout {
            Layout::Nchw => Stored::AsShaped,
            Layout::Nhwc => output_nhwc(p),
        };
        Ok((layout, x, w, stored))
    }

    /// This storage (a convolution `p`'s input or output gradient) and the weights `w` as a
    /// convolution in `layout` reads them: NCHW both in the tensor's order; NHWC this one
    /// stored as `nhwc`, the weights as KRSC.
    fn with_weights_in<'a>(
        &'a self,
        w: &'a Self,
        p: &Conv2dParams,
        layout: Layout,
        nhwc: Stored,
    ) -> Result<(Values<'a>, Values<'a>)> {
        Ok(match layout {
            Layout::Nchw => (self.as_shaped()?, w.as_shaped()?),
            Layout::Nhwc => (self.stored_as(nhwc)?, Values::Borrowed(w.krsc(p)?)),
        })
    }

    /// `other`'s values stored as this storage's are: how two operands of an elementwise
    /// operation meet.
    fn matching<'a>(&self, other: &'a Self) -> Result<Values<'a>> {
        other.stored_as(self.stored)
    }

    /// Converts in place to `want` (a no-op when it already is).
    fn restore_as(&mut self, want: Stored) -> Result<()> {
        if self.stored != want {
            let converted = self.converted(want)?;
            *self.buf_mut() = converted;
            self.stored = want;
        }
        Ok(())
    }

    /// The layout convolution `p` runs in on this storage's device: the device's, except NCHW
    /// where both sides have fewer than [`NHWC_MIN_CHANNELS`] channels, or where a tensor of
    /// `p` is more than the convolution library takes in one call (cuDNN: 2³¹ − 1 values;
    /// only NCHW convolutions are split into calls on channel groups).
    fn conv_layout(&self, p: &Conv2dParams) -> Layout {
        let few = |channels| channels < NHWC_MIN_CHANNELS;
        match self.cuda_device().layout() {
            Layout::Nhwc if few(p.in_channels) && few(p.out_channels) => Layout::Nchw,
            Layout::Nhwc if !self.gpu().conv_library_takes(p, Layout::Nhwc) => Layout::Nchw,
            layout => layout,
        }
    }

    /// How convolution `p`'s input (and so its gradient dx) is stored when it runs in
    /// [`CudaStorage::conv_layout`].
    fn conv_input_stored(&self, p: &Conv2dParams) -> Stored {
        match self.conv_layout(p) {
            Layout::Nchw => Stored::AsShaped,
            Layout::Nhwc => input_nhwc(p),
        }
    }

    /// The operand of a pooling op over `planes` planes of `pixels` pixels and how it is
    /// stored: as it is when NHWC of those planes (images × channels) and pixels, else in the
    /// tensor's order (a reshape may have regrouped an NHWC tensor's planes).
    fn pool_operand(&self, planes: usize, pixels: usize) -> Result<(Values<'_>, Stored)> {
        match self.stored {
            Stored::Nhwc {
                batch,
                channels,
                pixels: p,
            } if batch * channels == planes && p == pixels => {
                Ok((Values::Borrowed(&self.buf), self.stored))
            }
            _ => Ok((self.as_shaped()?, Stored::AsShaped)),
        }
    }

    /// How a Gram matrix of `batch` images of `c` channels of `m` positions reads F: as stored
    /// when it is NHWC of that shape, else in the tensor's order.
    fn gram_layout(&self, batch: usize, c: usize, m: usize) -> Layout {
        if self.stored == nhwc(batch, c, m) {
            Layout::Nhwc
        } else {
            Layout::Nchw
        }
    }

    /// F for that Gram matrix (see [`CudaStorage::gram_layout`]), and the layout it is in.
    fn gram_operand(&self, batch: usize, c: usize, m: usize) -> Result<(Values<'_>, Layout)> {
        match self.gram_layout(batch, c, m) {
            Layout::Nhwc => Ok((Values::Borrowed(&self.buf), Layout::Nhwc)),
            Layout::Nchw => Ok((self.as_shaped()?, Layout::Nchw)),
        }
    }

    /// A convolution's weights `[K, C, R, S]` as KRSC, for NHWC convolutions: made once.
    fn krsc(&self, p: &Conv2dParams) -> Result<&Floats> {
        if let Some(w) = self.krsc.get() {
            return Ok(w);
        }
        let taps = p.kernel_h * p.kernel_w;
        let w = self
            .gpu()
            .nchw_to_nhwc(&*self.as_shaped()?, p.out_channels, p.in_channels, taps)
            .map_err(failed)?;
        Ok(self.krsc.get_or_init(|| w))
    }
}

/// A storage's values for reading: its own, or a converted copy.
enum Values<'a> {
    Borrowed(&'a Floats),
    Converted(Floats),
}

impl std::ops::Deref for Values<'_> {
    type Target = Floats;
    fn deref(&self) -> &Floats {
        match self {
            Values::Borrowed(v) => v,
            Values::Converted(v) => v,
        }
    }
}

/// An error unless `len` values can be `stored` as it says.
fn check_planes(len: usize, stored: Stored) -> Result<()> {
    match stored {
        Stored::Nhwc {
            batch,
            channels,
            pixels,
        } if batch * channels * pixels != len => Err(failed(format!(
            "{len} values are not {batch} images of {channels} channels of {pixels} pixels"
        ))),
        _ => Ok(()),
    }
}

/// How a Gram gradient of `(batch, c, m)` computed in `layout` is stored.
fn gram_stored(layout: Layout, (batch, c, m): (usize, usize, usize)) -> Stored {
    match layout {
        Layout::Nchw => Stored::AsShaped,
        Layout::Nhwc => nhwc(batch, c, m),
    }
}

/// A convolution's input x (and dx) stored NHWC.
fn input_nhwc(p: &Conv2dParams) -> Stored {
    nhwc(p.batch, p.in_channels, p.in_h * p.in_w)
}

/// A convolution's output y (and dy) stored NHWC.
fn output_nhwc(p: &Conv2dParams) -> Stored {
    nhwc(p.batch, p.out_channels, p.out_h() * p.out_w())
}

/// NHWC storage of `batch` images of `channels` channels of `pixels` pixels.
fn nhwc(batch: usize, channels: usize, pixels: usize) -> Stored {
    Stored::Nhwc {
        batch,
        channels,
        pixels,
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
    type PoolIndices = CudaPoolWinners;
    type ReluMask = CudaReluMask;
    /// One double in device memory, with the device that holds it.
    type Scalar = (DeviceBuffer<f64>, CudaDevice);

    fn len(&self) -> usize {
        self.buf.len()
    }

    fn device(&self) -> &Device {
        &self.device
    }

    fn to_vec(&self) -> Result<Vec<f32>> {
        self.as_shaped()?.to_vec().map_err(failed)
    }

    fn try_clone(&self) -> Result<Self> {
        self.wrap_as(self.buf.try_clone(), self.stored)
    }

    /// The algorithm choice is the CPU's (Winograd or not); the GPU has its own. On a device
    /// with NHWC activations, x is taken NHWC (converted if it is not: the image), w as KRSC,
    /// and y is NHWC (except between few channels: see `NHWC_MIN_CHANNELS`).
    fn conv2d(
        &self,
        w: &Self,
        b: Option<&Self>,
        p: &Conv2dParams,
        _algo: ConvAlgorithm,
        relu: bool,
    ) -> Result<Self> {
        let bias = b.map(|b| b.as_shaped()).transpose()?;
        let (layout, x, w, stored) = self.conv_operands(w, p)?;
        let y = self
            .gpu()
            .conv2d((&x, &w, bias.as_deref()), p, relu, layout);
        self.wrap_as(y, stored)
    }

    /// The mask comes from the pass that adds the bias and applies ReLU (see
    /// `Gpu::conv2d_relu_masked`), in the order the output is stored.
    fn conv2d_relu_masked(
        &self,
        w: &Self,
        b: Option<&Self>,
        p: &Conv2dParams,
        _algo: ConvAlgorithm,
    ) -> Result<(Self, CudaReluMask)> {
        let bias = b.map(|b| b.as_shaped()).transpose()?;
        let (layout, x, w, stored) = self.conv_operands(w, p)?;
        let (y, bits) = self
            .gpu()
            .conv2d_relu_masked((&x, &w, bias.as_deref()), p, layout)
            .map_err(failed)?;
        Ok((self.wrap_as(Ok(y), stored)?, CudaReluMask { bits, stored }))
    }

    /// NHWC devices: dx is NHWC, except for inputs of fewer than four channels (the image),
    /// whose gradient comes back in the tensor's order. (`_algo` is the CPU's choice; the GPU
    /// runs its library's, or im2col.)
    fn conv2d_backward_input(
        &self,
        w: &Self,
        p: &Conv2dParams,
        _algo: ConvAlgorithm,
    ) -> Result<Self> {
        let layout = self.conv_layout(p);
        let (dy, w) = self.with_weights_in(w, p, layout, output_nhwc(p))?;
        let fresh = self.gpu().conv2d_backward_input((&dy, &w), p, layout);
        let mut dx = self.wrap_as(fresh, self.conv_input_stored(p))?;
        if p.in_channels < NHWC_MIN_CHANNELS {
            dx.restore_as(Stored::AsShaped)?;
        }
        Ok(dx)
    }

    fn conv2d_backward_input_accumulate(
        &self,
        w: &Self,
        p: &Conv2dParams,
        algo: ConvAlgorithm,
        dx: &mut Self,
    ) -> Result<()> {
        let gpu = self.cuda_device().gpu.clone();
        let layout = self.conv_layout(p);
        if dx.stored != self.conv_input_stored(p) {
            // A gradient kept in the other order: add a fresh one (converted) into it.
            let fresh = self.conv2d_backward_input(w, p, algo)?;
            return dx.add_assign(&fresh);
        }
        let (dy, w) = self.with_weights_in(w, p, layout, output_nhwc(p))?;
        gpu.conv2d_backward_input_add((&dy, &w), p, dx.buf_mut(), layout)
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
            .conv2d_backward_weight(&*self.as_shaped()?, &*dy.as_shaped()?, p, with_bias)
            .map_err(failed)?;
        let device = self.cuda_device();
        Ok((device.storage(dw), db.map(|db| device.storage(db))))
    }

    fn relu(&self) -> Result<Self> {
        self.wrap_as(self.gpu().relu(&self.buf), self.stored)
    }

    fn relu_mask(&self) -> Result<CudaReluMask> {
        Ok(CudaReluMask {
            bits: self.gpu().relu_mask(&self.buf).map_err(failed)?,
            stored: self.stored,
        })
    }

    fn apply_relu_mask(&mut self, mask: &CudaReluMask) -> Result<()> {
        self.restore_as(mask.stored)?;
        let gpu = self.cuda_device().gpu.clone();
        gpu.apply_relu_mask(self.buf_mut(), &mask.bits)
            .map_err(failed)
    }

    fn max_pool2d(&self, p: &Pool2dParams) -> Result<(Self, CudaPoolWinners)> {
        let (x, stored) = self.pool_operand(p.planes, p.in_h * p.in_w)?;
        let (y, winners) = self
            .gpu()
            .max_pool(&x, p, stored.channels_last())
            .map_err(failed)?;
        let stored = stored.with_pixels(p.out_h() * p.out_w());
        let y = self.cuda_device().storage_as(y, stored);
        Ok((y, CudaPoolWinners { winners, stored }))
    }

    fn max_pool2d_backward(&self, indices: &CudaPoolWinners, p: &Pool2dParams) -> Result<Self> {
        let dy = self.stored_as(indices.stored)?;
        let channels_last = indices.stored.channels_last();
        let dx = self
            .gpu()
            .max_pool_backward(&dy, &indices.winners, p, channels_last);
        self.wrap_as(dx, indices.stored.with_pixels(p.in_h * p.in_w))
    }

    fn avg_pool2d(&self, p: &Pool2dParams) -> Result<Self> {
        let (x, stored) = self.pool_operand(p.planes, p.in_h * p.in_w)?;
        let y = self.gpu().avg_pool(&x, p, stored.channels_last());
        self.wrap_as(y, stored.with_pixels(p.out_h() * p.out_w()))
    }

    fn avg_pool2d_backward(&self, p: &Pool2dParams) -> Result<Self> {
        let (dy, stored) = self.pool_operand(p.planes, p.out_h() * p.out_w())?;
        let dx = self.gpu().avg_pool_backward(&dy, p, stored.channels_last());
        self.wrap_as(dx, stored.with_pixels(p.in_h * p.in_w))
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
        let (a, b) = (self.as_shaped()?, b.as_shaped()?);
        self.wrap(self.gpu().matmul(&a, &b, (m, k, n), trans_a, trans_b))
    }

    /// NHWC features (F stored transposed) give the same G by `Fᵀ·F` of what is stored.
    fn gram(&self, batch: usize, c: usize, m: usize, scale: f32) -> Result<Self> {
        let (f, layout) = self.gram_operand(batch, c, m)?;
        self.wrap(self.gpu().gram(&f, (batch, c, m), scale, layout))
    }

    fn gram_backward(
        &self,
        dg: &Self,
        batch: usize,
        c: usize,
        m: usize,
        scale: f32,
    ) -> Result<Self> {
        let (f, layout) = self.gram_operand(batch, c, m)?;
        let df = self
            .gpu()
            .gram_backward(&f, &*dg.as_shaped()?, (batch, c, m), scale, layout);
        self.wrap_as(df, gram_stored(layout, (batch, c, m)))
    }

    fn gram_backward_in_place(
        &mut self,
        dg: &Self,
        batch: usize,
        c: usize,
        m: usize,
        scale: f32,
    ) -> Result<()> {
        let layout = self.gram_layout(batch, c, m);
        if layout == Layout::Nchw {
            self.restore_as(Stored::AsShaped)?;
        }
        let gpu = self.cuda_device().gpu.clone();
        let dg = dg.as_shaped()?;
        gpu.gram_backward_in_place(self.buf_mut(), &dg, (batch, c, m), scale, layout)
            .map_err(failed)
    }

    fn transpose(&self, rows: usize, cols: usize) -> Result<Self> {
        self.wrap(self.gpu().transpose(&*self.as_shaped()?, rows, cols))
    }

    fn binary(&self, b: &Self, op: BinaryOp) -> Result<Self> {
        let gpu = self.gpu();
        let b = self.matching(b)?;
        self.wrap_as(
            match op {
                BinaryOp::Add => gpu.axpby(1.0, &self.buf, 1.0, &b),
                BinaryOp::Sub => gpu.axpby(1.0, &self.buf, -1.0, &b),
                BinaryOp::Mul => gpu.scaled_mul(1.0, &self.buf, &b),
            },
            self.stored,
        )
    }

    fn scaled_mul(&self, b: &Self, s: f32) -> Result<Self> {
        let b = self.matching(b)?;
        self.wrap_as(self.gpu().scaled_mul(s, &self.buf, &b), self.stored)
    }

    fn scale(&self, s: f32) -> Result<Self> {
        self.wrap_as(self.gpu().scale(s, &self.buf), self.stored)
    }

    fn square(&self) -> Result<Self> {
        let x = &self.buf;
        self.wrap_as(self.gpu().scaled_mul(1.0, x, x), self.stored)
    }

    fn copy_window(&self, dst: &mut Self, p: &Window2dParams, accumulate: bool) -> Result<()> {
        // Windows are cut in the tensors' own order: NHWC values are converted first.
        let src = self.as_shaped()?;
        dst.restore_as(Stored::AsShaped)?;
        let gpu = dst.cuda_device().gpu.clone();
        gpu.copy_window(&src, dst.buf_mut(), p, accumulate)
            .map_err(failed)
    }

    fn add_assign(&mut self, other: &Self) -> Result<()> {
        let gpu = self.cuda_device().gpu.clone();
        let other = self.matching(other)?;
        gpu.axpby_in_place(1.0, self.buf_mut(), 1.0, &other)
            .map_err(failed)
    }

    fn sum(&self) -> Result<Self> {
        self.wrap(self.gpu().sum(&self.buf))
    }

    fn broadcast(&self, n: usize) -> Result<Self> {
        self.wrap(self.gpu().broadcast(&self.buf, n))
    }

    fn squared_distance(&self, b: &Self) -> Result<Self> {
        let b = self.matching(b)?;
        self.wrap(self.gpu().squared_distance(&self.buf, &b))
    }

    fn scaled_difference_in_place(&mut self, b: &Self, g: &Self, s: f32) -> Result<()> {
        let gpu = self.cuda_device().gpu.clone();
        let b = self.matching(b)?;
        gpu.scaled_difference_in_place(self.buf_mut(), &b, &g.buf, s)
            .map_err(failed)
    }

    fn axpby(&self, alpha: f32, y: &Self, beta: f32) -> Result<Self> {
        let y = self.matching(y)?;
        self.wrap_as(self.gpu().axpby(alpha, &self.buf, beta, &y), self.stored)
    }

    fn dot(&self, y: &Self) -> Result<f64> {
        let y = self.matching(y)?;
        self.gpu().dot(&self.buf, &y).map_err(failed)
    }

    fn dot_scalar(&self, y: &Self) -> Result<Self::Scalar> {
        let y = self.matching(y)?;
        let d = self.gpu().dot_on_device(&self.buf, &y).map_err(failed)?;
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
        let y = self.matching(y)?;
        let out = self.gpu().axpy_device_coef(&self.buf, &y, coef, factor);
        self.wrap_as(out, self.stored)
    }

    fn dot_scalar_scaled(&self, y: &Self, r: f64) -> Result<Self::Scalar> {
        let y = self.matching(y)?;
        let d = self
            .gpu()
            .dot_scaled_on_device(&self.buf, &y, r)
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
        let y = self.matching(y)?;
        let dot_with = dot_with
            .map(|(v, r)| Ok::<_, TensorError>((self.matching(v)?, r)))
            .transpose()?;
        let (out, dot) = self
            .gpu()
            .axpy_coef_dot(
                &self.buf,
                &y,
                (coef, minus.map(|(m, _)| m)),
                factor,
                dot_with.as_ref().map(|(v, r)| (&**v, *r)),
            )
            .map_err(failed)?;
        let dev = self.cuda_device();
        Ok((
            dev.storage_as(out, self.stored),
            dot.map(|d| (d, dev.clone())),
        ))
    }

    fn abs_sum(&self) -> Result<f64> {
        self.gpu().abs_sum(&self.buf).map_err(failed)
    }

    fn abs_max(&self) -> Result<f32> {
        self.gpu().abs_max(&self.buf).map_err(failed)
    }

    fn adam_update(&mut self, g: &Self, m: &mut Self, v: &mut Self, p: &AdamParams) -> Result<()> {
        let gpu = self.cuda_device().gpu.clone();
        m.restore_as(self.stored)?;
        v.restore_as(self.stored)?;
        let g = self.matching(g)?;
        gpu.adam_update(self.buf_mut(), &g, m.buf_mut(), v.buf_mut(), p)
            .map_err(failed)
    }
}

#[cfg(test)]
mod tests {
    use super::{nhwc, CudaStorage, Stored};
    use crate::storage::Storage;
    use crate::{Device, Layout, Tensor};

    fn cuda(t: &Tensor) -> &CudaStorage {
        match t.storage() {
            Storage::Cuda(s) => s,
            Storage::Cpu(_) => panic!("a CUDA tensor"),
        }
    }

    fn values(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| (((i as u32).wrapping_mul(2654435761) ^ seed) % 1000) as f32 / 500.0 - 1.0)
            .collect()
    }

    /// An NHWC device really stores its activations NHWC (so the NHWC halves of the device
    /// tests exercise that layout), and every value read back is the NCHW device's.
    #[test]
    fn nhwc_devices_store_activations_channels_last_and_agree_with_nchw() {
        let Ok(base) = Device::cuda_emulated_with_library() else {
            assert!(std::env::var_os("NST_REQUIRE_EMULATOR").is_none());
            return;
        };
        // VGG's shape: a 1×1 colour convolution (3 → 3 channels), then 3 → 8 channels.
        let colour = Tensor::from_vec(values(9, 5), &[3, 3, 1, 1], &base).unwrap();
        let run = |dev: &Device| {
            let x = Tensor::variable(values(3 * 6 * 5, 1), &[1, 3, 6, 5], dev).unwrap();
            let w = Tensor::from_vec(values(8 * 3 * 9, 2), &[8, 3, 3, 3], dev).unwrap();
            let b = Tensor::from_vec(values(8, 3), &[8], dev).unwrap();
            let x3 = x.conv2d(&colour, None, 1, 0).unwrap();
            assert_eq!(
                cuda(&x3).stored,
                Stored::AsShaped,
                "3 → 3 channels stay NCHW"
            );
            let y = x3.conv2d_relu(&w, Some(&b), 1, 1).unwrap();
            let pooled = y.max_pool2d().unwrap();
            let loss = pooled.gram(0.5).unwrap().square().unwrap().sum().unwrap();
            let grads = loss.backward().unwrap();
            let dx = grads.get(&x).unwrap().clone();
            (x, y, pooled, loss, dx)
        };
        let (x, y, pooled, loss, dx) = run(&base.with_layout(Layout::Nhwc));
        assert!(
            cuda(&colour).krsc.get().is_none(),
            "no KRSC copy for an NCHW convolution"
        );
        assert_eq!(cuda(&x).stored, Stored::AsShaped, "the image as uploaded");
        assert_eq!(cuda(&y).stored, nhwc(1, 8, 30));
        assert_eq!(cuda(&pooled).stored, nhwc(1, 8, 6));
        // The gradient of a 3-channel input comes back in the tensor's order.
        assert_eq!(cuda(&dx).stored, Stored::AsShaped);
        // What is stored is y's values pixel by pixel.
        let (raw, logical) = (cuda(&y).buf.to_vec().unwrap(), y.to_vec().unwrap());
        for c in 0..8 {
            for p in 0..30 {
                assert_eq!(raw[p * 8 + c], logical[c * 30 + p], "channel {c} pixel {p}");
            }
        }

        let (_, y0, pooled0, loss0, dx0) = run(&base);
        assert_eq!(cuda(&y0).stored, Stored::AsShaped);
        assert_eq!(y.to_vec().unwrap(), y0.to_vec().unwrap());
        assert_eq!(pooled.to_vec().unwrap(), pooled0.to_vec().unwrap());
        let (l, l0) = (loss.to_vec().unwrap()[0], loss0.to_vec().unwrap()[0]);
        assert!((l - l0).abs() <= 1e-6 * l0.abs(), "{l} vs {l0}");
        for (a, b) in dx.to_vec().unwrap().iter().zip(dx0.to_vec().unwrap()) {
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "{a} vs {b}");
        }
    }

    /// A convolution over what the library takes in one call runs NCHW on an NHWC device (in
    /// channel groups; NHWC could not be split), and the next one that fits runs NHWC again:
    /// the values and the gradient are the NCHW device's.
    #[test]
    fn an_nhwc_device_runs_a_convolution_over_the_library_limit_nchw() {
        let Ok(emulator) = nst_cuda::emulator::Emulator::with_library_limited_to(200) else {
            assert!(std::env::var_os("NST_REQUIRE_EMULATOR").is_none());
            return;
        };
        let limited = Device::Cuda(super::CudaDevice {
            gpu: nst_cuda::Gpu::on(emulator),
            ordinal: 0,
            emulated: true,
            layout: Layout::Nchw,
        });
        let run = |dev: &Device| {
            // 4 → 8 channels on 6×5: weights 288 and output 240 values, over 200.
            let x = Tensor::variable(values(4 * 30, 1), &[1, 4, 6, 5], dev).unwrap();
            let w = Tensor::from_vec(values(8 * 4 * 9, 2), &[8, 4, 3, 3], dev).unwrap();
            let w2 = Tensor::from_vec(values(4 * 8, 3), &[4, 8, 1, 1], dev).unwrap();
            let y = x.conv2d_relu(&w, None, 1, 1).unwrap();
            let pooled = y.max_pool2d().unwrap();
            let z = pooled.conv2d(&w2, None, 1, 0).unwrap(); // 48, 32 and 24 values
            let loss = z.gram(0.5).unwrap().square().unwrap().sum().unwrap();
            let dx = loss.backward().unwrap().get(&x).unwrap().clone();
            (y, z, loss, dx)
        };
        let (y, z, loss, dx) = run(&limited.with_layout(Layout::Nhwc));
        assert_eq!(cuda(&y).stored, Stored::AsShaped, "over the limit: NCHW");
        assert_eq!(cuda(&z).stored, nhwc(1, 4, 6), "within it: NHWC");
        let (y0, z0, loss0, dx0) = run(&Device::cuda_emulated_with_library().unwrap());
        // The same up to summation order: the split adds its input groups (3 and 1 channels)
        // one after the other. Relative L2 error, as dx's elements span orders of magnitude
        // and rounding goes with the largest: dx was 1.8e-7 (OpenBLAS) and 3.3e-7 apart,
        // but one small element 6.5e-5 of itself.
        let close = |a: Vec<f32>, b: Vec<f32>, what: &str| {
            let diff: f64 = a
                .iter()
                .zip(&b)
                .map(|(a, b)| ((a - b) as f64).powi(2))
                .sum();
            let norm: f64 = b.iter().map(|b| (*b as f64).powi(2)).sum();
            let e = (diff / norm.max(1e-30)).sqrt();
            assert!(e <= 1e-5, "{what}: relative error {e:.2e}");
        };
        close(y.to_vec().unwrap(), y0.to_vec().unwrap(), "y");
        close(z.to_vec().unwrap(), z0.to_vec().unwrap(), "z");
        close(loss.to_vec().unwrap(), loss0.to_vec().unwrap(), "loss");
        close(dx.to_vec().unwrap(), dx0.to_vec().unwrap(), "dx");
    }

    /// Operands stored differently meet in one order: sums, products and dot products of an
    /// NHWC and an NCHW storage of the same tensor are the tensor's.
    #[test]
    fn operands_in_two_layouts_meet_in_one() {
        let Ok(base) = Device::cuda_emulated_with_library() else {
            return;
        };
        let dev = base.with_layout(Layout::Nhwc);
        let x = Tensor::from_vec(values(2 * 16, 4), &[1, 2, 4, 4], &dev).unwrap();
        let w = Tensor::from_vec(values(5 * 2, 5), &[5, 2, 1, 1], &dev).unwrap();
        let y = x.conv2d(&w, None, 1, 0).unwrap(); // NHWC, 5 channels
        let flat = Tensor::from_vec(y.to_vec().unwrap(), y.dims(), &dev).unwrap();
        assert_eq!(cuda(&flat).stored, Stored::AsShaped);
        let want: Vec<f32> = y.to_vec().unwrap().iter().map(|v| 2.0 * v).collect();
        assert_eq!(y.add(&flat).unwrap().to_vec().unwrap(), want);
        assert_eq!(flat.add(&y).unwrap().to_vec().unwrap(), want);
        let sq: f64 = y
            .to_vec()
            .unwrap()
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum();
        let d = y.dot(&flat).unwrap();
        assert!((d - sq).abs() <= 1e-6 * sq, "{d} vs {sq}");
        // A reshape that regroups an NHWC tensor's planes (5 channels of 4×4 → 10 of 2×4) is
        // pooled as its shape says.
        let regrouped = [1, 10, 2, 4];
        for (a, b) in [
            (
                y.reshape(&regrouped).unwrap(),
                flat.reshape(&regrouped).unwrap(),
            ),
            (y.clone(), flat.clone()),
        ] {
            let (pa, pb) = (a.avg_pool2d().unwrap(), b.avg_pool2d().unwrap());
            assert_eq!(pa.to_vec().unwrap(), pb.to_vec().unwrap(), "{:?}", a.dims());
            let (ma, mb) = (a.max_pool2d().unwrap(), b.max_pool2d().unwrap());
            assert_eq!(ma.to_vec().unwrap(), mb.to_vec().unwrap(), "{:?}", a.dims());
        }
    }
}
