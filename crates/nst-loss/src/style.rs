//! Gram-matrix style loss.

use nst_tensor::{Result, Tensor, TensorError};

/// `Ĝ = F·Fᵀ / (H·W)` for features `[1, C, H, W]` → `[C, C]` (`[N, C, H, W]` → `[N, C, C]`).
pub fn gram_hat(features: &Tensor) -> Result<Tensor> {
    let d = features.dims();
    if d.len() != 4 {
        return Err(TensorError::Invalid {
            op: "gram_hat",
            reason: format!("expects features [N, C, H, W], got {d:?}"),
        });
    }
    let g = features.gram(1.0 / (d[2] * d[3]) as f32)?;
    if d[0] == 1 {
        g.reshape(&[d[1], d[1]])
    } else {
        Ok(g)
    }
}

/// `J_s^l = 1/(4·C²) · Σ (Ĝ_S − Ĝ_G)²` between the generated image's features `[1, C, H, W]`
/// and a target normalised Gram matrix `Ĝ_S` (`[C, C]`, see [`gram_hat`]).
pub fn style_layer_loss(generated: &Tensor, target_gram_hat: &Tensor) -> Result<Tensor> {
    let g = gram_hat(generated)?;
    // C from the features (a target of another shape is then squared_distance's error).
    let c = g.dims()[0] as f32;
    g.squared_distance(target_gram_hat)?
        .scale(1.0 / (4.0 * c * c))
}

/// `J_s = Σ_l w_l · J_s^l` over matching lists of generated features, target Ĝ and weights.
pub fn style_loss(generated: &[Tensor], targets: &[Tensor], weights: &[f32]) -> Result<Tensor> {
    if generated.len() != targets.len() || targets.len() != weights.len() || generated.is_empty() {
        return Err(TensorError::Invalid {
            op: "style_loss",
            reason: format!(
                "{} features, {} targets and {} weights: one of each per layer, at least one",
                generated.len(),
                targets.len(),
                weights.len()
            ),
        });
    }
    let terms = generated
        .iter()
        .zip(targets)
        .map(|(f, t)| style_layer_loss(f, t))
        .collect::<Result<Vec<_>>>()?;
    weighted_sum(&terms, weights)
}

/// `Σ_l w_l · J_s^l`, added in order (so every caller rounds alike). At least one term, one
/// weight per term.
pub(crate) fn weighted_sum(terms: &[Tensor], weights: &[f32]) -> Result<Tensor> {
    let mut total: Option<Tensor> = None;
    for (term, &w) in terms.iter().zip(weights) {
        let term = term.scale(w)?;
        total = Some(match total {
            Some(acc) => acc.add(&term)?,
            None => term,
        });
    }
    total.ok_or_else(|| TensorError::Invalid {
        op: "style_loss",
        reason: format!(
            "{} terms and {} weights: one weight per term, at least one",
            terms.len(),
            weights.len()
        ),
    })
}

/// Blends the Ĝ targets of several style images for one layer: `Σ_i b_i·Ĝ_i / Σ_i b_i`.
/// Weights must be non-negative with a positive sum (checked by the caller's validation).
pub fn blend_grams(grams: &[Tensor], blend: &[f32]) -> Result<Tensor> {
    if grams.is_empty() || grams.len() != blend.len() {
        return Err(TensorError::Invalid {
            op: "blend_grams",
            reason: format!(
                "{} Gram matrices and {} blend weights: one weight per matrix, at least one",
                grams.len(),
                blend.len()
            ),
        });
    }
    let total: f32 = blend.iter().sum();
    let mut acc = grams[0].scale(blend[0] / total)?;
    for (g, &b) in grams.iter().zip(blend).skip(1) {
        acc = acc.axpby(1.0, g, b / total)?;
    }
    Ok(acc)
}
