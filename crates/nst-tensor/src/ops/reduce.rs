//! Reductions to a scalar.

use crate::op::{InputGrad, Op};
use crate::storage::Storage;
use crate::tensor::NodeRef;
use crate::{Result, Tensor};

impl Tensor {
    /// Σ of all elements (accumulated in f64) → shape `[]`, on the same device.
    pub fn sum(&self) -> Result<Tensor> {
        let s = self.storage().sum()?;
        Ok(Tensor::from_op(s, &[], &[self], || Op::Sum {
            x: self.node(),
        }))
    }

    /// Mean of all elements → shape `[]`.
    pub fn mean(&self) -> Result<Tensor> {
        self.sum()?.scale(1.0 / self.elem_count().max(1) as f32)
    }
}

pub(crate) fn sum_backward(x: &NodeRef, g: &Storage) -> Result<Vec<InputGrad>> {
    Ok(vec![(x.clone(), g.broadcast(x.elem_count())?)])
}
