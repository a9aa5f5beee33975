//! The seam between tensors and devices: every kernel an op needs, as one trait that each
//! device's storage implements ([`crate::cpu_backend::CpuStorage`], the CUDA storage), and
//! the device-level operations (allocation, caches) as a second.
//!
//! The pattern is candle-core's `backend.rs`: `Storage` (crate-private) is an enum with one
//! variant per device and forwards each call to the variant's implementation, so adding a
//! device means implementing these two traits and adding an arm. Kernels take whole,
//! contiguous buffers (NCHW for images, as the shapes say; a CUDA storage may hold its values
//! NHWC and converts where they are read in order) and return new storage on the same
//! device; the few in-place methods exist where reusing a buffer measurably saves memory
//! (gradient accumulation, masking a gradient, the optimizer's update).
//!
//! Names of gradients follow llm.c: `dy` is ∂L/∂y for an op's output y, `dx`, `dw`, `db` the
//! gradients it produces.

use crate::{Device, Result};
use nst_params::{AdamParams, Conv2dParams, ConvAlgorithm, Pool2dParams, Window2dParams};

/// Elementwise binary operations on equal-length buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryOp {
    /// a + b
    Add,
    /// a − b
    Sub,
    /// a ⊙ b
    Mul,
}

/// A device's memory for one tensor, with every kernel the ops of this crate call.
///
/// Implementations may assume what the tensor layer has checked: operands are on this device
/// and their lengths match the shapes passed in.
pub trait BackendStorage: Sized {
    /// Which input element won each 2×2 max-pooling window (one byte each on both backends:
    /// its place in the window), kept on the device for the backward pass.
    type PoolIndices;
    /// Which elements of a ReLU's output were positive, one bit each, kept on the device for
    /// the backward pass instead of the output itself.
    type ReluMask;
    /// One f64 on the device: an optimizer's scalar that need not visit the host.
    type Scalar;

    /// Number of f32 elements.
    fn len(&self) -> usize;
    /// True when there are no elements.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The device holding the data.
    fn device(&self) -> &Device;
    /// A copy of the data in host memory.
    fn to_vec(&self) -> Result<Vec<f32>>;
    /// A copy on the same device.
    fn try_clone(&self) -> Result<Self>;

    /// `y = conv(x, w) + b`, or `max(conv(x, w) + b, 0)` when `relu` (self is x).
    fn conv2d(
        &self,
        w: &Self,
        b: Option<&Self>,
        p: &Conv2dParams,
        algo: ConvAlgorithm,
        relu: bool,
    ) -> Result<Self>;
    /// `max(conv(x, w) + b, 0)` (self is x) and its [`BackendStorage::relu_mask`], for a
    /// layer whose backward pass will run: a backend may make the mask in the same pass over
    /// the output as the bias and ReLU (the CUDA backend does).
    fn conv2d_relu_masked(
        &self,
        w: &Self,
        b: Option<&Self>,
        p: &Conv2dParams,
        algo: ConvAlgorithm,
    ) -> Result<(Self, Self::ReluMask)> {
        let y = self.conv2d(w, b, p, algo, true)?;
        let mask = y.relu_mask()?;
        Ok((y, mask))
    }
    /// `dx = ∂L/∂x` of the convolution `p` from `dy` (self) and the weights.
    fn conv2d_backward_input(
        &self,
        w: &Self,
        p: &Conv2dParams,
        algo: ConvAlgorithm,
    ) -> Result<Self>;
    /// `dx += ∂L/∂x` of the convolution `p` from `dy` (self) and the weights: the input
    /// gradient added into one that already exists, without a temporary of its size where
    /// the backend can.
    fn conv2d_backward_input_accumulate(
        &self,
        w: &Self,
        p: &Conv2dParams,
        algo: ConvAlgorithm,
        dx: &mut Self,
    ) -> Result<()>;
    /// `(dw, db)` from the input x (self) and `dy`; `db` only when `with_bias`. Style transfer
    /// never calls this (its weights are frozen).
    fn conv2d_backward_weight(
        &self,
        dy: &Self,
        p: &Conv2dParams,
        with_bias: bool,
    ) -> Result<(Self, Option<Self>)>;

