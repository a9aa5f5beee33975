//! The record an op leaves on the tape: its inputs and whatever its backward rule needs.
//! Each rule lives beside its forward pass in `ops/<op>.rs`.

use crate::backward::Pending;
use crate::ops;
use crate::storage::{PoolIndices, ReluMask, Storage};
use crate::tensor::{Node, NodeRef, Tensor};
use crate::Result;
use nst_params::{Conv2dParams, ConvAlgorithm, Pool2dParams, Window2dParams};
use std::sync::Arc;

/// Each variant holds its inputs' nodes (for the graph) and only the values its backward
/// rule reads: a [`Tensor`] field is kept with its data, a [`NodeRef`] field without.
pub(crate) enum Op {
    Conv2d {
        x: NodeRef,
        /// The input's value: only when the weights or the bias need a gradient (`dw` reads
        /// it, and the backend computes `db` in the same pass; `dx` does not).
        x_value: Option<Arc<Storage>>,
        w: Tensor,
        b: Option<NodeRef>,
        p: Conv2dParams,
        /// The forward pass's algorithm, used again for the input gradient.
        algo: ConvAlgorithm,
        /// Fused ReLU (the output is max(conv + b, 0)): the output's sign.
        relu: Option<ReluMask>,
    },
    Relu {
        x: NodeRef,
        /// The output's sign.
        mask: ReluMask,
    },
    MaxPool {
        x: NodeRef,
        p: Pool2dParams,
        /// The winner of each window, on the tensor's device.
        indices: PoolIndices,
    },
    AvgPool {
        x: NodeRef,
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
        x: NodeRef,
    },
    Crop {
        x: NodeRef,
        p: Window2dParams,
    },
    /// Recomputed in backward ([`Tensor::checkpoint`]): the inputs' values and the function.
    Checkpoint {
        inputs: Vec<Tensor>,
        f: ops::checkpoint::Recompute,
    },
    Transpose {
        x: NodeRef,
    },
    Add {
        a: NodeRef,
        b: NodeRef,
    },
    Sub {
        a: NodeRef,
        b: NodeRef,
    },
    Mul {
        a: Tensor,
        b: Tensor,
    },
    Scale {
        x: NodeRef,
        s: f32,
    },
    Square {
        x: Tensor,
    },
    Sum {
        x: NodeRef,
    },
    SquaredDistance {
        a: Tensor,
        b: Tensor,
    },
}

/// A gradient contribution for one input of an op, on the op's device.
pub(crate) type InputGrad = (NodeRef, Storage);

impl Op {
    /// `backward of OP`: the memory trace's phase while this op's rule runs.
    pub(crate) fn backward_label(&self) -> &'static str {
        match self {
            Op::Conv2d { .. } => "backward of conv2d",
            Op::Relu { .. } => "backward of relu",
            Op::MaxPool { .. } => "backward of max_pool2d",
            Op::AvgPool { .. } => "backward of avg_pool2d",
            Op::Matmul { .. } => "backward of matmul",
            Op::Gram { .. } => "backward of gram",
            Op::Reshape { .. } => "backward of reshape",
            Op::Crop { .. } => "backward of crop",
            Op::Transpose { .. } => "backward of transpose",
            Op::Add { .. } => "backward of add",
            Op::Sub { .. } => "backward of sub",
            Op::Mul { .. } => "backward of mul",
            Op::Scale { .. } => "backward of scale",
            Op::Square { .. } => "backward of square",
            Op::Sum { .. } => "backward of sum",
            Op::SquaredDistance { .. } => "backward of squared_distance",
            Op::Checkpoint { .. } => "backward of checkpoint (recomputing)",
        }
    }

    /// The gradients of the op's inputs that require one, given `grad` = ∂L/∂out (owned, so
    /// an op may reuse its buffer); an op may instead add an input's gradient into `pending`
    /// where that input already has one. The record is consumed: a value it saved may become
    /// a gradient's buffer.
    pub(crate) fn backward(self, grad: Storage, pending: &mut Pending) -> Result<Vec<InputGrad>> {
        match self {
            Op::Conv2d {
                x,
                x_value,
                w,
                b,
                p,
                algo,
                relu,
            } => ops::conv::backward(
                &x,
                x_value.as_deref(),
                &w,
                b.as_ref(),
                &p,
                algo,
                relu.as_ref(),
                grad,
                pending,
            ),
            Op::Relu { x, mask } => ops::relu::backward(&x, &mask, grad),
            Op::Reshape { x } => Ok(vec![(x, grad)]),
            Op::Crop { x, p } => ops::window::crop_backward(&x, &p, &grad),
            Op::MaxPool { x, p, indices } => ops::pool::max_backward(&x, &p, &indices, &grad),
            Op::AvgPool { x, p } => ops::pool::avg_backward(&x, &p, &grad),
            Op::Matmul { a, b } => ops::matmul::backward(&a, &b, &grad),
            Op::Gram { x, scale } => ops::gram::backward(x, scale, &grad),
            Op::Transpose { x } => ops::shape::transpose_backward(&x, &grad),
            Op::Add { a, b } => ops::elementwise::add_backward(&a, &b, grad),
            Op::Sub { a, b } => ops::elementwise::sub_backward(&a, &b, grad),
            Op::Mul { a, b } => ops::elementwise::mul_backward(&a, &b, &grad),
            Op::Scale { x, s } => ops::elementwise::scale_backward(&x, s, &grad),
            Op::Square { x } => ops::elementwise::square_backward(&x, &grad),
            Op::Sum { x } => ops::reduce::sum_backward(&x, &grad),
            Op::SquaredDistance { a, b } => ops::distance::backward(a, b, &grad),
            Op::Checkpoint { inputs, f } => ops::checkpoint::backward(&inputs, &f, grad),
        }
    }

    /// The inputs' nodes, for walking the graph.
    pub(crate) fn inputs(&self) -> Vec<&NodeRef> {
        match self {
            Op::Conv2d { x, w, b, .. } => [Some(x), Some(&w.node), b.as_ref()]
                .into_iter()
                .flatten()
                .collect(),
            Op::Relu { x, .. }
            | Op::MaxPool { x, .. }
            | Op::AvgPool { x, .. }
            | Op::Reshape { x }
            | Op::Crop { x, .. }
            | Op::Transpose { x }
            | Op::Scale { x, .. }
            | Op::Sum { x } => vec![x],
            Op::Gram { x, .. } | Op::Square { x } => vec![&x.node],
            Op::Add { a, b } | Op::Sub { a, b } => vec![a, b],
            Op::Matmul { a, b } | Op::Mul { a, b } | Op::SquaredDistance { a, b } => {
                vec![&a.node, &b.node]
            }
            Op::Checkpoint { inputs, .. } => inputs.iter().map(|t| &t.node).collect(),
        }
    }
}

/// Keeps only the contributions whose input requires a gradient.
pub(crate) fn needed(
    grads: impl IntoIterator<Item = (NodeRef, Option<Storage>)>,
) -> Vec<InputGrad> {
    grads
        .into_iter()
        .filter_map(|(t, g)| Some((t, g?)))
        .collect()
}

/// `f()` for an input that requires a gradient, `None` otherwise.
pub(crate) fn if_needed(t: &Node, f: impl FnOnce() -> Result<Storage>) -> Result<Option<Storage>> {
    t.requires_grad().then(f).transpose()
}
