//! Gram matrices of feature maps: `G = scale · F·Fᵀ` per image, and
//! `dF = scale · (dG + dGᵀ)·F`.

use crate::op::{InputGrad, Op};
use crate::storage::Storage;
use crate::{Result, Tensor, TensorError};

/// (batch, channels, positions) of a `[C, M]` or `[N, C, H, W]` tensor.
fn layout(x: &Tensor) -> Result<(usize, usize, usize)> {
    match *x.dims() {
        [c, m] => Ok((1, c, m)),
        [n, c, h, w] => Ok((n, c, h * w)),
        _ => Err(TensorError::ShapeMismatch {
            op: "gram",
            lhs: x.dims().to_vec(),
            rhs: vec![0, 0, 0, 0],
        }),
    }
}

impl Tensor {
    /// `scale · F·Fᵀ` where F is each image's features as a `C × (H·W)` matrix:
    /// `[N, C, H, W]` → `[N, C, C]`, or `[C, M]` → `[C, C]`.
    pub fn gram(&self, scale: f32) -> Result<Tensor> {
        let (n, c, m) = layout(self)?;
        let g = self.storage().gram(n, c, m, scale)?;
        let shape: Vec<usize> = if self.dims().len() == 2 {
            vec![c, c]
        } else {
            vec![n, c, c]
        };
        Ok(Tensor::from_op(g, &shape, &[self], || Op::Gram {
            x: self.clone(),
            scale,
        }))
    }
}

pub(crate) fn backward(x: &Tensor, scale: f32, dg: &Storage) -> Result<Vec<InputGrad>> {
    let (n, c, m) = layout(x)?;
    Ok(vec![(
        x.node(),
        x.storage().gram_backward(dg, n, c, m, scale)?,
    )])
}
