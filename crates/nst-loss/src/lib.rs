//! # nst-loss
//!
//! The loss terms of neural style transfer (Gatys, Ecker & Bethge, 2016), as differentiable
//! functions of feature tensors from any network. Conventions (the project's defaults):
//!
//! | term | formula | function |
//! |---|---|---|
//! | content | `J_c = 1/(4·C·H·W) · Σ (F_C − F_G)²` | [`content_loss`] |
//! | normalised Gram | `Ĝ = F·Fᵀ / (H·W)`, F as a `C × (H·W)` matrix | [`gram_hat`] |
//! | style, one layer | `J_s^l = 1/(4·C²) · Σ (Ĝ_S − Ĝ_G)²` | [`style_layer_loss`] |
//! | style | `J_s = Σ_l w_l · J_s^l` | [`style_loss`] |
//! | total variation | `TV = 1/(C·H·W) · Σ [(x[y,x+1] − x[y,x])² + (x[y+1,x] − x[y,x])²]` | [`tv_loss`] |
//!
//! With equal image sizes the style term is the classic `1/(4·C²·(H·W)²) · Σ (G_S − G_G)²`
//! of the paper; dividing the Gram matrix by H·W first makes it independent of the size of
//! the style image, so a style image of any size can be used. Several style images combine by
//! blending their Ĝ targets with weights ([`blend_grams`]).
//!
//! [`Objective`] puts them together on VGG-19 features: the total
//! `J = α·Σ J_c + β·Σ_l w_l·J_s^l + γ·TV` of an image and its gradient, with the targets
//! computed once (see [`objective`]); `LossSpec::default()` is nst's choice of layers and
//! weights ([`defaults`]).

mod content;
pub mod objective;
mod style;
pub mod tiled;
mod tv;

pub use content::content_loss;
pub use objective::{defaults, LossSpec, LossWeights, Objective, ObjectiveError, ObjectiveValue};
pub use style::{blend_grams, gram_hat, style_layer_loss, style_loss};
pub use tv::tv_loss;
