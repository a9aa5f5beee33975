//! Rectified linear unit.

use crate::op::{InputGrad, Op};
use crate::{Result, Tensor};
use nst_cpu::relu::{relu_forward, relu_mask_in_place};

impl Tensor {
    /// `max(self, 0)` elementwise.
    pub fn relu(&self) -> Result<Tensor> {
        let mut y = vec![0.0; self.elem_count()];
        relu_forward(self.data(), &mut y);
        Ok(Tensor::from_op(
            y,
            self.dims(),
            self.device(),
            &[self],
            || Op::Relu { x: self.clone() },
        ))
    }
}

/// Uses the output (`out > 0` ⇔ `x > 0`), matching PyTorch's gradient of 0 at x = 0; masks
/// `dy` in place (the fused conv + ReLU does the same).
pub(crate) fn backward(x: &Tensor, out: &Tensor, mut dy: Vec<f32>) -> Vec<InputGrad> {
    relu_mask_in_place(out.data(), &mut dy);
    vec![(x.clone(), dy)]
}
