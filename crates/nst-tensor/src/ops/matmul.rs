//! Matrix product of 2-D tensors.

use crate::op::{if_needed, needed, InputGrad, Op};
use crate::storage::Storage;
use crate::{Result, Tensor, TensorError};

impl Tensor {
    /// `self[m, k] · b[k, n]` → `[m, n]`.
    pub fn matmul(&self, b: &Tensor) -> Result<Tensor> {
        crate::interrupt::check()?;
        let (ad, bd) = (self.dims(), b.dims());
        if ad.len() != 2 || bd.len() != 2 || ad[1] != bd[0] {
            return Err(TensorError::ShapeMismatch {
                op: "matmul",
                lhs: ad.to_vec(),
                rhs: bd.to_vec(),
            });
        }
        let (m, k, n) = (ad[0], ad[1], bd[1]);
        let c = self.storage().matmul(b.storage(), m, k, n, false, false)?;
        Ok(Tensor::from_op(c, &[m, n], &[self, b], || Op::Matmul {
            a: self.clone(),
            b: b.clone(),
        }))
    }
}

/// `da = dc·bᵀ`, `db = aᵀ·dc`.
pub(crate) fn backward(a: &Tensor, b: &Tensor, dc: &Storage) -> Result<Vec<InputGrad>> {
    let (m, k, n) = (a.dims()[0], a.dims()[1], b.dims()[1]);
    let da = if_needed(&a.node, || dc.matmul(b.storage(), m, n, k, false, true))?;
    let db = if_needed(&b.node, || a.storage().matmul(dc, k, m, n, true, false))?;
    Ok(needed([(a.node(), da), (b.node(), db)]))
}
