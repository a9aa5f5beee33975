//! 2-D convolution with optional bias, and the same with a fused ReLU.
//!
//! Forward: `y = conv(x, w) + b` (optionally `max(·, 0)`). Backward, given `dy`:
//! - fused ReLU first: `dy ← dy ⊙ [y > 0]` (in place, from a one-bit mask of `y` saved by the
//!   forward pass; neither the pre-activation nor `y` is kept);
//! - `dx = conv(dy, W̃)` with the flipped kernel (the backend's input-gradient kernel), by the
//!   same algorithm as the forward pass;
//! - `dw`, `db` only when the weights or bias require a gradient: never in style transfer,
//!   whose network is frozen, so that pass costs nothing there — and the input `x`, which
//!   only `dw` reads, is not kept either: a frozen layer's record holds the weights and the
//!   mask, so the previous activation is freed as soon as nothing else holds it.

use crate::backward::Pending;
use crate::op::{if_needed, needed, InputGrad, Op};
use crate::storage::{ReluMask, Storage};
use crate::tensor::NodeRef;
use crate::{Result, Tensor, TensorError};
use nst_params::{Conv2dParams, ConvAlgorithm};

/// How to convolve: stride and zero padding (equal along both axes), the algorithm, and
/// whether a ReLU follows in the same op.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2dOptions {
    /// Stride.
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
    /// The algorithm the backend uses, forward and for the input gradient.
    pub algorithm: ConvAlgorithm,
    /// Apply `max(·, 0)` to the output in the same op.
    pub relu: bool,
}

impl Conv2dOptions {
    /// Stride and padding with the backend's fastest algorithm and no ReLU.
    pub fn new(stride: usize, pad: usize) -> Self {
        Self {
            stride,
            pad,
            algorithm: ConvAlgorithm::Fastest,
            relu: false,
        }
    }
}

impl Tensor {
    /// Cross-correlation of `self[N, C_in, H, W]` with `w[C_out, C_in, kh, kw]`, plus
    /// `b[C_out]`, with the given stride and zero padding → `[N, C_out, OH, OW]`.
    pub fn conv2d(
        &self,
        w: &Tensor,
        b: Option<&Tensor>,
        stride: usize,
        pad: usize,
    ) -> Result<Tensor> {
        self.conv2d_with(w, b, Conv2dOptions::new(stride, pad))
    }

    /// `relu(self.conv2d(w, b, stride, pad))` in one op: the pre-activation is never stored
    /// (half the activation memory of a VGG forward pass), and the backward pass masks the
    /// gradient with the output's sign, as ReLU's own backward does.
    pub fn conv2d_relu(
        &self,
        w: &Tensor,
        b: Option<&Tensor>,
        stride: usize,
        pad: usize,
    ) -> Result<Tensor> {
        let relu = Conv2dOptions {
            relu: true,
            ..Conv2dOptions::new(stride, pad)
        };
        self.conv2d_with(w, b, relu)
    }

    /// The convolution with every option explicit (see [`Conv2dOptions`]).
    pub fn conv2d_with(&self, w: &Tensor, b: Option<&Tensor>, o: Conv2dOptions) -> Result<Tensor> {
        crate::interrupt::check()?;
        let (x_dims, w_dims) = (self.dims(), w.dims());
        let mismatch = || TensorError::ShapeMismatch {
            op: "conv2d",
            lhs: x_dims.to_vec(),
            rhs: w_dims.to_vec(),
        };
        if x_dims.len() != 4 || w_dims.len() != 4 || x_dims[1] != w_dims[1] || o.stride == 0 {
            return Err(mismatch());
        }
        if let Some(b) = b {
            if b.dims() != [w_dims[0]] {
                return Err(TensorError::ShapeMismatch {
                    op: "conv2d bias",
                    lhs: b.dims().to_vec(),
                    rhs: vec![w_dims[0]],
                });
            }
        }
        let p = Conv2dParams {
            batch: x_dims[0],
            in_channels: x_dims[1],
            in_h: x_dims[2],
            in_w: x_dims[3],
            out_channels: w_dims[0],
            kernel_h: w_dims[2],
            kernel_w: w_dims[3],
            stride: o.stride,
            pad: o.pad,
        };
        if p.out_h() == 0 || p.out_w() == 0 {
            return Err(mismatch());
        }
        let shape = [p.batch, p.out_channels, p.out_h(), p.out_w()];
        let mut inputs = vec![self, w];
        inputs.extend(b);
        let (x, w_s, b_s) = (self.storage(), w.storage(), b.map(|b| b.storage()));
        // A ReLU whose backward will run keeps its output's mask, made with the output where
        // the backend can (one pass over it instead of two).
        let (y, mask) = if o.relu && Tensor::will_record(&inputs) {
            let (y, mask) = x.conv2d_relu_masked(w_s, b_s, &p, o.algorithm)?;
            (y, Some(mask))
        } else {
            (x.conv2d(w_s, b_s, &p, o.algorithm, o.relu)?, None)
        };
        let weights_learn = w.requires_grad() || b.is_some_and(Tensor::requires_grad);
        Ok(Tensor::from_op(y, &shape, &inputs, || Op::Conv2d {
            x: self.node(),
            x_value: weights_learn.then(|| self.value()),
            w: w.clone(),
            b: b.map(Tensor::node),
            p,
            algo: o.algorithm,
            relu: mask,
        }))
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn backward(
    x: &NodeRef,
    x_value: Option<&Storage>,
    w: &Tensor,
    b: Option<&NodeRef>,
    p: &Conv2dParams,
    algo: ConvAlgorithm,
    relu: Option<&ReluMask>,
    mut dy: Storage,
    pending: &mut Pending,
) -> Result<Vec<InputGrad>> {
    if let Some(mask) = relu {
        dy.apply_relu_mask(mask)?;
    }
    // The input of a conv after a loss layer already has that loss's gradient (the loss was
    // differentiated first): add into it rather than hold a second buffer of its size.
    let dx = match pending.get_mut(x.id) {
        Some(acc) if x.requires_grad() => {
            dy.conv2d_backward_input_accumulate(w.storage(), p, algo, acc)?;
            None
        }
        _ => if_needed(x, || dy.conv2d_backward_input(w.storage(), p, algo))?,
    };
    let need_b = b.is_some_and(|b| b.requires_grad());
    let (dw, db) = match x_value {
        Some(x_value) if w.requires_grad() || need_b => {
            let (dw, db) = x_value.conv2d_backward_weight(&dy, p, need_b)?;
            (w.requires_grad().then_some(dw), db)
        }
        _ => (None, None),
    };
    let mut grads = needed([(x.clone(), dx), (w.node(), dw)]);
    if let (Some(b), Some(db)) = (b, db) {
        grads.push((b.clone(), db));
    }
    Ok(grads)
}
