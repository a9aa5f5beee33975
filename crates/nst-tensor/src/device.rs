//! Where a tensor's data lives, and how a device is chosen.

use crate::backend::BackendDevice;
use crate::cpu_backend::CpuDevice;
use crate::cuda_backend::CudaDevice;
use crate::Result;
use nst_params::{AlgorithmSearch, Layout};
use std::fmt;

/// How a GPU computes convolutions. The CPU always computes in f32.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 throughout (exact to f32 rounding; the reference tests' setting).
    #[default]
    Fp32,
    /// Convolution products on tensor cores with operands rounded to TF32 (10-bit mantissa),
    /// accumulated in f32 — PyTorch's default for cuDNN convolutions
    /// (`torch.backends.cudnn.allow_tf32 = True`). Gram matrices stay f32, as PyTorch's
    /// matmul does by default.
    Tf32,
}

/// The compute device of a tensor. Ops require all their inputs on the same device; the
/// device of a tensor is that of its storage.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum Device {
    /// Host memory and the rayon kernels of `nst-cpu`.
    #[default]
    Cpu,
    /// An NVIDIA GPU (or the CUDA emulator). Open one with [`Device::cuda`]; where that is
    /// impossible (no driver, NVRTC, cuBLAS or GPU) it says why instead.
    Cuda(CudaDevice),
}

impl Device {
    /// CUDA device `ordinal`, or [`crate::TensorError::CudaUnavailable`] naming what is
    /// missing.
    pub fn cuda(ordinal: usize) -> Result<Device> {
        Ok(Device::Cuda(CudaDevice::new(ordinal)?))
    }

    /// The CUDA emulator: the CUDA backend's kernels compiled for the host and run on the
    /// CPU (needs `g++`; for tests — far slower than [`Device::Cpu`]).
    pub fn cuda_emulated() -> Result<Device> {
        Ok(Device::Cuda(CudaDevice::emulated()?))
    }

    /// The CUDA emulator with a convolution library standing in for cuDNN (nst-cpu's
    /// convolution): the paths only such a library takes, NHWC activations among them
    /// ([`Device::with_layout`]), tested without a GPU.
    pub fn cuda_emulated_with_library() -> Result<Device> {
        Ok(Device::Cuda(CudaDevice::emulated_with_library()?))
    }

    /// CUDA device 0 when it can be used, else the CPU together with the reason CUDA was not
    /// used (one line, for the user).
    pub fn best_available() -> (Device, Option<String>) {
        match Device::cuda(0) {
            Ok(d) => (d, None),
            Err(e) => (Device::Cpu, Some(e.to_string())),
        }
    }

    /// Why CUDA cannot be used, or `None` when it can (probes libraries and devices without
    /// panicking).
    pub fn cuda_unavailable_reason() -> Option<String> {
        match Device::cuda(0) {
            Err(crate::TensorError::CudaUnavailable { reason }) => Some(reason),
            Err(other) => Some(other.to_string()),
            Ok(_) => None,
        }
    }

    /// The same device computing convolutions in `precision` (the CPU is unchanged: it
    /// always computes in f32).
    pub fn with_precision(&self, precision: Precision) -> Device {
        match self {
            Device::Cpu => Device::Cpu,
            Device::Cuda(d) => Device::Cuda(d.with_precision(precision)),
        }
    }

    /// The same device picking GPU convolution algorithms for shapes it meets first by
    /// `search`: [`AlgorithmSearch::Measured`] (the default) where a shape is used many
    /// times, [`AlgorithmSearch::Heuristic`] where a search would cost more than it saves.
    /// The CPU is unchanged.
    pub fn with_algorithm_search(&self, search: AlgorithmSearch) -> Device {
        match self {
            Device::Cpu => Device::Cpu,
            Device::Cuda(d) => Device::Cuda(d.with_algorithm_search(search)),
        }
    }

    /// The same device storing its convolutions' activations in `layout` (a GPU with cuDNN;
    /// see [`CudaDevice::with_layout`]). Results are the same up to rounding (cuDNN's NHWC
    /// algorithms, another summation order); the CPU is unchanged (always NCHW).
    pub fn with_layout(&self, layout: Layout) -> Device {
        match self {
            Device::Cpu => Device::Cpu,
            Device::Cuda(d) => Device::Cuda(d.with_layout(layout)),
        }
    }

    /// How this device stores its convolutions' activations (NCHW on the CPU, and on a GPU
    /// that cannot take NHWC).
    pub fn layout(&self) -> Layout {
        match self {
            Device::Cpu => Layout::Nchw,
            Device::Cuda(d) => d.layout(),
        }
    }

    /// The most device memory in use at once so far, in bytes, for a GPU whose allocator
    /// reports it (`None` for the CPU: see the process's peak RSS instead).
    pub fn peak_device_memory_bytes(&self) -> Option<u64> {
        match self {
            Device::Cpu => None,
            Device::Cuda(d) => d.peak_memory_bytes(),
        }
    }

    /// For a GPU: the device memory a run could still use (free, plus what the allocator
    /// holds unused), where it is known. `None` for the CPU (see the system's memory).
    pub fn available_device_memory_bytes(&self) -> Option<u64> {
        match self {
            Device::Cpu => None,
            Device::Cuda(d) => d.available_memory_bytes(),
        }
    }

    /// For a GPU: the convolution library in use (cuDNN and its version), if any.
    pub fn conv_library(&self) -> Option<String> {
        match self {
            Device::Cpu => None,
            Device::Cuda(d) => d.conv_library(),
        }
    }

    /// True for the CPU.
    pub fn is_cpu(&self) -> bool {
        matches!(self, Device::Cpu)
    }

    /// Returns memory the device keeps for reuse (convolution scratch buffers, pools) to the
    /// system. Call it when the shapes change for good, e.g. between image scales.
    pub fn release_cached_memory(&self) {
        match self {
            Device::Cpu => CpuDevice.release_cached_memory(),
            Device::Cuda(d) => d.release_cached_memory(),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu ({} threads)", rayon_threads()),
            Device::Cuda(d) => {
                if d.is_emulated() {
                    f.write_str("cuda emulator")?;
                } else {
                    write!(f, "cuda:{} ({})", d.ordinal(), d.name())?;
                }
                if d.precision() == Precision::Tf32 {
                    f.write_str(", tf32")?;
                }
                match d.layout() {
                    Layout::Nchw => Ok(()),
                    Layout::Nhwc => f.write_str(", nhwc"),
                }
            }
        }
    }
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
