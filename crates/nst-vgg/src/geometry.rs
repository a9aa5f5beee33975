//! What a run through VGG-19 looks like for an image of a given size, worked out once for
//! everyone who needs it (the `nst` command's size checks, the benchmarks' FLOP counts and
//! per-layer shapes): how much each layer downsamples, the smallest image a layer accepts, and
//! the shape of every convolution up to a layer.

use crate::layer::{Layer, LayerKind};
use crate::weights::CONV_CHANNELS;
use crate::VggError;
use nst_tensor::Conv2dParams;

impl Layer {
    /// The 2×2 poolings a signal passes through before reaching this layer.
    pub fn pools_before(self) -> u32 {
        Layer::all()
            .take(self.index())
            .filter(|l| l.kind() == LayerKind::Pool)
            .count() as u32
    }

    /// The shortest image side for which this layer's activation is at least 1×1:
    /// `2^(poolings up to and including it)` (a pooling layer halves its own input).
    pub fn min_input_side(self) -> usize {
        let own = u32::from(self.kind() == LayerKind::Pool);
        1 << (self.pools_before() + own)
    }
}

/// Whether a `height × width` image reaches `deepest` ([`Layer::min_input_side`]), else
/// [`VggError::ImageTooSmall`] saying so.
pub fn check_input_size(deepest: Layer, height: usize, width: usize) -> Result<(), VggError> {
    let min_side = deepest.min_input_side();
    if height.min(width) >= min_side {
        return Ok(());
    }
    Err(VggError::ImageTooSmall {
        height,
        width,
        layer: deepest.to_string(),
        min_side,
    })
}

/// The deepest of `layers` (the network runs up to it), or `None` if there are none.
pub fn deepest(layers: &[Layer]) -> Option<Layer> {
    layers.iter().max().copied()
}

/// `(layer, shape)` of every convolution from conv1_1 up to `deepest` for a batch of one
/// `height × width` image, with the pooling sizes (floor) applied in between.
pub fn conv_shapes(deepest: Layer, height: usize, width: usize) -> Vec<(Layer, Conv2dParams)> {
    let (mut h, mut w) = (height, width);
    let mut shapes = Vec::new();
    for layer in Layer::all().take(deepest.index() + 1) {
        match layer.kind() {
            LayerKind::Conv(i) => shapes.push((
                layer,
                Conv2dParams::same_3x3(1, CONV_CHANNELS[i].0, h, w, CONV_CHANNELS[i].1),
            )),
            LayerKind::Pool => (h, w) = (h / 2, w / 2),
            LayerKind::Relu => {}
        }
    }
    shapes
}

/// Elements of every activation a forward pass to `deepest` produces for a batch of one
/// `height × width` image: each convolution's output (with its ReLU fused, one tensor) and
/// each pooling's. These are what the backward pass keeps, so memory grows with this.
pub fn activation_elems(deepest: Layer, height: usize, width: usize) -> usize {
    let (mut h, mut w, mut channels) = (height, width, 3);
    let mut total = 0;
    for layer in Layer::all().take(deepest.index() + 1) {
        match layer.kind() {
            LayerKind::Conv(i) => {
                channels = CONV_CHANNELS[i].1;
                total += channels * h * w;
            }
            LayerKind::Pool => {
                (h, w) = (h / 2, w / 2);
                total += channels * h * w;
            }
            LayerKind::Relu => {}
        }
    }
    total
}

/// Elements of `layer`'s own output for a batch of one `height × width` image (what a loss
/// at that layer reads: a content target is this many values).
pub fn feature_elems(layer: Layer, height: usize, width: usize) -> usize {
    let (mut h, mut w, mut channels) = (height, width, 3);
    for l in Layer::all().take(layer.index() + 1) {
        match l.kind() {
            LayerKind::Conv(i) => channels = CONV_CHANNELS[i].1,
            LayerKind::Pool => (h, w) = (h / 2, w / 2),
            LayerKind::Relu => {}
        }
    }
    channels * h * w
}

/// FLOPs of one style-transfer iteration's convolutions: forward to `deepest` and the input
/// gradient back through them (the same count again), counted as direct convolution, so
/// rates compare like with like whatever algorithm ran.
pub fn iteration_conv_flops(deepest: Layer, height: usize, width: usize) -> f64 {
    2.0 * conv_shapes(deepest, height, width)
        .iter()
        .map(|(_, p)| p.flops())
        .sum::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str) -> Layer {
        name.parse().unwrap()
    }

    #[test]
    fn pooling_counts_and_minimum_sizes() {
        assert_eq!(layer("conv1_1").pools_before(), 0);
        assert_eq!(layer("pool1").pools_before(), 0);
        assert_eq!(layer("conv2_1").pools_before(), 1);
        assert_eq!(layer("relu4_2").min_input_side(), 8);
        assert_eq!(layer("relu5_1").min_input_side(), 16);
        assert_eq!(layer("pool1").min_input_side(), 2);
        assert_eq!(layer("pool5").min_input_side(), 32);
        assert_eq!(
            deepest(&[layer("relu4_2"), layer("relu1_1")]),
            Some(layer("relu4_2"))
        );
        assert_eq!(deepest(&[]), None);
    }

    #[test]
    fn conv_shapes_follow_the_pooling() {
        let shapes = conv_shapes(layer("relu5_1"), 100, 75);
        let names: Vec<&str> = shapes.iter().map(|(l, _)| l.name()).collect();
        assert_eq!(names.len(), 13, "conv1_1 … conv5_1");
        assert_eq!(names[12], "conv5_1");
        let (_, p) = shapes[12];
        // 100 → 50 → 25 → 12 → 6 and 75 → 37 → 18 → 9 → 4 (floor), 512 → 512 channels.
        assert_eq!(
            (p.in_h, p.in_w, p.in_channels, p.out_channels),
            (6, 4, 512, 512)
        );
        assert_eq!((shapes[0].1.in_channels, shapes[0].1.out_channels), (3, 64));
    }

    #[test]
    fn activations_match_a_hand_count() {
        // relu2_1 at 8×6: conv1_1 and conv1_2 (64·48 each), pool1 (64·12), conv2_1 (128·12).
        let n = activation_elems(layer("relu2_1"), 8, 6);
        assert_eq!(n, 2 * 64 * 48 + 64 * 12 + 128 * 12);
    }

    #[test]
    fn feature_sizes_match_a_hand_count() {
        // relu4_2 at 100×75: 512 channels over 12×9 (three floor halvings).
        assert_eq!(feature_elems(layer("relu4_2"), 100, 75), 512 * 12 * 9);
        assert_eq!(feature_elems(layer("pool1"), 8, 6), 64 * 4 * 3);
        assert_eq!(feature_elems(layer("conv1_1"), 8, 6), 64 * 48);
    }

    #[test]
    fn flops_match_a_hand_count() {
        // conv1_1 alone at 4×4: 2 (fwd + bwd) · 2 · 16 positions · 64 outputs · 27 taps.
        let f = iteration_conv_flops(layer("relu1_1"), 4, 4);
        assert_eq!(f, 2.0 * 2.0 * 16.0 * 64.0 * 27.0);
    }
}
