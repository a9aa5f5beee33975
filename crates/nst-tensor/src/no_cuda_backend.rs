//! The CUDA backend of a build without the `cuda` feature (nst-tensor with
//! `default-features = false`): the names the rest of this crate uses ([`CudaDevice`] and its
//! methods, [`CudaStorage`] and the backend traits), so that it compiles unchanged, but no
//! [`CudaDevice`] can be made. The GPU-only extras of the real module (`profile`,
//! `gram_scratch_bytes`) are not here: `nst` and `cargo xtask` always build with CUDA. Its
//! constructors answer with [`TensorError::CudaUnavailable`] saying why, and every other
//! method is unreachable by construction: both types hold [`Infallible`], a type with no
//! values, so their bodies are `match self.0 {}` (no panics, no stubs that could run). The
//! pattern is candle-core's dummy CUDA backend.
//!
//! What it saves: the `cudarc` and `nst-cuda` crates (about 35 s of a release build on two
//! cores, 2026-11-29) and the CUDA libraries' loading code, for users who only want the CPU.

use crate::backend::{BackendDevice, BackendStorage, BinaryOp};
use crate::{Device, Precision, Result, TensorError};
use nst_params::{
    AdamParams, AlgorithmSearch, Conv2dParams, ConvAlgorithm, Layout, Pool2dParams, Window2dParams,
};
use std::convert::Infallible;

fn unavailable() -> TensorError {
    TensorError::CudaUnavailable {
        reason: "this build has no CUDA backend (nst-tensor's `cuda` feature is off)".into(),
    }
}

/// A CUDA device, which this build cannot open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CudaDevice(Infallible);

impl CudaDevice {
    /// Always [`TensorError::CudaUnavailable`]: this build has no CUDA backend.
    pub fn new(_ordinal: usize) -> Result<Self> {
        Err(unavailable())
    }

    /// Always [`TensorError::CudaUnavailable`]: the emulator is part of the CUDA backend.
    pub fn emulated() -> Result<Self> {
        Err(unavailable())
    }

    /// Always [`TensorError::CudaUnavailable`].
    pub fn emulated_with_library() -> Result<Self> {
        Err(unavailable())
    }

    /// Unreachable (no device exists).
    pub fn with_precision(&self, _precision: Precision) -> CudaDevice {
        match self.0 {}
    }

    /// Unreachable (no device exists).
    pub fn with_algorithm_search(&self, _search: AlgorithmSearch) -> CudaDevice {
        match self.0 {}
    }

    /// Unreachable (no device exists).
    pub fn with_layout(&self, _layout: Layout) -> CudaDevice {
        match self.0 {}
    }

    /// Unreachable (no device exists).
    pub fn layout(&self) -> Layout {
        match self.0 {}
    }

    /// Unreachable (no device exists).
    pub fn algorithm_search(&self) -> AlgorithmSearch {
        match self.0 {}
    }

    /// Unreachable (no device exists).
    pub fn precision(&self) -> Precision {
        match self.0 {}
    }

    /// Unreachable (no device exists).
    pub fn ordinal(&self) -> usize {
        match self.0 {}
    }

    /// Unreachable (no device exists).
    pub fn is_emulated(&self) -> bool {
        match self.0 {}
    }

    /// Unreachable (no device exists).
    pub fn name(&self) -> String {
        match self.0 {}
    }

    /// Unreachable (no device exists).
    pub fn peak_memory_bytes(&self) -> Option<u64> {
        match self.0 {}
    }

    /// Unreachable (no device exists).
    pub fn conv_library(&self) -> Option<String> {
        match self.0 {}
    }

    /// Unreachable (no device exists).
    pub fn available_memory_bytes(&self) -> Option<u64> {
        match self.0 {}
    }
}

impl BackendDevice for CudaDevice {
    type Storage = CudaStorage;

    fn storage_from_vec(&self, _data: Vec<f32>) -> Result<CudaStorage> {
        match self.0 {}
    }

    fn storage_full(&self, _value: f32, _n: usize) -> Result<CudaStorage> {
        match self.0 {}
    }

    fn release_cached_memory(&self) {
        match self.0 {}
    }
}

/// Tensor data on a CUDA device, which this build cannot hold.
#[derive(Debug)]
pub struct CudaStorage(Infallible);

impl BackendStorage for CudaStorage {
    type PoolIndices = Infallible;
    type ReluMask = Infallible;
    type Scalar = Infallible;

