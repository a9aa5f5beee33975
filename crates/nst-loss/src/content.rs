//! Content loss.

use nst_tensor::{Result, Tensor};

/// `J_c = 1/(4·C·H·W) · Σ (F_C − F_G)²` for features `[1, C, H, W]` of the generated image
/// (`generated`, differentiable) and the content image (`target`, usually a constant).
/// For a batch the normaliser is the element count N·C·H·W.
pub fn content_loss(generated: &Tensor, target: &Tensor) -> Result<Tensor> {
    content_loss_over(generated, target, generated.elem_count())
}

/// A part of [`content_loss`]: `1/(4·n) · Σ (F_C − F_G)²` over some of the positions of
/// features of `n` elements (a tile's core of the whole image's features).
pub(crate) fn content_loss_over(generated: &Tensor, target: &Tensor, n: usize) -> Result<Tensor> {
    // One op rather than sub, square and sum: the same value, less memory (see
    // `Tensor::squared_distance`).
    generated
        .squared_distance(target)?
        .scale(1.0 / (4.0 * n as f32))
}
