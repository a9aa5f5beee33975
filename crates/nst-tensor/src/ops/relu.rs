//! Rectified linear unit.

use crate::op::{InputGrad, Op};
use crate::storage::{ReluMask, Storage};
use crate::tensor::NodeRef;
use crate::{Result, Tensor};

impl Tensor {
    /// `max(self, 0)` elementwise.
    pub fn relu(&self) -> Result<Tensor> {
        let y = self.storage().relu()?;
        if !Tensor::will_record(&[self]) {
            return Ok(Tensor::from_storage(y, self.dims()));
        }
        let mask = y.relu_mask()?;
        Ok(Tensor::from_op(y, self.dims(), &[self], || Op::Relu {
            x: self.node(),
            mask,
        }))
    }
}

/// Uses the output's sign (`out > 0` ⇔ `x > 0`), saved as one bit per element, matching
/// PyTorch's gradient of 0 at x = 0; masks `dy` in place (the fused conv + ReLU does the
/// same).
pub(crate) fn backward(x: &NodeRef, mask: &ReluMask, mut dy: Storage) -> Result<Vec<InputGrad>> {
    dy.apply_relu_mask(mask)?;
    Ok(vec![(x.clone(), dy)])
}
