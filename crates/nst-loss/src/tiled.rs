//! The objective evaluated tile by tile ([`crate::Objective::new_tiled`]): the same J and
//! ∂J/∂x as the whole image gives, up to summation order, with the memory of one tile's
//! forward and backward pass instead of the whole image's.
//!
//! The tiles come from [`nst_vgg::tiles`]: each tile's core features are exactly the whole
//! image's, and the cores partition every layer's positions. Every term is a sum over
//! positions, so it splits over the cores:
//!
//! - content: `J_c = 1/(4·C·H·W) · Σ_cores Σ (F_C − F_G)²`, with the whole layer's C, H, W;
//! - style: `Ĝ_G = Σ_cores F_core·F_coreᵀ / (H·W)`, again with the whole layer's H·W. J_s^l
//!   is not a sum over positions but a function of Ĝ_G, so a first pass (no gradient) adds
//!   up Ĝ_G over the tiles. Then, by the chain rule through Ĝ_G, the style gradient is that of
//!   `Σ_cores ⟨K_l, F_core·F_coreᵀ / (H·W)⟩` with the constant
//!   `K_l = ∂(β·w_l·J_s^l)/∂Ĝ_G = β·w_l · (Ĝ_G − Ĝ_S) / (2·C²)`;
//! - TV: each core's pairs of neighbours, the right one and the one below, which a tile's
//!   margin holds; normalised by the whole image's C·H·W.
//!
//! A second pass runs each tile forward and backward through `α·J_c(core) + Σ_l ⟨K_l,
//! Ĝ_core,l⟩ + γ·TV(core)` and adds its image gradient into the whole image's at the tile's
//! place. An evaluation thus costs two forward passes and one backward pass over the tiles,
//! whose margins (80 px a side to relu5_1) are computed twice where tiles meet.

use crate::content::content_loss_over;
use crate::objective::{ObjectiveError, ObjectiveValue};
use crate::tv::{squared_differences, Neighbour};
use crate::LossWeights;
use nst_tensor::{no_grad, Tensor, TensorError};
use nst_vgg::tiles::{self, Rect, Tile};
use nst_vgg::{geometry, Layer, Vgg19};

/// How an image becomes the network's RGB input (one channel is replicated).
pub(crate) type ToRgb<'a> = &'a dyn Fn(&Tensor) -> Result<Tensor, TensorError>;

/// What a tiled objective keeps besides the style targets: the tiles and, per tile, the
/// content image's features over its core.
pub(crate) struct Tiling {
    tiles: Vec<Tile>,
    /// `content_targets[tile][content layer]`.
    content_targets: Vec<Vec<Tensor>>,
}

/// The pixels of `image` (`[1, C, H, W]`) in `r`.
fn pixels_in(image: &Tensor, r: Rect) -> Result<Tensor, TensorError> {
    image.crop(r.top, r.left, r.height, r.width)
}

/// The core's features out of the tile's features `f` at `layer`.
fn core_of(f: &Tensor, tile: &Tile, layer: Layer) -> Result<Tensor, TensorError> {
    let c = tile.core_features(layer);
    f.crop(c.top, c.left, c.height, c.width)
}

/// `(H, W)` of an image `[1, C, H, W]`.
fn height_width(image: &Tensor) -> (usize, usize) {
    let d = image.dims();
    (d[2], d[3])
}

/// `(C, H·W)` of the whole image's features at `layer`: the channels of a tile's features
/// `f`, and the positions of an image of `(h, w)` pixels.
fn whole_layer_size(f: &Tensor, layer: Layer, (h, w): (usize, usize)) -> (usize, usize) {
    let d = layer.min_input_side();
    (f.dims()[1], (h / d) * (w / d))
}

/// `F_core·F_coreᵀ / (H·W)` as `[C, C]`, with the whole layer's H·W.
fn core_gram(core: &Tensor, channels: usize, positions: usize) -> Result<Tensor, TensorError> {
    core.gram(1.0 / positions as f32)?
        .reshape(&[channels, channels])
}

/// `*sum += t` for a running sum that starts empty.
fn accumulate(sum: &mut Option<Tensor>, t: Tensor) -> Result<(), TensorError> {
    *sum = Some(match sum.take() {
        Some(s) => s.add(&t)?,
        None => t,
    });
    Ok(())
}