    fn len(&self) -> usize {
        match self.0 {}
    }
    fn device(&self) -> &Device {
        match self.0 {}
    }
    fn to_vec(&self) -> Result<Vec<f32>> {
        match self.0 {}
    }
    fn try_clone(&self) -> Result<Self> {
        match self.0 {}
    }
    fn conv2d(
        &self,
        _: &Self,
        _: Option<&Self>,
        _: &Conv2dParams,
        _: ConvAlgorithm,
        _: bool,
    ) -> Result<Self> {
        match self.0 {}
    }
    fn conv2d_backward_input(&self, _: &Self, _: &Conv2dParams, _: ConvAlgorithm) -> Result<Self> {
        match self.0 {}
    }
    fn conv2d_backward_input_accumulate(
        &self,
        _: &Self,
        _: &Conv2dParams,
        _: ConvAlgorithm,
        _: &mut Self,
    ) -> Result<()> {
        match self.0 {}
    }
    fn conv2d_backward_weight(
        &self,
        _: &Self,
        _: &Conv2dParams,
        _: bool,
    ) -> Result<(Self, Option<Self>)> {
        match self.0 {}
    }
    fn relu(&self) -> Result<Self> {
        match self.0 {}
    }
    fn relu_mask(&self) -> Result<Infallible> {
        match self.0 {}
    }
    fn apply_relu_mask(&mut self, _: &Infallible) -> Result<()> {
        match self.0 {}
    }
    fn max_pool2d(&self, _: &Pool2dParams) -> Result<(Self, Infallible)> {
        match self.0 {}
    }
    fn max_pool2d_backward(&self, _: &Infallible, _: &Pool2dParams) -> Result<Self> {
        match self.0 {}
    }
    fn avg_pool2d(&self, _: &Pool2dParams) -> Result<Self> {
        match self.0 {}
    }
    fn avg_pool2d_backward(&self, _: &Pool2dParams) -> Result<Self> {
        match self.0 {}
    }
    fn matmul(&self, _: &Self, _: usize, _: usize, _: usize, _: bool, _: bool) -> Result<Self> {
        match self.0 {}
    }
    fn gram(&self, _: usize, _: usize, _: usize, _: f32) -> Result<Self> {
        match self.0 {}
    }
    fn gram_backward(&self, _: &Self, _: usize, _: usize, _: usize, _: f32) -> Result<Self> {
        match self.0 {}
    }
    fn gram_backward_in_place(
        &mut self,
        _: &Self,
        _: usize,
        _: usize,
        _: usize,
        _: f32,
    ) -> Result<()> {
        match self.0 {}
    }
    fn transpose(&self, _: usize, _: usize) -> Result<Self> {
        match self.0 {}
    }
    fn binary(&self, _: &Self, _: BinaryOp) -> Result<Self> {
        match self.0 {}
    }
    fn scaled_mul(&self, _: &Self, _: f32) -> Result<Self> {
        match self.0 {}
    }
    fn scale(&self, _: f32) -> Result<Self> {
        match self.0 {}
    }
    fn square(&self) -> Result<Self> {
        match self.0 {}
    }
    fn copy_window(&self, _: &mut Self, _: &Window2dParams, _: bool) -> Result<()> {
        match self.0 {}
    }
    fn add_assign(&mut self, _: &Self) -> Result<()> {
        match self.0 {}
    }
    fn sum(&self) -> Result<Self> {
        match self.0 {}
    }
    fn broadcast(&self, _: usize) -> Result<Self> {
        match self.0 {}
    }
    fn squared_distance(&self, _: &Self) -> Result<Self> {
        match self.0 {}
    }
    fn scaled_difference_in_place(&mut self, _: &Self, _: &Self, _: f32) -> Result<()> {
        match self.0 {}
    }
    fn axpby(&self, _: f32, _: &Self, _: f32) -> Result<Self> {
        match self.0 {}
    }
    fn dot(&self, _: &Self) -> Result<f64> {
        match self.0 {}
    }
    fn dot_scalar(&self, _: &Self) -> Result<Infallible> {
        match self.0 {}
    }
    fn scalar_scale(a: &Infallible, _: f64) -> Result<Infallible> {
        match *a {}
    }
    fn scalar_sub(a: &Infallible, _: &Infallible) -> Result<Infallible> {
        match *a {}
    }
    fn scalar_value(a: &Infallible) -> Result<f64> {
        match *a {}
    }
    fn add_scaled(&self, _: &Self, _: &Infallible, _: f64) -> Result<Self> {
        match self.0 {}
    }
    fn dot_scalar_scaled(&self, _: &Self, _: f64) -> Result<Infallible> {
        match self.0 {}
    }
    fn add_scaled_dot(
        &self,
        _: &Self,
        _: &Infallible,
        _: Option<&Infallible>,
        _: f64,
        _: Option<(&Self, f64)>,
    ) -> Result<(Self, Option<Infallible>)> {
        match self.0 {}
    }
    fn abs_sum(&self) -> Result<f64> {
        match self.0 {}
    }
    fn abs_max(&self) -> Result<f32> {
        match self.0 {}
    }
    fn adam_update(&mut self, _: &Self, _: &mut Self, _: &mut Self, _: &AdamParams) -> Result<()> {
        match self.0 {}
    }
}

#[cfg(test)]
mod tests {
    use crate::{Device, TensorError};

    /// Every way to a CUDA device says why there is none; the CPU still works.
    #[test]
    fn cuda_is_unavailable_and_says_why() {
        for opened in [
            Device::cuda(0),
            Device::cuda_emulated(),
            Device::cuda_emulated_with_library(),
        ] {
            let Err(TensorError::CudaUnavailable { reason }) = opened else {
                panic!("a device without the cuda feature: {opened:?}")
            };
            assert!(reason.contains("`cuda` feature"), "{reason}");
        }
        let (device, why) = Device::best_available();
        assert_eq!(device, Device::Cpu);
        assert!(why.unwrap().contains("`cuda` feature"));
    }
}
