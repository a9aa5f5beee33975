//! Untracked vector arithmetic for optimizers. These never record on the tape: optimizer
//! updates are not part of the function being differentiated. Results stay on the device;
//! only the scalar reductions (`dot`, norms) come back to the host.

use crate::storage::ScalarStorage;
use crate::{Result, Tensor};

/// One f64 on a tensor's device, from [`Tensor::dot_scalar`]: what an optimizer computes
/// with between its steps without waiting for the device (L-BFGS's two-loop recursion runs
/// with no host round trip per history pair). On the CPU it is a plain f64.
pub struct Scalar(pub(crate) ScalarStorage);

impl Scalar {
    /// `r·self`.
    pub fn scale(&self, r: f64) -> Result<Scalar> {
        Ok(Scalar(self.0.scale(r)?))
    }

    /// `self − other` (same device).
    pub fn sub(&self, other: &Scalar) -> Result<Scalar> {
        Ok(Scalar(self.0.sub(&other.0)?))
    }

    /// The value on the host (on a GPU this waits for the device).
    pub fn value(&self) -> Result<f64> {
        self.0.value()
    }
}
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

    /// [`Tensor::dot`], left on the device as a [`Scalar`].
    pub fn dot_scalar(&self, other: &Tensor) -> Result<Scalar> {
        self.same_shape(other, "dot")?;
        Ok(Scalar(self.storage().dot_scalar(other.storage())?))
    }

    /// `self + f32(factor·coef)·y`, untracked: [`Tensor::axpby`] with α = 1 and a β that
    /// stays on the device (rounded to f32 as `axpby(1.0, y, (factor·coef) as f32)` rounds
    /// it, so on the CPU the two agree bit for bit).
    pub fn add_scaled(&self, y: &Tensor, coef: &Scalar, factor: f64) -> Result<Tensor> {
        self.same_shape(y, "add_scaled")?;
        let out = self.storage().add_scaled(y.storage(), &coef.0, factor)?;
        Ok(Tensor::from_storage(out, self.dims()))
    }

    /// `r·(self·other)` left on the device: [`Tensor::dot_scalar`] then [`Scalar::scale`], the
    /// same bits (one GPU launch fewer).
    pub fn dot_scalar_scaled(&self, other: &Tensor, r: f64) -> Result<Scalar> {
        self.same_shape(other, "dot")?;
        Ok(Scalar(
            self.storage().dot_scalar_scaled(other.storage(), r)?,
        ))
    }

    /// One step of L-BFGS's two-loop recursion, untracked: `x' = self + f32(factor·(coef −
    /// minus))·y` (`minus` absent: 0) and, with `dot_with = Some((v, r))`, also `r·(v·x')` as
    /// a [`Scalar`] (the next history pair's αᵢ or βᵢ). The same bits as [`Scalar::sub`],
    /// [`Tensor::add_scaled`] and [`Tensor::dot_scalar_scaled`] in turn; on a GPU one pass
    /// over the vectors and two launches instead of up to four, which is what the recursion
    /// costs there (100 history pairs are 200 such steps an iteration).
    pub fn add_scaled_dot(
        &self,
        y: &Tensor,
        coef: &Scalar,
        minus: Option<&Scalar>,
        factor: f64,
        dot_with: Option<(&Tensor, f64)>,
    ) -> Result<(Tensor, Option<Scalar>)> {
        self.same_shape(y, "add_scaled_dot")?;
        if let Some((v, _)) = dot_with {
            self.same_shape(v, "add_scaled_dot")?;
        }
        let (out, dot) = self.storage().add_scaled_dot(
            y.storage(),
            (&coef.0, minus.map(|m| &m.0)),
            factor,
            dot_with.map(|(v, r)| (v.storage(), r)),
        )?;
        Ok((Tensor::from_storage(out, self.dims()), dot.map(Scalar)))
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