/// Ĝ of `image` at each of `layers`, added up over `tiles` (no gradient).
fn grams_over(
    vgg: &Vgg19,
    rgb: ToRgb,
    image: &Tensor,
    tiles: &[Tile],
    layers: &[Layer],
) -> Result<Vec<Tensor>, ObjectiveError> {
    let size = height_width(image);
    no_grad(|| {
        let mut sums: Vec<Option<Tensor>> = vec![None; layers.len()];
        for tile in tiles {
            let feats = vgg.features(&rgb(&pixels_in(image, tile.input)?)?, layers)?;
            for ((sum, f), &layer) in sums.iter_mut().zip(&feats).zip(layers) {
                let (c, positions) = whole_layer_size(f, layer, size);
                accumulate(sum, core_gram(&core_of(f, tile, layer)?, c, positions)?)?;
            }
        }
        Ok(sums.into_iter().flatten().collect())
    })
}

/// The tiles of a `(h, w)` image for `layers`, cores of at most `core_side` pixels a side.
fn tiles_for(
    layers: &[Layer],
    (h, w): (usize, usize),
    core_side: usize,
) -> Result<Vec<Tile>, ObjectiveError> {
    let deepest = geometry::deepest(layers).ok_or_else(|| {
        ObjectiveError::Spec("at least one content and one style layer are needed".into())
    })?;
    Ok(tiles::tiles(deepest, h, w, core_side)?)
}

/// Ĝ of `image` at each of `layers`, added up over tiles of at most `core_side` pixels a side
/// (no gradient): a style target too large to run through the network at once.
pub(crate) fn gram_hats(
    vgg: &Vgg19,
    rgb: ToRgb,
    image: &Tensor,
    layers: &[Layer],
    core_side: usize,
) -> Result<Vec<Tensor>, ObjectiveError> {
    let tiles = tiles_for(layers, height_width(image), core_side)?;
    grams_over(vgg, rgb, image, &tiles, layers)
}

/// TV over a tile's core, normalised by the whole image's `C·H·W`: its pairs with the
/// neighbour to the right and the one below, which lie in the tile (its margin, or the
/// image's edge where there is no neighbour).
fn tv_of_core(part: &Tensor, tile: &Tile, (h, w): (usize, usize)) -> Result<Tensor, TensorError> {
    let (top, left) = (
        tile.core.top - tile.input.top,
        tile.core.left - tile.input.left,
    );
    let (rows, cols) = (tile.core.height, tile.core.width);
    let right = usize::from(tile.core.left + cols < w);
    let below = usize::from(tile.core.top + rows < h);
    let across = squared_differences(&part.crop(top, left, rows, cols + right)?, Neighbour::Right)?;
    let down = squared_differences(&part.crop(top, left, rows + below, cols)?, Neighbour::Below)?;
    across
        .add(&down)?
        .scale(1.0 / (part.dims()[1] * h * w) as f32)
}

impl Tiling {
    /// The tiles of the content image (and of every image evaluated, which has its size),
    /// with the content image's features over each core; `None` where the image fits in one
    /// tile, and is better evaluated whole (the same, in one pass).
    pub(crate) fn new(
        vgg: &Vgg19,
        rgb: ToRgb,
        content: &Tensor,
        (content_layers, style_layers): (&[Layer], &[Layer]),
        core_side: usize,
    ) -> Result<Option<Self>, ObjectiveError> {
        let all = [content_layers, style_layers].concat();
        let tiles = tiles_for(&all, height_width(content), core_side)?;
        if tiles.len() == 1 {
            return Ok(None);
        }
        let content_targets = no_grad(|| {
            tiles
                .iter()
                .map(|tile| -> Result<Vec<Tensor>, ObjectiveError> {
                    let part = rgb(&pixels_in(content, tile.input)?)?;
                    let feats = vgg.features(&part, content_layers)?;
                    Ok(feats
                        .iter()
                        .zip(content_layers)
                        .map(|(f, &l)| core_of(f, tile, l))
                        .collect::<Result<_, _>>()?)
                })
                .collect::<Result<Vec<_>, _>>()
        })?;
        Ok(Some(Self {
            tiles,
            content_targets,
        }))
    }

