//! The CUDA variant of every device enum, in a build whose CUDA tensor backend is not written
//! yet: the types exist so that `Device::Cuda` and `Storage::Cuda` are part of every build and
//! every `match` over devices is complete, but a [`CudaDevice`] can never be opened, so no
//! [`CudaStorage`] is ever made, and every method answers with
//! [`TensorError::CudaUnavailable`] — never a panic. (candle-core's `dummy_cuda_backend.rs`
//! is the pattern.)
//!
//! The reason given to the user comes from `nst_cuda::probe`: no driver, no NVRTC, no cuBLAS,
//! no device, or a GPU that this build cannot use yet.

use crate::backend::{BackendDevice, BackendStorage, BinaryOp};
use crate::{Device, Result, TensorError};
use nst_params::{AdamParams, Conv2dParams, ConvAlgorithm, Pool2dParams};

/// Why CUDA cannot be used, in one line.
pub(crate) fn unavailable_reason() -> String {
    match nst_cuda::probe() {
        nst_cuda::Probe::Unavailable(why) => why,
        nst_cuda::Probe::Available { name } => {
            format!("found {name}, but this build of nst has no CUDA tensor backend yet")
        }
    }
}

fn unavailable<T>() -> Result<T> {
    Err(TensorError::CudaUnavailable {
        reason: "this build of nst has no CUDA tensor backend yet".into(),
    })
}

/// A CUDA device. In this build none can be opened ([`CudaDevice::new`] always fails).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaDevice {
    ordinal: usize,
}

impl CudaDevice {
    /// Opens CUDA device `ordinal`; in this build, an error saying why it cannot be used.
    pub fn new(ordinal: usize) -> Result<Self> {
        let _ = ordinal;
        Err(TensorError::CudaUnavailable {
            reason: unavailable_reason(),
        })
    }

    /// The device's index.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }
}

/// Device memory of a tensor (never made in this build).
#[derive(Debug)]
pub struct CudaStorage {
    device: Device,
}

/// Max-pooling winners in device memory (never made in this build).
#[derive(Debug)]
pub struct CudaPoolIndices;

/// A packed ReLU mask in device memory (never made in this build).
#[derive(Debug)]
pub struct CudaReluMask;

impl BackendDevice for CudaDevice {
    type Storage = CudaStorage;
    fn storage_from_vec(&self, _: Vec<f32>) -> Result<CudaStorage> {
        unavailable()
    }
    fn storage_full(&self, _: f32, _: usize) -> Result<CudaStorage> {
        unavailable()
    }
    fn release_cached_memory(&self) {}
}

impl BackendStorage for CudaStorage {
    type PoolIndices = CudaPoolIndices;
    type ReluMask = CudaReluMask;

    fn len(&self) -> usize {
        0
    }
    fn device(&self) -> &Device {
        &self.device
    }
    fn to_vec(&self) -> Result<Vec<f32>> {
        unavailable()
    }
    fn try_clone(&self) -> Result<Self> {
        unavailable()
    }
    fn conv2d(
        &self,
        _: &Self,
        _: Option<&Self>,
        _: &Conv2dParams,
        _: ConvAlgorithm,
        _: bool,
    ) -> Result<Self> {
        unavailable()
    }
    fn conv2d_backward_input(&self, _: &Self, _: &Conv2dParams, _: ConvAlgorithm) -> Result<Self> {
        unavailable()
    }
    fn conv2d_backward_input_accumulate(
        &self,
        _: &Self,
        _: &Conv2dParams,
        _: ConvAlgorithm,
        _: &mut Self,
    ) -> Result<()> {
        unavailable()
    }
    fn conv2d_backward_weight(
        &self,
        _: &Self,
        _: &Conv2dParams,
        _: bool,
    ) -> Result<(Self, Option<Self>)> {
        unavailable()
    }
    fn relu(&self) -> Result<Self> {
        unavailable()
    }
    fn relu_mask(&self) -> Result<CudaReluMask> {
        unavailable()
    }
    fn apply_relu_mask(&mut self, _: &CudaReluMask) -> Result<()> {
        unavailable()
    }
    fn max_pool2d(&self, _: &Pool2dParams) -> Result<(Self, CudaPoolIndices)> {
        unavailable()
    }
    fn max_pool2d_backward(&self, _: &CudaPoolIndices, _: &Pool2dParams) -> Result<Self> {
        unavailable()
    }
    fn avg_pool2d(&self, _: &Pool2dParams) -> Result<Self> {
        unavailable()
    }
    fn avg_pool2d_backward(&self, _: &Pool2dParams) -> Result<Self> {
        unavailable()
    }
    fn matmul(&self, _: &Self, _: usize, _: usize, _: usize, _: bool, _: bool) -> Result<Self> {
        unavailable()
    }
    fn gram(&self, _: usize, _: usize, _: usize, _: f32) -> Result<Self> {
        unavailable()
    }
    fn gram_backward(&self, _: &Self, _: usize, _: usize, _: usize, _: f32) -> Result<Self> {
        unavailable()
    }
    fn transpose(&self, _: usize, _: usize) -> Result<Self> {
        unavailable()
    }
    fn binary(&self, _: &Self, _: BinaryOp) -> Result<Self> {
        unavailable()
    }
    fn scaled_mul(&self, _: &Self, _: f32) -> Result<Self> {
        unavailable()
    }
    fn scale(&self, _: f32) -> Result<Self> {
        unavailable()
    }
    fn square(&self) -> Result<Self> {
        unavailable()
    }
    fn add_assign(&mut self, _: &Self) -> Result<()> {
        unavailable()
    }
    fn sum(&self) -> Result<Self> {
        unavailable()
    }
    fn broadcast(&self, _: usize) -> Result<Self> {
        unavailable()
    }
    fn axpby(&self, _: f32, _: &Self, _: f32) -> Result<Self> {
        unavailable()
    }
    fn dot(&self, _: &Self) -> Result<f64> {
        unavailable()
    }
    fn abs_sum(&self) -> Result<f64> {
        unavailable()
    }
    fn abs_max(&self) -> Result<f32> {
        unavailable()
    }
    fn adam_update(&mut self, _: &Self, _: &mut Self, _: &mut Self, _: &AdamParams) -> Result<()> {
        unavailable()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opening_cuda_is_a_one_line_error_not_a_panic() {
        let err = CudaDevice::new(0).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, TensorError::CudaUnavailable { .. }));
        assert!(
            msg.starts_with("CUDA is not available: ") && !msg.contains('\n'),
            "{msg}"
        );
    }
}
