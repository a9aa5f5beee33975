//! # nst-optim
//!
//! Gradient-based minimisers that work on [`nst_tensor::Tensor`]s, so parameters stay on their
//! device: only scalars (dot products, norms) come back to the host.
//!
//! - [`Lbfgs`]: limited-memory BFGS with the semantics of `torch.optim.LBFGS` by default (lr 1,
//!   history 100, no line search, first step `min(1, 1/‖g‖₁)·lr` along −g), or with a
//!   strong-Wolfe line search ([`LineSearch::StrongWolfe`]).
//! - [`Adam`]: Kingma & Ba, with bias correction.
//!
//! Both are driven one iteration at a time through [`Optimizer::step`], which lets the caller
//! report progress, keep the best iterate and stop at any point; [`minimize`] is that loop
//! with the safeguards a long run needs (best iterate kept, stop on a non-finite loss, stop
//! on request):
//!
//! ```
//! use nst_optim::{Evaluation, Lbfgs, LbfgsConfig, Optimizer, Step};
//! use nst_tensor::{Device, Tensor, TensorError};
//! // Minimise f(x) = Σ (x − 3)².
//! let f = |x: &Tensor| -> Result<Evaluation, TensorError> {
//!     let d = x.axpby(1.0, &Tensor::full(3.0, x.dims(), x.device())?, -1.0)?;
//!     Ok(Evaluation::new(d.dot(&d)?, d.scale(2.0)?))
//! };
//! let mut opt = Optimizer::Lbfgs(Lbfgs::new(LbfgsConfig::default()));
//! let mut x = Tensor::zeros(&[4], &Device::Cpu)?;
//! for _ in 0..20 {
//!     let at_x = f(&x)?;
//!     match opt.step(&x, &at_x, &mut |x: &Tensor| f(x))? {
//!         Step::Moved { x: next, .. } => x = next,
//!         Step::Converged => break,
//!     }
//! }
//! assert!(x.to_vec()?.iter().all(|v| (v - 3.0).abs() < 1e-4));
//! # Ok::<(), TensorError>(())
//! ```

mod adam;
mod driver;
mod lbfgs;
mod line_search;

pub use adam::{Adam, AdamConfig};
pub use driver::{minimize, Minimized, OnIterate, StopReason};
pub use lbfgs::{Lbfgs, LbfgsConfig, LineSearch};

use nst_tensor::{Tensor, TensorError};

/// The objective and its gradient at a point.
#[derive(Clone, Debug)]
pub struct Evaluation {
    /// f(x).
    pub loss: f64,
    /// ∇f(x), same shape as x.
    pub grad: Tensor,
    /// Components of the loss for reporting (e.g. content, style, TV); optimizers carry them
    /// along unchanged.
    pub parts: Vec<f64>,
}

impl Evaluation {
    /// An evaluation with no separately reported components.
    pub fn new(loss: f64, grad: Tensor) -> Self {
        Self {
            loss,
            grad,
            parts: Vec::new(),
        }
    }
}

/// The result of one iteration.
#[derive(Debug)]
pub enum Step {
    /// The next iterate; `eval` is f and ∇f there when the step already computed them (a line
    /// search does), so the caller need not evaluate again.
    Moved {
        /// The new parameters.
        x: Tensor,
        /// The evaluation at `x`, if known.
        eval: Option<Evaluation>,
    },
    /// A convergence test passed (gradient or change below tolerance); x is final.
    Converged,
}

/// Either optimizer, behind one interface.
pub enum Optimizer {
    /// L-BFGS.
    Lbfgs(Lbfgs),
    /// Adam.
    Adam(Adam),
}

impl Optimizer {
    /// One iteration from `x`, where `at_x` is f and ∇f at `x`. `f` evaluates other points
    /// (used by the line search).
    pub fn step<E: From<TensorError>>(
        &mut self,
        x: &Tensor,
        at_x: &Evaluation,
        f: &mut dyn FnMut(&Tensor) -> Result<Evaluation, E>,
    ) -> Result<Step, E> {
        nst_tensor::memory_trace::set_phase("optimizer step", x.dims());
        // An evaluation inside the step (a line search) sets its own phases; the step's
        // own work after it is the optimizer's again.
        let mut f = |x: &Tensor| {
            let e = f(x);
            nst_tensor::memory_trace::set_phase("optimizer step", x.dims());
            e
        };
        match self {
            Optimizer::Lbfgs(o) => o.step(x, at_x, &mut f),
            Optimizer::Adam(o) => Ok(o.step(x, at_x)?),
        }
    }

    /// Forgets curvature history and moments (e.g. after the image is resized).
    pub fn reset(&mut self) {
        match self {
            Optimizer::Lbfgs(o) => o.reset(),
            Optimizer::Adam(o) => o.reset(),
        }
    }
}
