//! The losses' squared distance `Σ (a − b)²` as one op, and its gradient
//! `∂/∂a = 2·g·(a − b)`, `∂/∂b = −2·g·(a − b)`.
//!
//! It gives the same bits as `a.sub(b)?.square()?.sum()?` (each term in f32, the sum in f64;
//! a test checks it on every device) with fewer buffers. The chain kept the differences for
//! the square's backward, and its backward pass broadcast the upstream gradient to a buffer
//! of the input's size before multiplying: three buffers of the content layer's size (relu4_2,
//! 128 MiB each at 2048²) while the content loss's backward ran, at the start of the backward
//! pass. Here the forward pass keeps only its operands (the features, which the graph holds
//! anyway, and the target), and the gradient is written over the features where this record
//! is their last holder. At 2048² that phase had been the iteration's heap peak (3299 MB); now
//! the peak is conv4_x's backward at 3265 MB (`xtask bench-worker --size 2048 --iters 1`). On
//! a GPU the loss takes four launches instead of seven.

use crate::op::{InputGrad, Op};
use crate::{Result, Tensor};
use std::sync::Arc;

impl Tensor {
    /// `Σ (self − other)²` over all elements → shape `[]` (each term rounded to f32, the sum
    /// accumulated in f64).
    pub fn squared_distance(&self, other: &Tensor) -> Result<Tensor> {
        self.same_shape(other, "squared_distance")?;
        let out = self.storage().squared_distance(other.storage())?;
        Ok(Tensor::from_op(out, &[], &[self, other], || {
            Op::SquaredDistance {
                a: self.clone(),
                b: other.clone(),
            }
        }))
    }
}

/// `2·g·(a − b)` to a, written over a's buffer when this record holds its only reference, and
/// its negation to b.
pub(crate) fn backward(
    a: Tensor,
    b: Tensor,
    g: &crate::storage::Storage,
) -> Result<Vec<InputGrad>> {
    let (a_node, b_node) = (a.node(), b.node());
    if !a_node.requires_grad() && !b_node.requires_grad() {
        return Ok(vec![]);
    }
    let mut da = match Arc::try_unwrap(a.storage) {
        Ok(values) => values,
        Err(shared) => shared.try_clone()?,
    };
    da.scaled_difference_in_place(b.storage(), g, 2.0)?;
    let db = if b_node.requires_grad() {
        Some(da.scale(-1.0)?)
    } else {
        None
    };
    let da = a_node.requires_grad().then_some(da);
    Ok(crate::op::needed([(a_node, da), (b_node, db)]))
}
