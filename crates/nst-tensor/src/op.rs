//! The record an op leaves on the tape: its inputs and whatever its backward rule needs.
//! Each rule lives beside its forward pass in `ops/<op>.rs`.

use crate::ops;
use crate::storage::{PoolIndices, Storage};
use crate::tensor::Tensor;
use crate::Result;
use nst_params::{Conv2dParams, ConvAlgorithm, Pool2dParams};

pub(crate) enum Op {
    Conv2d {
        x: Tensor,
        w: Tensor,
        b: Option<Tensor>,
        p: Conv2dParams,
        /// The forward pass's algorithm, used again for the input gradient.
        algo: ConvAlgorithm,
        /// Fused ReLU: the output is max(conv + b, 0).
        relu: bool,
    },
    Relu {
        x: Tensor,
    },
    MaxPool {
        x: Tensor,
        p: Pool2dParams,
        /// The winner of each window, on the tensor's device.
        indices: PoolIndices,
    },
    AvgPool {
        x: Tensor,
        p: Pool2dParams,
    },
    Matmul {
        a: Tensor,
        b: Tensor,
    },
    Gram {
        x: Tensor,
        scale: f32,
    },
    Reshape {
        x: Tensor,
    },
    Transpose {
        x: Tensor,
    },
    Add {
        a: Tensor,
        b: Tensor,
    },
    Sub {
        a: Tensor,
        b: Tensor,
    },
    Mul {
        a: Tensor,
        b: Tensor,
    },
    Scale {
        x: Tensor,
        s: f32,
    },
    Square {
        x: Tensor,
    },
    Sum {
        x: Tensor,
    },
}

/// A gradient contribution for one input of an op, on the op's device.
pub(crate) type InputGrad = (Tensor, Storage);

impl Op {
    /// The gradients of the op's inputs that require one, given `out` (this op's result) and
    /// `grad` = ∂L/∂out (owned, so an op may reuse its buffer).
    pub(crate) fn backward(&self, out: &Tensor, grad: Storage) -> Result<Vec<InputGrad>> {
        match self {
            Op::Conv2d {
                x,
                w,
                b,
                p,
                algo,
                relu,
            } => ops::conv::backward(x, w, b.as_ref(), p, *algo, *relu, out, grad),
            Op::Relu { x } => ops::relu::backward(x, out, grad),
            Op::Reshape { x } => Ok(vec![(x.clone(), grad)]),
            Op::MaxPool { x, p, indices } => ops::pool::max_backward(x, p, indices, &grad),
            Op::AvgPool { x, p } => ops::pool::avg_backward(x, p, &grad),
            Op::Matmul { a, b } => ops::matmul::backward(a, b, &grad),
            Op::Gram { x, scale } => ops::gram::backward(x, *scale, &grad),
            Op::Transpose { x } => ops::shape::transpose_backward(x, &grad),
            Op::Add { a, b } => ops::elementwise::add_backward(a, b, grad),
            Op::Sub { a, b } => ops::elementwise::sub_backward(a, b, grad),
            Op::Mul { a, b } => ops::elementwise::mul_backward(a, b, &grad),
            Op::Scale { x, s } => ops::elementwise::scale_backward(x, *s, &grad),
            Op::Square { x } => ops::elementwise::square_backward(x, &grad),
            Op::Sum { x } => ops::reduce::sum_backward(x, &grad),
        }
    }

    /// The inputs, for walking the graph.
    pub(crate) fn inputs(&self) -> Vec<&Tensor> {
        match self {
            Op::Conv2d { x, w, b, .. } => [Some(x), Some(w), b.as_ref()]
                .into_iter()
                .flatten()
                .collect(),
            Op::Relu { x } | Op::MaxPool { x, .. } | Op::AvgPool { x, .. } | Op::Gram { x, .. } => {
                vec![x]
            }
            Op::Reshape { x }
            | Op::Transpose { x }
            | Op::Scale { x, .. }
            | Op::Square { x }
            | Op::Sum { x } => vec![x],
            Op::Matmul { a, b } | Op::Add { a, b } | Op::Sub { a, b } | Op::Mul { a, b } => {
                vec![a, b]
            }
        }
    }
}

/// Keeps only the contributions whose input requires a gradient.
pub(crate) fn needed(grads: impl IntoIterator<Item = (Tensor, Option<Storage>)>) -> Vec<InputGrad> {
    grads
        .into_iter()
        .filter_map(|(t, g)| Some((t, g?)))
        .collect()
}

/// `f()` for an input that requires a gradient, `None` otherwise.
pub(crate) fn if_needed(
    t: &Tensor,
    f: impl FnOnce() -> Result<Storage>,
) -> Result<Option<Storage>> {
    t.requires_grad().then(f).transpose()
}
