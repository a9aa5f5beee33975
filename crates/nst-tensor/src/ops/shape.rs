//! Reshape and 2-D transpose.

use crate::op::{InputGrad, Op};
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
        Ok(Tensor::from_storage_op(
            self.0.storage.clone(),
            shape,
            self.device(),
            &[self],
            || Op::Reshape { x: self.clone() },
        ))
    }

    /// The transpose of a 2-D tensor (copied into row-major order).
    pub fn transpose(&self) -> Result<Tensor> {
        let [r, c] = *self.dims() else {
            return Err(TensorError::ShapeMismatch {
                op: "transpose",
                lhs: self.dims().to_vec(),
                rhs: vec![0, 0],
            });
        };
        let t = transpose_data(self.data(), r, c);
        Ok(Tensor::from_op(t, &[c, r], self.device(), &[self], || {
            Op::Transpose { x: self.clone() }
        }))
    }
}

fn transpose_data(a: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut t = vec![0.0; r * c];
    for i in 0..r {
        for j in 0..c {
            t[j * r + i] = a[i * c + j];
        }
    }
    t
}

pub(crate) fn transpose_backward(x: &Tensor, dy: &[f32]) -> Vec<InputGrad> {
    let (r, c) = (x.dims()[0], x.dims()[1]);
    vec![(x.clone(), transpose_data(dy, c, r))]
}
