//! Untracked vector arithmetic for optimizers. These never record on the tape: optimizer
//! updates are not part of the function being differentiated. Results stay on the device;
//! only the scalar reductions (`dot`, norms) come back to the host.

use crate::{Result, Tensor};
use nst_params::AdamParams;

impl Tensor {
    /// `α·self + β·other`, untracked.
    pub fn axpby(&self, alpha: f32, other: &Tensor, beta: f32) -> Result<Tensor> {
        self.same_shape(other, "axpby")?;
        let out = self.storage().axpby(alpha, other.storage(), beta)?;
        Ok(Tensor::from_storage(out, self.dims()))
    }

    /// Σ selfᵢ·otherᵢ in f64.
    pub fn dot(&self, other: &Tensor) -> Result<f64> {
        self.same_shape(other, "dot")?;
        self.storage().dot(other.storage())
    }

    /// Σ |selfᵢ| in f64 (the L1 norm).
    pub fn abs_sum(&self) -> Result<f64> {
        self.storage().abs_sum()
    }

    /// max |selfᵢ| (the L∞ norm; NaN if any element is NaN).
    pub fn abs_max(&self) -> Result<f32> {
        self.storage().abs_max()
    }

    /// True when every element is finite.
    pub fn all_finite(&self) -> Result<bool> {
        Ok(self.abs_max()?.is_finite())
    }

    /// One Adam step ([`AdamParams`] has the rule): returns `(x', m', v')` from parameters
    /// `self`, gradient `g` and the moment estimates `m`, `v`. The inputs are left unchanged.
    pub fn adam_step(
        &self,
        g: &Tensor,
        m: &Tensor,
        v: &Tensor,
        p: &AdamParams,
    ) -> Result<(Tensor, Tensor, Tensor)> {
        for t in [g, m, v] {
            self.same_shape(t, "adam_step")?;
        }
        let mut x2 = self.storage().try_clone()?;
        let mut m2 = m.storage().try_clone()?;
        let mut v2 = v.storage().try_clone()?;
        x2.adam_update(g.storage(), &mut m2, &mut v2, p)?;
        let shape = self.dims();
        Ok((
            Tensor::from_storage(x2, shape),
            Tensor::from_storage(m2, shape),
            Tensor::from_storage(v2, shape),
        ))
    }
}
