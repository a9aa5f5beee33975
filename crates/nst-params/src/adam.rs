//! Adam's update rule (Kingma & Ba, 2015) as every backend implements it.

/// One Adam update at step `step` (1-based):
/// `m ← β₁m + (1−β₁)g`, `v ← β₂v + (1−β₂)g²`, `x ← x − lr · m̂ / (√v̂ + ε)` with the bias
/// corrections `m̂ = m/(1−β₁ᵗ)`, `v̂ = v/(1−β₂ᵗ)`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamParams {
    /// Step size.
    pub lr: f32,
    /// Decay of the first moment.
    pub beta1: f32,
    /// Decay of the second moment.
    pub beta2: f32,
    /// Added to √v̂ so the step stays finite.
    pub eps: f32,
    /// 1 for the first update, counting up (the bias corrections depend on it).
    pub step: u32,
}

impl AdamParams {
    /// `1 − β₁ᵗ`, the first moment's bias correction.
    pub fn correction1(&self) -> f32 {
        1.0 - self.beta1.powi(self.step as i32)
    }
    /// `1 − β₂ᵗ`, the second moment's bias correction.
    pub fn correction2(&self) -> f32 {
        1.0 - self.beta2.powi(self.step as i32)
    }
}
