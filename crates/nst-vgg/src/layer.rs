//! Layer names of VGG-19's feature part, in execution order.

use crate::VggError;
use std::fmt;
use std::str::FromStr;

/// Every layer of VGG-19 up to pool5, in the order they run.
pub const LAYER_NAMES: [&str; 37] = [
    "conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1", "conv2_1", "relu2_1", "conv2_2",
    "relu2_2", "pool2", "conv3_1", "relu3_1", "conv3_2", "relu3_2", "conv3_3", "relu3_3",
    "conv3_4", "relu3_4", "pool3", "conv4_1", "relu4_1", "conv4_2", "relu4_2", "conv4_3",
    "relu4_3", "conv4_4", "relu4_4", "pool4", "conv5_1", "relu5_1", "conv5_2", "relu5_2",
    "conv5_3", "relu5_3", "conv5_4", "relu5_4", "pool5",
];

/// What a layer does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerKind {
    /// 3×3 convolution + bias; the index counts convolutions from 0 (conv1_1) to 15 (conv5_4).
    Conv(usize),
    /// ReLU.
    Relu,
    /// 2×2 pooling, stride 2.
    Pool,
}

/// A VGG-19 layer, parsed from its name (`"relu4_2"`). Ordered by depth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Layer(pub(crate) usize);

impl Layer {
    /// Position in [`LAYER_NAMES`].
    pub fn index(self) -> usize {
        self.0
    }

    /// The layer's name.
    pub fn name(self) -> &'static str {
        LAYER_NAMES[self.0]
    }

    /// What the layer computes.
    pub fn kind(self) -> LayerKind {
        let name = self.name();
        if name.starts_with("conv") {
            LayerKind::Conv(
                LAYER_NAMES[..self.0]
                    .iter()
                    .filter(|n| n.starts_with("conv"))
                    .count(),
            )
        } else if name.starts_with("relu") {
            LayerKind::Relu
        } else {
            LayerKind::Pool
        }
    }

    /// All layers in order.
    pub fn all() -> impl Iterator<Item = Layer> {
        (0..LAYER_NAMES.len()).map(Layer)
    }
}

impl FromStr for Layer {
    type Err = VggError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        LAYER_NAMES
            .iter()
            .position(|&n| n == s)
            .map(Layer)
            .ok_or_else(|| VggError::UnknownLayer(s.to_string()))
    }
}

impl fmt::Display for Layer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
