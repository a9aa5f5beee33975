//! Reshape and 2-D transpose.

use crate::op::{InputGrad, Op};
use crate::storage::Storage;
use crate::tensor::NodeRef;
use crate::{Result, Tensor, TensorError};

impl Tensor {
    /// The same elements in a new shape (no copy).
    pub fn reshape(&self, shape: &[usize]) -> Result<Tensor> {
        if shape.iter().product::<usize>() != self.elem_count() {
            return Err(TensorError::ShapeMismatch {
                op: "reshape",
                lhs: self.dims().to_vec(),
                rhs: shape.to_vec(),
            });
        }
        Ok(Tensor::from_shared_op(self.value(), shape, &[self], || {
            Op::Reshape { x: self.node() }
        }))
    }

    /// The transpose of a 2-D tensor (copied into row-major order).
    pub fn transpose(&self) -> Result<Tensor> {
        let [r, c] = *self.dims() else {
            return Err(TensorError::Invalid {
                op: "transpose",
                reason: format!("expects a 2-D tensor, got {:?}", self.dims()),
            });
        };
        let t = self.storage().transpose(r, c)?;
        Ok(Tensor::from_op(t, &[c, r], &[self], || Op::Transpose {
            x: self.node(),
        }))
    }
}

pub(crate) fn transpose_backward(x: &NodeRef, dy: &Storage) -> Result<Vec<InputGrad>> {
    let (r, c) = (x.dims()[0], x.dims()[1]);
    Ok(vec![(x.clone(), dy.transpose(c, r)?)])
}
