//! Rectified linear unit.

use crate::op::{InputGrad, Op};
use crate::storage::Storage;
use crate::{Result, Tensor};

impl Tensor {
    /// `max(self, 0)` elementwise.
    pub fn relu(&self) -> Result<Tensor> {
        let y = self.storage().relu()?;
        Ok(Tensor::from_op(y, self.dims(), &[self], || Op::Relu {
            x: self.clone(),
        }))
    }
}

/// Uses the output (`out > 0` ⇔ `x > 0`), matching PyTorch's gradient of 0 at x = 0; masks
/// `dy` in place (the fused conv + ReLU does the same).
pub(crate) fn backward(x: &Tensor, out: &Tensor, mut dy: Storage) -> Result<Vec<InputGrad>> {
    dy.relu_mask_in_place(out.storage())?;
    Ok(vec![(x.clone(), dy)])
}
