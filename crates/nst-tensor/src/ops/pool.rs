//! 2×2 max and average pooling, stride 2, floor mode.

use crate::op::{InputGrad, Op};
use crate::{Result, Tensor, TensorError};
use nst_cpu::pool::*;

fn params(x: &Tensor, op: &'static str) -> Result<(Pool2dParams, [usize; 4])> {
    let d = x.dims();
    if d.len() != 4 || d[2] < 2 || d[3] < 2 {
        return Err(TensorError::ShapeMismatch {
            op,
            lhs: d.to_vec(),
            rhs: vec![1, 1, 2, 2],
        });
    }
    let p = Pool2dParams {
        planes: d[0] * d[1],
        in_h: d[2],
        in_w: d[3],
    };
    Ok((p, [d[0], d[1], p.out_h(), p.out_w()]))
}

impl Tensor {
    /// 2×2 max pooling with stride 2 on `[N, C, H, W]` → `[N, C, H/2, W/2]` (floor).
    pub fn max_pool2d(&self) -> Result<Tensor> {
        let (p, shape) = params(self, "max_pool2d")?;
        let mut y = vec![0.0; p.output_len()];
        let mut argmax = vec![0u32; p.output_len()];
        max_pool_forward(&p, self.data(), &mut y, &mut argmax);
        Ok(Tensor::from_op(y, &shape, self.device(), &[self], || {
            Op::MaxPool {
                x: self.clone(),
                p,
                argmax,
            }
        }))
    }

    /// 2×2 average pooling with stride 2 on `[N, C, H, W]` → `[N, C, H/2, W/2]` (floor).
    pub fn avg_pool2d(&self) -> Result<Tensor> {
        let (p, shape) = params(self, "avg_pool2d")?;
        let mut y = vec![0.0; p.output_len()];
        avg_pool_forward(&p, self.data(), &mut y);
        Ok(Tensor::from_op(y, &shape, self.device(), &[self], || {
            Op::AvgPool { x: self.clone(), p }
        }))
    }
}

pub(crate) fn max_backward(
    x: &Tensor,
    p: &Pool2dParams,
    argmax: &[u32],
    dy: &[f32],
) -> Vec<InputGrad> {
    let mut dx = vec![0.0; p.input_len()];
    max_pool_backward(p, dy, argmax, &mut dx);
    vec![(x.clone(), dx)]
}

pub(crate) fn avg_backward(x: &Tensor, p: &Pool2dParams, dy: &[f32]) -> Vec<InputGrad> {
    let mut dx = vec![0.0; p.input_len()];
    avg_pool_backward(p, dy, &mut dx);
    vec![(x.clone(), dx)]
}
