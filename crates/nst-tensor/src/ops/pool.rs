//! 2×2 max and average pooling, stride 2, floor mode.

use crate::op::{InputGrad, Op};
use crate::storage::{PoolIndices, Storage};
use crate::tensor::NodeRef;
use crate::{Result, Tensor, TensorError};
use nst_params::Pool2dParams;

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
    /// 2×2 max pooling with stride 2 on `[N, C, H, W]` → `[N, C, H/2, W/2]` (floor). Ties go
    /// to the first element of the window in row-major order, as in PyTorch.
    pub fn max_pool2d(&self) -> Result<Tensor> {
        let (p, shape) = params(self, "max_pool2d")?;
        let (y, indices) = self.storage().max_pool2d(&p)?;
        Ok(Tensor::from_op(y, &shape, &[self], || Op::MaxPool {
            x: self.node(),
            p,
            indices,
        }))
    }

    /// 2×2 average pooling with stride 2 on `[N, C, H, W]` → `[N, C, H/2, W/2]` (floor).
    pub fn avg_pool2d(&self) -> Result<Tensor> {
        let (p, shape) = params(self, "avg_pool2d")?;
        let y = self.storage().avg_pool2d(&p)?;
        Ok(Tensor::from_op(y, &shape, &[self], || Op::AvgPool {
            x: self.node(),
            p,
        }))
    }
}

pub(crate) fn max_backward(
    x: &NodeRef,
    p: &Pool2dParams,
    indices: &PoolIndices,
    dy: &Storage,
) -> Result<Vec<InputGrad>> {
    Ok(vec![(x.clone(), dy.max_pool2d_backward(indices, p)?)])
}

pub(crate) fn avg_backward(x: &NodeRef, p: &Pool2dParams, dy: &Storage) -> Result<Vec<InputGrad>> {
    Ok(vec![(x.clone(), dy.avg_pool2d_backward(p)?)])
}
