//! Gram matrices of feature maps: `G = scale · F·Fᵀ` per image, and
//! `dF = scale · (dG + dGᵀ)·F`.

use crate::op::{InputGrad, Op};
use crate::storage::Storage;
use crate::{Result, Tensor, TensorError};
use std::sync::Arc;

/// (batch, channels, positions) of a `[C, M]` or `[N, C, H, W]` tensor.
fn layout(x: &Tensor) -> Result<(usize, usize, usize)> {
    match *x.dims() {
        [c, m] => Ok((1, c, m)),
        [n, c, h, w] => Ok((n, c, h * w)),
        _ => Err(TensorError::Invalid {
            op: "gram",
            reason: format!(
                "expects a [C, M] or [N, C, H, W] tensor, got {:?}",
                x.dims()
            ),
        }),
    }
}

impl Tensor {
    /// `scale · F·Fᵀ` where F is each image's features as a `C × (H·W)` matrix:
    /// `[N, C, H, W]` → `[N, C, C]`, or `[C, M]` → `[C, C]`.
    pub fn gram(&self, scale: f32) -> Result<Tensor> {
        crate::interrupt::check()?;
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

/// Where the record holds the only reference to F (a loss layer's features, once the caller
/// has dropped them), `dF` is written over F instead of into a new buffer of F's size.
pub(crate) fn backward(x: Tensor, scale: f32, dg: &Storage) -> Result<Vec<InputGrad>> {
    let (n, c, m) = layout(&x)?;
    let node = x.node();
    let df = match Arc::try_unwrap(x.storage) {
        Ok(mut f) => {
            f.gram_backward_in_place(dg, n, c, m, scale)?;
            f
        }
        Err(shared) => shared.gram_backward(dg, n, c, m, scale)?,
    };
    Ok(vec![(node, df)])
}
