//! Matrix product of 2-D tensors.

use crate::op::{needed, InputGrad, Op};
use crate::{Result, Tensor, TensorError};
use nst_cpu::matmul;

impl Tensor {
    /// `self[m, k] · b[k, n]` → `[m, n]`.
    pub fn matmul(&self, b: &Tensor) -> Result<Tensor> {
        let (ad, bd) = (self.dims(), b.dims());
        if ad.len() != 2 || bd.len() != 2 || ad[1] != bd[0] {
            return Err(TensorError::ShapeMismatch {
                op: "matmul",
                lhs: ad.to_vec(),
                rhs: bd.to_vec(),
            });
        }
        self.same_device(b, "matmul")?;
        let (m, k, n) = (ad[0], ad[1], bd[1]);
        let mut c = vec![0.0; m * n];
        matmul(self.data(), b.data(), &mut c, m, k, n, false, false, false);
        Ok(Tensor::from_op(
            c,
            &[m, n],
            self.device(),
            &[self, b],
            || Op::Matmul {
                a: self.clone(),
                b: b.clone(),
            },
        ))
    }
}

/// `da = dc·bᵀ`, `db = aᵀ·dc`.
pub(crate) fn backward(a: &Tensor, b: &Tensor, dc: &[f32]) -> Vec<InputGrad> {
    let (m, k, n) = (a.dims()[0], a.dims()[1], b.dims()[1]);
    let da = a.requires_grad().then(|| {
        let mut da = vec![0.0; m * k];
        matmul(dc, b.data(), &mut da, m, n, k, false, true, false);
        da
    });
    let db = b.requires_grad().then(|| {
        let mut db = vec![0.0; k * n];
        matmul(a.data(), dc, &mut db, k, m, n, true, false, false);
        db
    });
    needed([(a.clone(), da), (b.clone(), db)])
}
