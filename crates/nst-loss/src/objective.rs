//! The total style-transfer objective (Gatys et al.):
//!
//! `J(x) = α·Σ_content J_c + β·Σ_l w_l·J_s^l + γ·TV(x)`
//!
//! with the terms of this crate ([`crate::content_loss`], [`crate::style_layer_loss`],
//! [`crate::tv_loss`]) taken on VGG-19 features of the image x (RGB, 0..255, `[1, 3, H, W]`).
//! The targets — content features and the (blended) Ĝ of the style images — are computed
//! once, when the objective is built; [`Objective::evaluate`] then gives J and ∂J/∂x from one
//! forward and one backward pass, on the device of the network (tile by tile, two forward
//! passes and one backward pass over the tiles, for [`Objective::new_tiled`]).
//!
//! Single-channel images (luminance-only transfer) are replicated to RGB inside the objective
//! by a fixed 1×1 convolution, so the gradient reaches the one channel.

use crate::style::weighted_sum;
use crate::tiled::{self, Tiling};
use crate::{blend_grams, content_loss, gram_hat, style_layer_loss, tv_loss};
use nst_tensor::{no_grad, Tensor, TensorError};
use nst_vgg::{Layer, Vgg19, VggError};
use thiserror::Error;

/// The coefficients of the objective.
#[derive(Clone, Debug, PartialEq)]
pub struct LossWeights {
    /// α, on the content term.
    pub content: f32,
    /// β, on the style term.
    pub style: f32,
    /// γ, on total variation (0 leaves the term out).
    pub tv: f32,
    /// w_l, one per style layer.
    pub style_layers: Vec<f32>,
}

/// nst's default objective: the layers of Gatys et al. (content at relu4_2, style at
/// relu1_1 … relu5_1, the middle layers weighted most) and the weights the `nst` command
/// uses. β = 3e-4 was chosen by looking at four photo × painting pairs at 256 px: with 1e-3
/// a face was lost, with 1e-2 an object disappeared, 1e-4 kept the photos but the style was
/// faint; 3e-4 kept them recognisable with clearly painted texture (see the repository's
/// README). TV smoothing at γ = 30 hardly changed the pictures, so it is off.
pub mod defaults {
    /// α, on the content term.
    pub const CONTENT_WEIGHT: f32 = 1.0;
    /// β, on the style term (for images in 0..255 and the default layers).
    pub const STYLE_WEIGHT: f32 = 3e-4;
    /// γ, on total variation (off).
    pub const TV_WEIGHT: f32 = 0.0;
    /// The content layer.
    pub const CONTENT_LAYERS: [&str; 1] = ["relu4_2"];
    /// The style layers...
    pub const STYLE_LAYERS: [&str; 5] = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"];
    /// ... and their weights w_l: the middle layers weigh most.
    pub const STYLE_LAYER_WEIGHTS: [f32; 5] = [0.1, 0.2, 0.4, 0.2, 0.1];
}

/// Which layers make up the objective, with its weights. `LossSpec::default()` is nst's
/// ([`defaults`]).
#[derive(Clone, Debug, PartialEq)]
pub struct LossSpec {
    /// Layers whose content losses add up (at least one).
    pub content_layers: Vec<Layer>,
    /// Style layers (at least one), weighted by `weights.style_layers`.
    pub style_layers: Vec<Layer>,
    /// α, β, γ and w_l.
    pub weights: LossWeights,
}

impl Default for LossSpec {
    fn default() -> Self {
        let layers = |names: &[&str]| -> Vec<Layer> {
            names
                .iter()
                .map(|n| n.parse().expect("the default layers are VGG-19's"))
                .collect()
        };
        Self {
            content_layers: layers(&defaults::CONTENT_LAYERS),
            style_layers: layers(&defaults::STYLE_LAYERS),
            weights: LossWeights {
                content: defaults::CONTENT_WEIGHT,
                style: defaults::STYLE_WEIGHT,
                tv: defaults::TV_WEIGHT,
                style_layers: defaults::STYLE_LAYER_WEIGHTS.to_vec(),
            },
        }
    }
}

