//! Limited-memory BFGS, following torch.optim.LBFGS step for step so that results can be
//! compared with PyTorch implementations.
//!
//! Iteration k at x_k with gradient g_k:
//! 1. k = 0: d = −g. Otherwise form s = t_{k−1}·d_{k−1}, y = g_k − g_{k−1}; keep the pair if
//!    sᵀy > 1e-10 (dropping the oldest beyond `history`) and set H₀ = sᵀy / yᵀy; then
//!    d = −H·g by the two-loop recursion.
//! 2. Step length t = min(1, 1/‖g‖₁)·lr at k = 0, else lr; or a strong-Wolfe line search.
//! 3. x_{k+1} = x_k + t·d.
//!
//! Stops (returns [`Step::Converged`]) when max|g| ≤ `tolerance_grad`, when gᵀd >
//! −`tolerance_change`, or when the last step or loss change was below `tolerance_change` —
//! except right after the first step: that one is deliberately short (1/‖g‖₁), and on a large
//! image its loss change falls below the resolution of an f32 loss (at 1024² the loss did not
//! change at all and runs stopped after one iteration). torch.optim.LBFGS only ends the
//! current `step()` call on these tests, so a caller looping over `step()` never stops there.

use crate::line_search::strong_wolfe;
use crate::{Evaluation, Step};
use nst_tensor::{Tensor, TensorError};
use std::collections::VecDeque;

/// How the step length is chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LineSearch {
    /// A fixed step `lr` (torch's `line_search_fn=None`): one evaluation per iteration.
    #[default]
    None,
    /// A strong-Wolfe line search (c₁ = 1e-4, c₂ = 0.9): more evaluations, guaranteed descent.
    StrongWolfe,
}

/// L-BFGS settings; the defaults are torch.optim.LBFGS's.
#[derive(Clone, Copy, Debug)]
pub struct LbfgsConfig {
    /// Step length multiplier.
    pub lr: f32,
    /// Number of (s, y) pairs kept.
    pub history: usize,
    /// Step length rule.
    pub line_search: LineSearch,
    /// Converged when max|g| falls to this.
    pub tolerance_grad: f64,
    /// Converged when the step, loss change or directional derivative falls below this.
    pub tolerance_change: f64,
}

impl Default for LbfgsConfig {
    fn default() -> Self {
        Self {
            lr: 1.0,
            history: 100,
            line_search: LineSearch::None,
            tolerance_grad: 1e-7,
            tolerance_change: 1e-9,
        }
    }
}

/// What the previous iteration left for the next one.
struct Previous {
    grad: Tensor,
    /// The step actually taken, t·d.
    step: Tensor,
    loss: f64,
    step_max: f64,
    /// Whether this was the short first step (no lack-of-progress test after it).
    first: bool,
}

/// L-BFGS state.
pub struct Lbfgs {
    cfg: LbfgsConfig,
    /// (s, y, ρ = 1/sᵀy), oldest first.
    pairs: VecDeque<(Tensor, Tensor, f64)>,
    h_diag: f64,
    prev: Option<Previous>,
}

impl Lbfgs {
    /// A fresh optimizer.
    pub fn new(cfg: LbfgsConfig) -> Self {
        Self {
            cfg,
            pairs: VecDeque::new(),
            h_diag: 1.0,
            prev: None,
        }
    }

    /// Forgets the curvature pairs; the next step is a scaled gradient step again.
    pub fn reset(&mut self) {
        self.pairs.clear();
        self.h_diag = 1.0;
        self.prev = None;
    }

    /// The search direction −H·g by the two-loop recursion. Its scalars (αᵢ = ρᵢ·sᵢᵀq,
    /// βᵢ = ρᵢ·yᵢᵀr) stay on the tensors' device ([`nst_tensor::Scalar`]): on a GPU the
    /// recursion never waits for the host (two round trips per history pair otherwise, up to
    /// 200 per iteration). Each update of q or r also takes the next pair's scalar
    /// ([`Tensor::add_scaled_dot`]), so on a GPU a pair costs two kernels over the vectors
    /// and four launches instead of four and nine; on the CPU the arithmetic is the same f64
    /// as ever.
    fn direction(&self, g: &Tensor) -> Result<Tensor, TensorError> {
        let pairs = &self.pairs; // oldest first
        let n = pairs.len();
        let mut q = g.scale(-1.0)?;
        if n == 0 {
            return q.scale(self.h_diag as f32);
        }
        // Newest pair first: αᵢ = ρᵢ·sᵢᵀq, then q −= αᵢ·yᵢ.
        let mut alphas = Vec::with_capacity(n); // newest first
        let (s, _, rho) = &pairs[n - 1];
        let mut alpha = s.dot_scalar_scaled(&q, *rho)?;
        for i in (0..n).rev() {
            let next = i.checked_sub(1).map(|j| (&pairs[j].0, pairs[j].2));
            let (q2, next_alpha) = q.add_scaled_dot(&pairs[i].1, &alpha, None, -1.0, next)?;
            q = q2;
            alphas.push(alpha);
            match next_alpha {
                Some(a) => alpha = a,
                None => break, // i = 0: the oldest pair was the last
            }
        }
        let mut r = q.scale(self.h_diag as f32)?;
        // Oldest pair first: βᵢ = ρᵢ·yᵢᵀr, then r += (αᵢ − βᵢ)·sᵢ.
        let (_, y, rho) = &pairs[0];
        let mut beta = y.dot_scalar_scaled(&r, *rho)?;
        for (i, alpha) in alphas.iter().rev().enumerate() {
            let next = pairs.get(i + 1).map(|(_, y, rho)| (y, *rho));
            let (r2, next_beta) = r.add_scaled_dot(&pairs[i].0, alpha, Some(&beta), 1.0, next)?;
            r = r2;
            if let Some(b) = next_beta {
                beta = b;
            }
        }
        Ok(r)
    }