    /// J and ∂J/∂x at `x`, tile by tile (see the module docs).
    pub(crate) fn evaluate(
        &self,
        vgg: &Vgg19,
        rgb: ToRgb,
        x: &Tensor,
        (content_layers, style_layers): (&[Layer], &[Layer]),
        style_targets: &[Tensor],
        weights: &LossWeights,
    ) -> Result<ObjectiveValue, ObjectiveError> {
        let size = height_width(x);
        let x = x.detach();
        // Pass 1: Ĝ_G over the whole image, J_s^l, and K_l.
        nst_tensor::memory_trace::set_phase("tiled: Gram matrices of the tiles", x.dims());
        let grams = grams_over(vgg, rgb, &x, &self.tiles, style_layers)?;
        // The terms' values stay on the device until every tile's work is queued: reading
        // one back waits for the device, which would stall a GPU once per tile.
        let (mut style_terms, mut content_terms, mut tv_terms) =
            (Vec::new(), Vec::new(), Vec::new());
        let mut style_grads = Vec::with_capacity(grams.len());
        for ((g, target), &w_l) in grams.iter().zip(style_targets).zip(&weights.style_layers) {
            let c = g.dims()[0] as f32;
            let j = no_grad(|| g.squared_distance(target)?.scale(1.0 / (4.0 * c * c)))?;
            style_terms.push((w_l, j));
            // K_l = ∂(β·w_l·J_s^l)/∂Ĝ_G = β·w_l·(Ĝ_G − Ĝ_S)/(2·C²): a constant.
            let k = no_grad(|| g.sub(target)?.scale(weights.style * w_l / (2.0 * c * c)))?;
            style_grads.push(k);
        }
        drop(grams);
        // Pass 2: each tile's share of J, forward and backward.
        let layers = [content_layers, style_layers].concat();
        let mut grad = Tensor::zeros(x.dims(), x.device())?;
        for (tile, targets) in self.tiles.iter().zip(&self.content_targets) {
            nst_tensor::memory_trace::set_phase("tiled: forward and backward of a tile", x.dims());
            let part = pixels_in(&x, tile.input)?.to_variable();
            let feats = vgg.features(&rgb(&part)?, &layers)?;
            let (content_feats, style_feats) = feats.split_at(content_layers.len());
            let mut share = None;
            for ((f, target), &layer) in content_feats.iter().zip(targets).zip(content_layers) {
                let (c, positions) = whole_layer_size(f, layer, size);
                let jc = content_loss_over(&core_of(f, tile, layer)?, target, c * positions)?;
                content_terms.push(jc.detach());
                accumulate(&mut share, jc.scale(weights.content)?)?;
            }
            for ((f, k), &layer) in style_feats.iter().zip(&style_grads).zip(style_layers) {
                let (c, positions) = whole_layer_size(f, layer, size);
                let g = core_gram(&core_of(f, tile, layer)?, c, positions)?;
                accumulate(&mut share, g.mul(k)?.sum()?)?;
            }
            drop(feats);
            if weights.tv > 0.0 {
                let t = tv_of_core(&part, tile, size)?;
                tv_terms.push(t.detach());
                accumulate(&mut share, t.scale(weights.tv)?)?;
            }
            let share = share.expect("the objective has layers");
            let part_grad = share
                .backward()?
                .remove(&part)
                .ok_or(TensorError::NoGraph)?;
            grad = no_grad(|| grad.add_window(&part_grad, tile.input.top, tile.input.left))?;
        }
        let mut style = 0.0;
        for (w_l, j) in style_terms {
            style += w_l as f64 * j.to_scalar()? as f64;
        }
        let sum = |terms: Vec<Tensor>| -> Result<f64, TensorError> {
            terms
                .iter()
                .try_fold(0.0, |s, t| Ok(s + t.to_scalar()? as f64))
        };
        let (content, tv) = (sum(content_terms)?, sum(tv_terms)?);
        let w = weights;
        Ok(ObjectiveValue {
            total: w.content as f64 * content + w.style as f64 * style + w.tv as f64 * tv,
            grad,
            content,
            style,
            tv,
        })
    }
}