/// Why an objective could not be built or evaluated.
#[derive(Debug, Error)]
pub enum ObjectiveError {
    /// The layers and weights do not fit together.
    #[error("loss specification: {0}")]
    Spec(String),
    /// An image of a shape the objective cannot take (not `[1, C, H, W]` with C = 1 or 3,
    /// channels that differ between the images, another size than the content image's).
    #[error("{0}")]
    Image(String),
    /// The network failed (bad layer, device).
    #[error(transparent)]
    Vgg(#[from] VggError),
    /// A tensor operation failed (shapes, device, memory).
    #[error(transparent)]
    Tensor(#[from] TensorError),
}

/// J at one point, its gradient, and the unweighted terms.
#[derive(Clone, Debug)]
pub struct ObjectiveValue {
    /// J(x).
    pub total: f64,
    /// ∂J/∂x, shaped like x, on x's device.
    pub grad: Tensor,
    /// Σ J_c (before α).
    pub content: f64,
    /// Σ w_l·J_s^l (before β).
    pub style: f64,
    /// TV(x) (before γ; 0 when γ = 0).
    pub tv: f64,
}

/// The objective at one image size: fixed targets plus the network.
pub struct Objective<'a> {
    vgg: &'a Vgg19,
    /// The content image's shape: the image evaluated must have it.
    image_dims: Vec<usize>,
    content_layers: Vec<Layer>,
    style_layers: Vec<Layer>,
    content_targets: Vec<Tensor>,
    style_targets: Vec<Tensor>,
    weights: LossWeights,
    /// For single-channel images: the `[3, 1, 1, 1]` all-ones kernel replicating Y to RGB.
    gray_to_rgb: Option<Tensor>,
    /// Whether style layers of the first convolution are recomputed in the backward pass
    /// instead of kept ([`Objective::recomputing_first_layer`]).
    recompute_first_layer: bool,
    /// The tiles, for an objective evaluated tile by tile ([`Objective::new_tiled`]); the
    /// content targets are then per tile, and `content_targets` is empty.
    tiling: Option<Tiling>,
}

/// The deepest layer [`Objective::recomputing_first_layer`] recomputes: relu1_1, made by
/// conv1_1 alone from the image.
fn first_layer() -> Layer {
    Layer::all().nth(1).expect("VGG-19 has relu1_1")
}

impl<'a> Objective<'a> {
    /// Computes the targets: the content image's features, and Ĝ of every style image blended
    /// with weights `blend` (one per style image). Images are `[1, C, H, W]` in 0..255 on the
    /// network's device, with C = 3 (RGB) or 1 (luminance, for luminance-only transfer); the
    /// style images may have other sizes than the content image.
    pub fn new(
        vgg: &'a Vgg19,
        content: &Tensor,
        styles: &[Tensor],
        blend: &[f32],
        spec: LossSpec,
    ) -> Result<Self, ObjectiveError> {
        Self::build(vgg, content, styles, blend, spec, None)
    }

    /// [`Objective::new`] for images too large to run through the network at once: the
    /// targets and every evaluation go tile by tile, and give the whole image's J and ∂J/∂x
    /// up to summation order (how: [`crate::tiled`]).
    ///
    /// Each tile is a core plus a margin covering its receptive field, 80 px a side to relu5_1
    /// ([`nst_vgg::tiles`]). Cores are whole blocks of the deepest layer's stride (16 px to
    /// relu5_1), shared out evenly: at most `core_side` pixels a side, which is rounded down
    /// to the stride and raised to one stride at least (so with 96 at 213×320, cores of 64 to
    /// 80 px).
    ///
    /// Memory is then one tile's pass (a `core_side + 160` square to relu5_1) plus the
    /// content targets. Time: each evaluation runs the network forward twice and backward
    /// once over the tiles, margins included, so a tile of core c costs about
    /// `1.4·(c + 160)²/c²` of its core's share of a whole evaluation. That is about 3× at
    /// 1024×681 with cores of 448 px, and about 9× at 213×320 with cores of 96, where the
    /// margins dominate: use cores of a few hundred pixels or more. Style images are cut into
    /// tiles of the same side. An image that fits in one core is evaluated whole. Relu1_1's
    /// recomputation ([`Objective::recomputing_first_layer`]) does not apply to tiles.
    pub fn new_tiled(
        vgg: &'a Vgg19,
        content: &Tensor,
        styles: &[Tensor],
        blend: &[f32],
        spec: LossSpec,
        core_side: usize,
    ) -> Result<Self, ObjectiveError> {
        Self::build(vgg, content, styles, blend, spec, Some(core_side))
    }