    /// `max(x, 0)`.
    fn relu(&self) -> Result<Self>;
    /// The positive elements of a ReLU's output `y` (self), packed (NaN is not positive).
    fn relu_mask(&self) -> Result<Self::ReluMask>;
    /// ReLU's backward in place on `dy` (self): `dy = 0` where the output was not positive
    /// (PyTorch's convention: gradient 0 at x = 0).
    fn apply_relu_mask(&mut self, mask: &Self::ReluMask) -> Result<()>;

    /// 2×2 stride-2 max pooling: the output and, per output, which input element won (ties
    /// to the first in row-major order, NaN propagates, as in PyTorch).
    fn max_pool2d(&self, p: &Pool2dParams) -> Result<(Self, Self::PoolIndices)>;
    /// `dx` of max pooling from `dy` (self): each `dy` goes to its window's winner.
    fn max_pool2d_backward(&self, indices: &Self::PoolIndices, p: &Pool2dParams) -> Result<Self>;
    /// 2×2 stride-2 average pooling.
    fn avg_pool2d(&self, p: &Pool2dParams) -> Result<Self>;
    /// `dx` of average pooling from `dy` (self): a quarter of each `dy` to its window.
    fn avg_pool2d_backward(&self, p: &Pool2dParams) -> Result<Self>;

    /// `op(a)[m × k] · op(b)[k × n]` with row-major a (self) and b, where `op` transposes
    /// when asked: a is stored `[k × m]` when `trans_a`, b `[n × k]` when `trans_b`.
    #[allow(clippy::too_many_arguments)]
    fn matmul(
        &self,
        b: &Self,
        m: usize,
        k: usize,
        n: usize,
        trans_a: bool,
        trans_b: bool,
    ) -> Result<Self>;
    /// `G_i = scale · F_i·F_iᵀ` for each of `batch` matrices `F_i[c × m]` stored one after
    /// another in self → `[batch, c, c]`.
    fn gram(&self, batch: usize, c: usize, m: usize, scale: f32) -> Result<Self>;
    /// `dF_i = scale · (dG_i + dG_iᵀ)·F_i` from F (self) and `dG`.
    fn gram_backward(
        &self,
        dg: &Self,
        batch: usize,
        c: usize,
        m: usize,
        scale: f32,
    ) -> Result<Self>;
    /// [`BackendStorage::gram_backward`] written over F (self) when nothing else reads F: a
    /// loss layer's features become their gradient without a second buffer of their size.
    fn gram_backward_in_place(
        &mut self,
        dg: &Self,
        batch: usize,
        c: usize,
        m: usize,
        scale: f32,
    ) -> Result<()>;
    /// The transpose of a row-major `[rows × cols]` matrix.
    fn transpose(&self, rows: usize, cols: usize) -> Result<Self>;

    /// `a op b` elementwise (self is a).
    fn binary(&self, b: &Self, op: BinaryOp) -> Result<Self>;
    /// `s · a ⊙ b` elementwise: the backward of a product (s = 1) and of a square (s = 2).
    fn scaled_mul(&self, b: &Self, s: f32) -> Result<Self>;
    /// `s · x`.
    fn scale(&self, s: f32) -> Result<Self>;
    /// `x²`.
    fn square(&self) -> Result<Self>;
    /// `dst`'s window = this storage's window (`accumulate`: `+=`), the rest of `dst` as it
    /// was: a tile cropped out of planes, or pasted back into them (the window fits both;
    /// the caller checks).
    fn copy_window(&self, dst: &mut Self, p: &Window2dParams, accumulate: bool) -> Result<()>;
    /// `self += other`: how gradients from several uses of a tensor accumulate.
    fn add_assign(&mut self, other: &Self) -> Result<()>;
    /// Σx accumulated in f64, as a one-element buffer on the device.
    fn sum(&self) -> Result<Self>;
    /// `n` copies of the single element of self (the backward of [`BackendStorage::sum`]).
    fn broadcast(&self, n: usize) -> Result<Self>;
    /// Σ (aᵢ − bᵢ)² (self is a; each term in f32, the sum in f64) as a one-element buffer on
    /// the device: the losses' squared distance, with no buffer of differences.
    fn squared_distance(&self, b: &Self) -> Result<Self>;
    /// `a ← (s·g₀)·(a − b)` over a (self), with `g` a one-element buffer on the device: the
    /// gradient of `g₀·Σ(a − b)²` for s = 2, written over the features it is taken at.
    fn scaled_difference_in_place(&mut self, b: &Self, g: &Self, s: f32) -> Result<()>;

