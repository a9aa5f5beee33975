//! The network: preprocessing, then convolutions, ReLUs and pooling up to a requested depth.

use crate::layer::{Layer, LayerKind};
use crate::weights;
use crate::VggError;
use nst_tensor::{Conv2dOptions, ConvAlgorithm, Device, Tensor};
use std::str::FromStr;

/// The Caffe ImageNet mean pixel in B, G, R order (0..255 scale).
pub const CAFFE_MEAN_BGR: [f32; 3] = [103.939, 116.779, 123.68];

/// The pooling layers' operation. Gatys et al. found average pooling gives slightly smoother
/// results; max pooling is what the network was trained with and the default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Pooling {
    /// 2×2 max pooling (as trained).
    #[default]
    Max,
    /// 2×2 average pooling.
    Avg,
}

impl FromStr for Pooling {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "max" => Ok(Pooling::Max),
            "avg" => Ok(Pooling::Avg),
            _ => Err(format!("unknown pooling '{s}' (expected max or avg)")),
        }
    }
}

/// VGG-19's feature layers with frozen weights. Cloning shares the weights (no copy).
#[derive(Clone)]
pub struct Vgg19 {
    /// (weight, bias) of the 16 convolutions.
    convs: Vec<(Tensor, Tensor)>,
    /// 1×1 convolution doing RGB → BGR and mean subtraction (exact, and differentiable).
    preprocess: (Tensor, Tensor),
    pooling: Pooling,
    conv_algorithm: ConvAlgorithm,
}

impl Vgg19 {
    /// The shipped original Caffe weights ([`weights::shipped`]: embedded in the binary).
    pub fn embedded(device: &Device, pooling: Pooling) -> Result<Self, VggError> {
        Self::from_safetensors(weights::shipped()?, device, pooling)
    }

    /// Weights from a safetensors file on disk (see [`crate::weights`] for the format).
    pub fn from_file(
        path: &std::path::Path,
        device: &Device,
        pooling: Pooling,
    ) -> Result<Self, VggError> {
        let bytes = std::fs::read(path).map_err(|e| VggError::Io {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Self::from_safetensors(&bytes, device, pooling)
    }

    /// Weights from safetensors bytes.
    pub fn from_safetensors(
        bytes: &[u8],
        device: &Device,
        pooling: Pooling,
    ) -> Result<Self, VggError> {
        Self::from_weights(weights::load(bytes)?, device, pooling)
    }

    /// Weights already read ([`weights::load`]: checked, one entry per convolution), put on
    /// `device`; for a caller that reads and checks a file before it chooses the device.
    pub fn from_weights(
        convs: Vec<weights::ConvWeights>,
        device: &Device,
        pooling: Pooling,
    ) -> Result<Self, VggError> {
        let convs = convs
            .into_iter()
            .map(|c| {
                let w = Tensor::from_vec(c.weight, &[c.out_channels, c.in_channels, 3, 3], device)?;
                let b = Tensor::from_vec(c.bias, &[c.out_channels], device)?;
                Ok((w, b))
            })
            .collect::<Result<_, VggError>>()?;
        // out[c] = in[2 − c] − mean[c]: output channel c (B, G, R) takes input channel 2 − c.
        let mut perm = vec![0.0; 9];
        for c in 0..3 {
            perm[c * 3 + (2 - c)] = 1.0;
        }
        let preprocess = (
            Tensor::from_vec(perm, &[3, 3, 1, 1], device)?,
            Tensor::from_vec(CAFFE_MEAN_BGR.iter().map(|m| -m).collect(), &[3], device)?,
        );
        Ok(Self {
            convs,
            preprocess,
            pooling,
            conv_algorithm: ConvAlgorithm::default(),
        })
    }

    /// The same network running its convolutions with `algorithm` (the backend's fastest by
    /// default; [`ConvAlgorithm::Im2col`] for comparisons).
    pub fn with_conv_algorithm(mut self, algorithm: ConvAlgorithm) -> Self {
        self.conv_algorithm = algorithm;
        self
    }

    /// The device holding the weights.
    pub fn device(&self) -> &Device {
        self.preprocess.0.device()
    }

    /// The pooling in use.
    pub fn pooling(&self) -> Pooling {
        self.pooling
    }

    /// Caffe preprocessing of an RGB image in 0..255: BGR order, minus [`CAFFE_MEAN_BGR`].
    pub fn preprocess(&self, rgb: &Tensor) -> Result<Tensor, VggError> {
        Ok(rgb.conv2d(&self.preprocess.0, Some(&self.preprocess.1), 1, 0)?)
    }

    /// The activations at `layers` (returned in the same order) for an RGB image in 0..255,
    /// `[N, 3, H, W]`. Runs the network only up to the deepest requested layer, which the
    /// image must be large enough to reach ([`Layer::min_input_side`]: each pooling halves
    /// it), else [`VggError::ImageTooSmall`].
    pub fn features(&self, rgb: &Tensor, layers: &[Layer]) -> Result<Vec<Tensor>, VggError> {
        if let (Some(&deepest), &[_, _, height, width]) = (layers.iter().max(), rgb.dims()) {
            crate::geometry::check_input_size(deepest, height, width)?;
        }
        Ok(self.tensor_features(rgb, layers)?)
    }

    /// [`Vgg19::features`] with a tensor error: past loading, every failure is a tensor
    /// operation's. For code that must return [`nst_tensor::TensorError`], such as a function
    /// recomputed by [`Tensor::checkpoint`].
    pub fn tensor_features(
        &self,
        rgb: &Tensor,
        layers: &[Layer],
    ) -> Result<Vec<Tensor>, nst_tensor::TensorError> {
        let Some(deepest) = layers.iter().max() else {
            return Ok(vec![]);
        };
        let mut out: Vec<Option<Tensor>> = vec![None; layers.len()];
        let mut x = rgb.conv2d(&self.preprocess.0, Some(&self.preprocess.1), 1, 0)?;
        let mut relu_done = false;
        for layer in Layer::all().take(deepest.index() + 1) {
            x = match layer.kind() {
                LayerKind::Conv(i) => {
                    // A conv whose own output nobody asked for runs with its ReLU fused: the
                    // pre-activation is never stored.
                    let relu = !layers.contains(&layer);
                    relu_done = relu;
                    let o = Conv2dOptions {
                        algorithm: self.conv_algorithm,
                        relu,
                        ..Conv2dOptions::new(1, 1)
                    };
                    x.conv2d_with(&self.convs[i].0, Some(&self.convs[i].1), o)?
                }
                // Its ReLU was already applied by the fused conv just before.
                LayerKind::Relu if relu_done => {
                    relu_done = false;
                    x
                }
                LayerKind::Relu => x.relu()?,
                LayerKind::Pool => match self.pooling {
                    Pooling::Max => x.max_pool2d()?,
                    Pooling::Avg => x.avg_pool2d()?,
                },
            };
            for (slot, want) in out.iter_mut().zip(layers) {
                if *want == layer {
                    *slot = Some(x.clone());
                }
            }
        }
        Ok(out
            .into_iter()
            .map(|t| t.expect("every requested layer is at most the deepest"))
            .collect())
    }
}
