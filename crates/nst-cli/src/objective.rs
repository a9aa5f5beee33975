//! The function the image is optimised against:
//! `J = α·Σ_content J_c + β·Σ_l w_l·J_s^l + γ·TV` (formulas in `nst_loss`), with its gradient
//! with respect to the image from one backward pass.

use crate::image_io::Planes;
use anyhow::Result;
use nst_loss::{blend_grams, content_loss, gram_hat, style_loss, tv_loss};
use nst_optim::Evaluation;
use nst_tensor::{no_grad, Device, Tensor, TensorError};
use nst_vgg::{Layer, Vgg19, VggError};

/// Indices into [`Evaluation::parts`].
pub const PART_CONTENT: usize = 0;
/// Σ w_l·J_s^l (before β).
pub const PART_STYLE: usize = 1;
/// TV (before γ).
pub const PART_TV: usize = 2;

/// Loss weights and layers.
#[derive(Clone, Debug)]
pub struct Weights {
    /// α.
    pub content: f32,
    /// β.
    pub style: f32,
    /// γ.
    pub tv: f32,
    /// w_l per style layer.
    pub style_layers: Vec<f32>,
}

/// Which layers and weights make up the loss.
#[derive(Clone, Debug)]
pub struct LossSpec<'a> {
    /// Layers whose content losses add up.
    pub content_layers: &'a [Layer],
    /// Style layers, one weight each in `weights.style_layers`.
    pub style_layers: &'a [Layer],
    /// α, β, γ and w_l.
    pub weights: Weights,
    /// Images are single-channel luminance (replicated to RGB for VGG).
    pub luminance_only: bool,
}

/// The objective at one scale: fixed targets plus the network.
pub struct Objective<'a> {
    vgg: &'a Vgg19,
    /// Union of content and style layers, in the order `features` returns them.
    layers: Vec<Layer>,
    content_targets: Vec<Tensor>,
    style_targets: Vec<Tensor>,
    weights: Weights,
    /// For luminance-only transfer: the [3, 1, 1, 1] all-ones kernel replicating Y to RGB.
    gray_to_rgb: Option<Tensor>,
    n_content: usize,
}

/// `[1, C, H, W]` tensor from planes.
pub fn to_tensor(p: &Planes, device: &Device) -> Result<Tensor, TensorError> {
    Tensor::from_vec(p.data.clone(), &[1, p.channels, p.height, p.width], device)
}

fn vgg_err(e: VggError) -> anyhow::Error {
    anyhow::anyhow!("{e}")
}

impl<'a> Objective<'a> {
    /// Computes the fixed targets: content features, and Ĝ of every style image blended by
    /// `blend`. Images are single-channel when `spec.luminance_only`.
    pub fn new(
        vgg: &'a Vgg19,
        content: &Planes,
        styles: &[Planes],
        blend: &[f32],
        spec: LossSpec<'_>,
        device: &Device,
    ) -> Result<Self> {
        let LossSpec {
            content_layers,
            style_layers,
            weights,
            luminance_only,
        } = spec;
        let gray_to_rgb = luminance_only.then(|| Tensor::full(1.0, &[3, 1, 1, 1], device));
        let rgb = |t: Tensor| -> Result<Tensor> {
            Ok(match &gray_to_rgb {
                Some(k) => t.conv2d(k, None, 1, 0)?,
                None => t,
            })
        };
        let (content_targets, style_targets) = no_grad(|| -> Result<_> {
            let content_targets = vgg
                .features(&rgb(to_tensor(content, device)?)?, content_layers)
                .map_err(vgg_err)?;
            let mut per_image: Vec<Vec<Tensor>> = Vec::new();
            for s in styles {
                let f = vgg
                    .features(&rgb(to_tensor(s, device)?)?, style_layers)
                    .map_err(vgg_err)?;
                per_image.push(f.iter().map(gram_hat).collect::<Result<_, _>>()?);
            }
            let blended = (0..style_layers.len())
                .map(|l| {
                    blend_grams(
                        &per_image.iter().map(|g| g[l].clone()).collect::<Vec<_>>(),
                        blend,
                    )
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((content_targets, blended))
        })?;
        let mut layers = content_layers.to_vec();
        layers.extend_from_slice(style_layers);
        Ok(Self {
            vgg,
            layers,
            content_targets,
            style_targets,
            weights,
            gray_to_rgb,
            n_content: content_layers.len(),
        })
    }

    /// f and ∇f at image `x` (`[1, C, H, W]`, 0..255), with the unweighted terms in `parts`.
    pub fn evaluate(&self, x: &Tensor) -> Result<Evaluation> {
        let x = x.to_variable();
        let rgb = match &self.gray_to_rgb {
            Some(k) => x.conv2d(k, None, 1, 0)?,
            None => x.clone(),
        };
        let feats = self.vgg.features(&rgb, &self.layers).map_err(vgg_err)?;
        let (content_feats, style_feats) = feats.split_at(self.n_content);
        let mut jc = content_loss(&content_feats[0], &self.content_targets[0])?;
        for (f, t) in content_feats.iter().zip(&self.content_targets).skip(1) {
            jc = jc.add(&content_loss(f, t)?)?;
        }
        let js = style_loss(style_feats, &self.style_targets, &self.weights.style_layers)?;
        // Let backward free each activation once its gradient is through (see Tensor::backward).
        drop(feats);
        let w = &self.weights;
        let mut total = jc.scale(w.content)?.add(&js.scale(w.style)?)?;
        let tv = if w.tv > 0.0 {
            let tv = tv_loss(&x)?;
            total = total.add(&tv.scale(w.tv)?)?;
            tv.to_scalar()? as f64
        } else {
            0.0
        };
        let mut grads = total.backward()?;
        let grad = grads
            .remove(&x)
            .expect("the image is a variable of the loss");
        Ok(Evaluation {
            loss: total.to_scalar()? as f64,
            grad,
            parts: vec![jc.to_scalar()? as f64, js.to_scalar()? as f64, tv],
        })
    }
}