    fn build(
        vgg: &'a Vgg19,
        content: &Tensor,
        styles: &[Tensor],
        blend: &[f32],
        spec: LossSpec,
        core_side: Option<usize>,
    ) -> Result<Self, ObjectiveError> {
        let LossSpec {
            content_layers,
            style_layers,
            weights,
        } = spec;
        if content_layers.is_empty() || style_layers.is_empty() {
            return Err(ObjectiveError::Spec(
                "at least one content and one style layer are needed".into(),
            ));
        }
        if weights.style_layers.len() != style_layers.len() {
            return Err(ObjectiveError::Spec(format!(
                "{} style layers but {} style layer weights",
                style_layers.len(),
                weights.style_layers.len()
            )));
        }
        if styles.is_empty() {
            return Err(ObjectiveError::Spec(
                "at least one style image is needed".into(),
            ));
        }
        if styles.len() != blend.len() {
            return Err(ObjectiveError::Spec(format!(
                "{} style images but {} blend weights",
                styles.len(),
                blend.len()
            )));
        }
        check_weights(&weights, blend)?;
        let channels = check_image("the content image", content, None)?;
        for (i, style) in styles.iter().enumerate() {
            check_image(&format!("style image {}", i + 1), style, Some(channels))?;
        }
        // The image evaluated has the content's size, and goes through every layer.
        let deepest = content_layers.iter().chain(&style_layers).max();
        if let (Some(&deepest), &[_, _, height, width]) = (deepest, content.dims()) {
            nst_vgg::geometry::check_input_size(deepest, height, width)?;
        }
        let gray_to_rgb = match content.dims().get(1) {
            Some(1) => Some(Tensor::full(1.0, &[3, 1, 1, 1], vgg.device())?),
            _ => None,
        };
        let rgb = |image: &Tensor| to_rgb(gray_to_rgb.as_ref(), image);
        nst_tensor::memory_trace::set_phase(
            "targets: VGG-19 on the content and style images",
            content.dims(),
        );
        let tiling = match core_side {
            Some(side) => {
                let layers = (&content_layers[..], &style_layers[..]);
                Tiling::new(vgg, &rgb, content, layers, side)?
            }
            None => None,
        };
        let (content_targets, style_targets) = no_grad(|| -> Result<_, ObjectiveError> {
            let content_targets = match tiling {
                Some(_) => Vec::new(),
                None => vgg.features(&rgb(content)?, &content_layers)?,
            };
            let per_image = styles
                .iter()
                .map(|s| -> Result<Vec<Tensor>, ObjectiveError> {
                    if let Some(side) = core_side {
                        return tiled::gram_hats(vgg, &rgb, s, &style_layers, side);
                    }
                    let feats = vgg.features(&rgb(s)?, &style_layers)?;
                    Ok(feats.iter().map(gram_hat).collect::<Result<_, _>>()?)
                })
                .collect::<Result<Vec<_>, _>>()?;
            let blended = (0..style_layers.len())
                .map(|l| {
                    let grams: Vec<Tensor> = per_image.iter().map(|g| g[l].clone()).collect();
                    blend_grams(&grams, blend)
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok((content_targets, blended))
        })?;
        Ok(Self {
            vgg,
            image_dims: content.dims().to_vec(),
            content_layers,
            style_layers,
            content_targets,
            style_targets,
            weights,
            gray_to_rgb,
            recompute_first_layer: false,
            tiling,
        })
    }

    /// Recompute the style terms of relu1_1 (and conv1_1) from the image in the backward pass
    /// ([`Tensor::checkpoint`]) instead of keeping their features from the forward pass to the
    /// end of the backward pass. They are the largest features a loss reads — 64 channels at
    /// full resolution, 4 GiB at 4096² — and alive through the memory peak, at the start of
    /// the backward pass. The price per evaluation: conv1_1 (3 input channels, the cheapest
    /// layer) twice more forward and once more backward, relu1_1's Gram matrix twice more —
    /// about 8% of an iteration at 512². J and ∂J/∂x are the same up to rounding. No effect
    /// on a tiled objective ([`Objective::new_tiled`]), whose memory the tile side bounds.
    pub fn recomputing_first_layer(mut self, on: bool) -> Self {
        self.recompute_first_layer = on;
        self
    }

    fn is_recomputed(&self, layer: Layer) -> bool {
        self.recompute_first_layer && layer <= first_layer()
    }

    /// `J_s^l` for a recomputed layer: a checkpoint of the image (RGB) whose backward runs the
    /// network up to the layer again.
    fn recomputed_style_term(
        &self,
        rgb: &Tensor,
        layer: Layer,
        target: &Tensor,
    ) -> Result<Tensor, TensorError> {
        let (vgg, target) = (self.vgg.clone(), target.clone());
        Tensor::checkpoint(&[rgb], move |t| {
            let features = vgg.tensor_features(&t[0], &[layer])?;
            style_layer_loss(&features[0], &target)
        })
    }

    /// J and ∂J/∂x at image `x` (`[1, C, H, W]`, 0..255, the content image's size and
    /// channels).
    ///
    /// Records the gradient whatever the caller's mode, so it also works inside
    /// [`nst_tensor::no_grad`].
    pub fn evaluate(&self, x: &Tensor) -> Result<ObjectiveValue, ObjectiveError> {
        nst_tensor::with_grad(|| self.evaluate_recording(x))
    }

    fn evaluate_recording(&self, x: &Tensor) -> Result<ObjectiveValue, ObjectiveError> {
        if x.dims() != self.image_dims {
            return Err(ObjectiveError::Image(format!(
                "the image is {:?} but the objective was built for {:?} (its content image's shape: build one per size)",
                x.dims(),
                self.image_dims
            )));
        }
        if let Some(tiling) = &self.tiling {
            let rgb = |image: &Tensor| to_rgb(self.gray_to_rgb.as_ref(), image);
            let layers = (&self.content_layers[..], &self.style_layers[..]);
            return tiling.evaluate(
                self.vgg,
                &rgb,
                x,
                layers,
                &self.style_targets,
                &self.weights,
            );
        }
        nst_tensor::memory_trace::set_phase("forward: VGG-19 and the losses", x.dims());
        let x = x.to_variable();
        let rgb = to_rgb(self.gray_to_rgb.as_ref(), &x)?;
        // Recomputed terms first: the tape runs backward newest first, so their recomputation
        // comes last, after everything else the pass held has been freed.
        let mut style_terms: Vec<Option<Tensor>> = self
            .style_layers
            .iter()
            .zip(&self.style_targets)
            .map(|(&l, t)| {
                self.is_recomputed(l)
                    .then(|| self.recomputed_style_term(&rgb, l, t))
                    .transpose()
            })
            .collect::<Result<_, _>>()?;
        let kept_style_layers: Vec<Layer> = self
            .style_layers
            .iter()
            .copied()
            .filter(|&l| !self.is_recomputed(l))
            .collect();
        let layers = [&self.content_layers[..], &kept_style_layers[..]].concat();
        let feats = self.vgg.features(&rgb, &layers)?;
        let (content_feats, style_feats) = feats.split_at(self.content_targets.len());
        let mut jc = content_loss(&content_feats[0], &self.content_targets[0])?;
        for (f, t) in content_feats.iter().zip(&self.content_targets).skip(1) {
            jc = jc.add(&content_loss(f, t)?)?;
        }
        let mut kept = style_feats.iter();
        for (term, target) in style_terms.iter_mut().zip(&self.style_targets) {
            if term.is_none() {
                let f = kept
                    .next()
                    .expect("one kept feature per layer not recomputed");
                *term = Some(style_layer_loss(f, target)?);
            }
        }
        let style_terms: Vec<Tensor> = style_terms.into_iter().flatten().collect();
        let js = weighted_sum(&style_terms, &self.weights.style_layers)?;
        // Let backward free each activation once its gradient is through (see Tensor::backward).
        drop(feats);
        let w = &self.weights;
        let mut total = jc.scale(w.content)?.add(&js.scale(w.style)?)?;
        let tv = if w.tv > 0.0 {
            let tv = tv_loss(&x)?;
            total = total.add(&tv.scale(w.tv)?)?;
            Some(tv)
        } else {
            None
        };
        let mut grads = total.backward()?;
        let grad = grads.remove(&x).ok_or(TensorError::NoGraph)?;
        Ok(ObjectiveValue {
            total: total.to_scalar()? as f64,
            grad,
            content: jc.to_scalar()? as f64,
            style: js.to_scalar()? as f64,
            tv: tv.map_or(Ok(0.0), |t| t.to_scalar().map(f64::from))?,
        })
    }
}

/// The channels of `image` if it is `[1, C, H, W]` with C = 1 or 3 (and C = `channels` where
/// given: every image of an objective has the content image's), else why not.
fn check_image(
    what: &str,
    image: &Tensor,
    channels: Option<usize>,
) -> Result<usize, ObjectiveError> {
    let dims = image.dims();
    match (dims, channels) {
        (&[1, c @ (1 | 3), _, _], None) => Ok(c),
        (&[1, c, _, _], Some(want)) if c == want => Ok(c),
        (&[1, c @ (1 | 3), _, _], Some(want)) => Err(ObjectiveError::Image(format!(
            "{what} has {c} channels but the content image has {want}: give every image the \
             same (3 for RGB, 1 for luminance)"
        ))),
        _ => {
            let hint = match *dims {
                [_, _, _, 1 | 3] => " (channels last? the channels come second)",
                [n, ..] if n != 1 => " (one image at a time)",
                _ => "",
            };
            Err(ObjectiveError::Image(format!(
                "{what} must be [1, C, H, W] with C = 1 or 3, got {dims:?}{hint}"
            )))
        }
    }
}

/// Every weight finite and ≥ 0, and the blend's not all 0 (a NaN weight would make every
/// loss NaN, and blend weights summing to 0 would divide by 0).
fn check_weights(weights: &LossWeights, blend: &[f32]) -> Result<(), ObjectiveError> {
    let named = [
        ("content weight α", weights.content),
        ("style weight β", weights.style),
        ("TV weight γ", weights.tv),
    ];
    let layers = weights
        .style_layers
        .iter()
        .map(|&w| ("style layer weight", w));
    let blends = blend.iter().map(|&b| ("blend weight", b));
    for (what, w) in named.into_iter().chain(layers).chain(blends) {
        if !(w.is_finite() && w >= 0.0) {
            return Err(ObjectiveError::Spec(format!(
                "{what} {w} is not a finite number ≥ 0"
            )));
        }
    }
    if blend.iter().sum::<f32>() <= 0.0 {
        return Err(ObjectiveError::Spec("the blend weights are all 0".into()));
    }
    Ok(())
}

/// The network's RGB input: the image itself, or a one-channel image replicated by the
/// `[3, 1, 1, 1]` all-ones kernel (differentiably, so the gradient reaches the channel).
fn to_rgb(gray_to_rgb: Option<&Tensor>, image: &Tensor) -> Result<Tensor, TensorError> {
    match gray_to_rgb {
        Some(k) => image.conv2d(k, None, 1, 0),
        None => Ok(image.clone()),
    }
}
