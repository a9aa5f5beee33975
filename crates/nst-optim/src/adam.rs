//! Adam (Kingma & Ba, 2015).

use crate::{Evaluation, Step};
use nst_tensor::{AdamParams, Result, Tensor};

/// Adam's hyper-parameters. The default is PyTorch's (`lr` 1e-3), for parameters of order 1;
/// [`AdamConfig::for_images`] is what `nst` uses on images in 0..255.
#[derive(Clone, Copy, Debug)]
pub struct AdamConfig {
    /// Step size (in the units of the parameters: 0..255 pixel values for images). Adam's
    /// steps are about `lr` per parameter whatever the gradient's scale, so 1e-3 moves an
    /// image by a thousandth of a grey level an iteration: nothing visible in hundreds.
    pub lr: f32,
    /// Decay of the first moment.
    pub beta1: f32,
    /// Decay of the second moment.
    pub beta2: f32,
    /// Added to √v̂ to avoid division by zero.
    pub eps: f32,
}

impl AdamConfig {
    /// Adam's step for images in 0..255 as `nst --optimizer adam` runs it (its `--lr`
    /// default): each pixel moves by up to about 4 grey levels an iteration.
    pub const IMAGE_LR: f32 = 4.0;

    /// The default with [`AdamConfig::IMAGE_LR`].
    pub fn for_images() -> Self {
        Self {
            lr: Self::IMAGE_LR,
            ..Self::default()
        }
    }
}

impl Default for AdamConfig {
    fn default() -> Self {
        Self {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        }
    }
}

/// Adam state: moment estimates and the step count.
pub struct Adam {
    cfg: AdamConfig,
    moments: Option<(Tensor, Tensor)>,
    t: u32,
}

impl Adam {
    /// A fresh optimizer.
    pub fn new(cfg: AdamConfig) -> Self {
        Self {
            cfg,
            moments: None,
            t: 0,
        }
    }

    /// One update `x ← x − lr · m̂/(√v̂ + ε)`.
    pub fn step(&mut self, x: &Tensor, at_x: &Evaluation) -> Result<Step> {
        let (m, v) = match self.moments.take() {
            Some(mv) => mv,
            None => (
                Tensor::zeros(x.dims(), x.device())?,
                Tensor::zeros(x.dims(), x.device())?,
            ),
        };
        self.t += 1;
        let c = self.cfg;
        let p = AdamParams {
            lr: c.lr,
            beta1: c.beta1,
            beta2: c.beta2,
            eps: c.eps,
            step: self.t,
        };
        let (x, m, v) = x.adam_step(&at_x.grad, &m, &v, &p)?;
        self.moments = Some((m, v));
        Ok(Step::Moved { x, eval: None })
    }

    /// Clears the moments.
    pub fn reset(&mut self) {
        self.moments = None;
        self.t = 0;
    }
}
