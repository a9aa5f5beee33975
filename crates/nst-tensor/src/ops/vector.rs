//! Untracked vector arithmetic for optimizers. These never record on the tape: optimizer
//! updates are not part of the function being differentiated.

use crate::{Result, Tensor};
use nst_cpu::elementwise as k;

impl Tensor {
    /// `α·self + β·other`, untracked.
    pub fn axpby(&self, alpha: f32, other: &Tensor, beta: f32) -> Result<Tensor> {
        self.same_shape(other, "axpby")?;
        let mut out = vec![0.0; self.elem_count()];
        k::axpby(alpha, self.data(), beta, other.data(), &mut out);
        Tensor::from_vec(out, self.dims(), self.device())
    }

    /// Σ selfᵢ·otherᵢ in f64.
    pub fn dot(&self, other: &Tensor) -> Result<f64> {
        self.same_shape(other, "dot")?;
        Ok(k::dot(self.data(), other.data()))
    }

    /// Σ |selfᵢ| in f64 (the L1 norm).
    pub fn abs_sum(&self) -> f64 {
        k::abs_sum(self.data())
    }

    /// max |selfᵢ| (the L∞ norm; NaN if any element is NaN).
    pub fn abs_max(&self) -> f32 {
        k::abs_max(self.data())
    }

    /// True when every element is finite.
    pub fn all_finite(&self) -> bool {
        self.abs_max().is_finite()
    }

    /// One Adam step: returns `(x', m', v')` from parameters `self`, gradient `g` and the
    /// moment estimates `m`, `v` (see [`nst_cpu::elementwise::adam_update`]).
    #[allow(clippy::too_many_arguments)]
    pub fn adam_step(
        &self,
        g: &Tensor,
        m: &Tensor,
        v: &Tensor,
        lr: f32,
        beta1: f32,
        beta2: f32,
        eps: f32,
        step: u32,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        for t in [g, m, v] {
            self.same_shape(t, "adam_step")?;
        }
        let (mut x, mut m2, mut v2) = (self.to_vec(), m.to_vec(), v.to_vec());
        k::adam_update(
            &mut x,
            g.data(),
            &mut m2,
            &mut v2,
            lr,
            beta1,
            beta2,
            eps,
            step,
        );
        let dev = self.device();
        Ok((
            Tensor::from_vec(x, self.dims(), dev)?,
            Tensor::from_vec(m2, self.dims(), dev)?,
            Tensor::from_vec(v2, self.dims(), dev)?,
        ))
    }
}