    /// `α·x + β·y` (optimizer update; self is x).
    fn axpby(&self, alpha: f32, y: &Self, beta: f32) -> Result<Self>;
    /// Σ xᵢ·yᵢ accumulated in f64.
    fn dot(&self, y: &Self) -> Result<f64>;
    /// [`BackendStorage::dot`], left on the device.
    fn dot_scalar(&self, y: &Self) -> Result<Self::Scalar>;
    /// `r·a` for a device scalar.
    fn scalar_scale(a: &Self::Scalar, r: f64) -> Result<Self::Scalar>;
    /// `a − b` for device scalars.
    fn scalar_sub(a: &Self::Scalar, b: &Self::Scalar) -> Result<Self::Scalar>;
    /// A device scalar's value on the host.
    fn scalar_value(a: &Self::Scalar) -> Result<f64>;
    /// `x + f32(factor·coef)·y` (self is x): [`BackendStorage::axpby`] with α = 1 and a
    /// device-scalar β, rounded to f32 as the host would round it.
    fn add_scaled(&self, y: &Self, coef: &Self::Scalar, factor: f64) -> Result<Self>;
    /// `r·(x·y)` left on the device: [`BackendStorage::dot_scalar`] then
    /// [`BackendStorage::scalar_scale`], the same bits.
    fn dot_scalar_scaled(&self, y: &Self, r: f64) -> Result<Self::Scalar>;
    /// One step of L-BFGS's two-loop recursion: `x' = x + f32(factor·(coef − minus))·y`
    /// (`minus` absent: 0) and, with `dot_with = Some((v, r))`, `r·(v·x')` on the device. The
    /// same bits as [`BackendStorage::scalar_sub`], [`BackendStorage::add_scaled`] and
    /// [`BackendStorage::dot_scalar_scaled`] in turn; a GPU does it in one pass.
    fn add_scaled_dot(
        &self,
        y: &Self,
        coef: &Self::Scalar,
        minus: Option<&Self::Scalar>,
        factor: f64,
        dot_with: Option<(&Self, f64)>,
    ) -> Result<(Self, Option<Self::Scalar>)>;
    /// Σ |xᵢ| accumulated in f64.
    fn abs_sum(&self) -> Result<f64>;
    /// max |xᵢ|, NaN if any element is NaN.
    fn abs_max(&self) -> Result<f32>;
    /// One Adam update of x (self) in place, with the moments `m`, `v` updated in place.
    fn adam_update(&mut self, g: &Self, m: &mut Self, v: &mut Self, p: &AdamParams) -> Result<()>;
}

/// A device: where storage comes from, and its caches.
pub trait BackendDevice {
    /// The storage type this device makes.
    type Storage: BackendStorage;
    /// Moves host data onto the device.
    fn storage_from_vec(&self, data: Vec<f32>) -> Result<Self::Storage>;
    /// `n` copies of `value`.
    fn storage_full(&self, value: f32, n: usize) -> Result<Self::Storage>;
    /// Returns cached scratch memory (convolution buffers, pools) to the system, e.g. between
    /// image scales whose shapes differ.
    fn release_cached_memory(&self);
}
