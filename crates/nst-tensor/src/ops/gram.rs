//! Gram matrices of feature maps.

use crate::op::{InputGrad, Op};
use crate::{Result, Tensor, TensorError};
use nst_cpu::gram::{gram_backward, gram_forward};

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
        let mut g = vec![0.0; n * c * c];
        for (f, g) in self.data().chunks(c * m.max(1)).zip(g.chunks_mut(c * c)) {
            gram_forward(&f[..c * m], c, m, scale, g);
        }
        let shape: Vec<usize> = if self.dims().len() == 2 {
            vec![c, c]
        } else {
            vec![n, c, c]
        };
        Ok(Tensor::from_op(g, &shape, self.device(), &[self], || {
            Op::Gram {
                x: self.clone(),
                scale,
            }
        }))
    }
}

pub(crate) fn backward(x: &Tensor, scale: f32, dg: &[f32]) -> Vec<InputGrad> {
    let (n, c, m) = layout(x).expect("checked in forward");
    let mut dx = vec![0.0; n * c * m];
    for i in 0..n {
        let f = &x.data()[i * c * m..(i + 1) * c * m];
        gram_backward(
            f,
            &dg[i * c * c..(i + 1) * c * c],
            c,
            m,
            scale,
            &mut dx[i * c * m..(i + 1) * c * m],
        );
    }
    vec![(x.clone(), dx)]
}