    /// One iteration; see the module documentation.
    pub fn step<E: From<TensorError>>(
        &mut self,
        x: &Tensor,
        at_x: &Evaluation,
        f: &mut dyn FnMut(&Tensor) -> Result<Evaluation, E>,
    ) -> Result<Step, E> {
        let g = &at_x.grad;
        if (g.abs_max()? as f64) <= self.cfg.tolerance_grad {
            return Ok(Step::Converged);
        }
        let first = match &self.prev {
            None => true,
            Some(p) => {
                if !p.first
                    && (p.step_max <= self.cfg.tolerance_change
                        || (at_x.loss - p.loss).abs() < self.cfg.tolerance_change)
                {
                    return Ok(Step::Converged);
                }
                let y = g.axpby(1.0, &p.grad, -1.0)?;
                let ys = y.dot(&p.step)?;
                if ys > 1e-10 {
                    if self.pairs.len() == self.cfg.history {
                        self.pairs.pop_front();
                    }
                    self.h_diag = ys / y.dot(&y)?;
                    self.pairs.push_back((p.step.clone(), y, 1.0 / ys));
                }
                false
            }
        };
        let d = if first {
            g.scale(-1.0)?
        } else {
            self.direction(g)?
        };
        let lr = self.cfg.lr as f64;
        let t0 = if first {
            (1.0 / g.abs_sum()?).min(1.0) * lr
        } else {
            lr
        };
        let gtd = g.dot(&d)?;
        if gtd > -self.cfg.tolerance_change {
            return Ok(Step::Converged);
        }
        let (t, eval) = match self.cfg.line_search {
            LineSearch::None => (t0, None),
            LineSearch::StrongWolfe => {
                let (t, e) = strong_wolfe(x, at_x.loss, gtd, &d, t0, f)?;
                (t, Some(e))
            }
        };
        let step = d.scale(t as f32)?;
        let x_next = x.axpby(1.0, &step, 1.0)?;
        self.prev = Some(Previous {
            grad: g.clone(),
            step_max: step.abs_max()? as f64,
            step,
            loss: at_x.loss,
            first,
        });
        Ok(Step::Moved { x: x_next, eval })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nst_tensor::Device;

    /// The two-loop recursion as it was before its steps were fused: the oracle that the
    /// fused one must match bit for bit.
    fn direction_unfused(l: &Lbfgs, g: &Tensor) -> Tensor {
        let mut q = g.scale(-1.0).unwrap();
        let mut alphas = vec![];
        for (s, y, rho) in l.pairs.iter().rev() {
            let alpha = s.dot_scalar(&q).unwrap().scale(*rho).unwrap();
            q = q.add_scaled(y, &alpha, -1.0).unwrap();
            alphas.push(alpha);
        }
        let mut r = q.scale(l.h_diag as f32).unwrap();
        for ((s, y, rho), alpha) in l.pairs.iter().zip(alphas.iter().rev()) {
            let beta = y.dot_scalar(&r).unwrap().scale(*rho).unwrap();
            r = r.add_scaled(s, &alpha.sub(&beta).unwrap(), 1.0).unwrap();
        }
        r
    }

    fn vector(seed: u32, dev: &Device) -> Tensor {
        let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(7);
        let data = (0..1000)
            .map(|_| {
                state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
                (state >> 8) as f32 / (1u32 << 24) as f32 - 0.5
            })
            .collect();
        Tensor::from_vec(data, &[1000], dev).unwrap()
    }

    #[test]
    fn fused_two_loop_recursion_matches_the_unfused_one_bit_for_bit() {
        let mut devices = vec![Device::Cpu];
        devices.extend(nst_tensor::test_utils::emulator_or_skip(
            "fused_two_loop_recursion_matches_the_unfused_one_bit_for_bit (emulator)",
        ));
        for dev in &devices {
            let g = vector(1, dev);
            for n in [0, 1, 2, 5] {
                let mut l = Lbfgs::new(LbfgsConfig::default());
                l.h_diag = 0.8;
                for i in 0..n {
                    let (s, y) = (vector(10 + i, dev), vector(20 + i, dev));
                    let rho = 1.0 / y.dot(&s).unwrap();
                    l.pairs.push_back((s, y, rho));
                }
                let fused = l.direction(&g).unwrap().to_vec().unwrap();
                let want = direction_unfused(&l, &g).to_vec().unwrap();
                assert_eq!(fused, want, "{n} pairs on {dev:?}");
            }
        }
    }
}
