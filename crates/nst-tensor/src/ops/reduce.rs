//! Reductions to a scalar.

use crate::op::{InputGrad, Op};
use crate::{Result, Tensor};
use nst_cpu::elementwise as k;

impl Tensor {
    /// Σ of all elements (accumulated in f64) → shape `[]`.
    pub fn sum(&self) -> Result<Tensor> {
        let s = k::sum(self.data()) as f32;
        Ok(Tensor::from_op(
            vec![s],
            &[],
            self.device(),
            &[self],
            || Op::Sum { x: self.clone() },
        ))
    }

    /// Mean of all elements → shape `[]`.
    pub fn mean(&self) -> Result<Tensor> {
        self.sum()?.scale(1.0 / self.elem_count().max(1) as f32)
    }
}

pub(crate) fn sum_backward(x: &Tensor, g: &[f32]) -> Vec<InputGrad> {
    vec![(x.clone(), vec![g[0]; x.elem_count()])]
}
