//! A validated description of one style-transfer run.

use nst_tensor::{ConvAlgorithm, Layout};
use nst_vgg::{Layer, Pooling};
use serde::Serialize;
use std::path::PathBuf;

/// Which optimizer drives the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OptimizerKind {
    /// L-BFGS (torch.optim.LBFGS semantics): the classic choice, converges in few iterations.
    Lbfgs,
    /// Adam: steadier on noisy objectives, needs more iterations.
    Adam,
}

/// Where the computation runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DeviceChoice {
    /// CUDA when it is present and usable, else the CPU.
    Auto,
    /// The CPU (all cores, rayon).
    Cpu,
    /// An NVIDIA GPU; an error if none is usable.
    Cuda,
    /// The CUDA backend run on the CPU by its emulator (tests of the CUDA code path on
    /// machines without a GPU; needs g++, and is slow). Not shown in `--help`.
    #[value(hide = true)]
    #[serde(rename = "cuda-emulated")]
    CudaEmulated,
}

/// How a GPU computes convolutions (the CPU always computes in f32).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum PrecisionChoice {
    /// Tensor cores with TF32 operands, f32 accumulation: PyTorch's default for cuDNN
    /// convolutions. Gram matrices stay f32.
    Tf32,
    /// f32 throughout.
    Fp32,
}

impl PrecisionChoice {
    /// The tensor library's setting.
    pub fn precision(self) -> nst_tensor::Precision {
        match self {
            PrecisionChoice::Tf32 => nst_tensor::Precision::Tf32,
            PrecisionChoice::Fp32 => nst_tensor::Precision::Fp32,
        }
    }
}

/// How the content's colours are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ColorMode {
    /// Take colours from the style.
    None,
    /// Transfer style on luminance only; put the content's colour channels back.
    Luminance,
    /// Recolour the style image to the content's colour mean and covariance first.
    Match,
}

/// How the image starts.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Init {
    /// The content image (the default: converges fastest and keeps structure).
    Content,
    /// Uniform noise in 0..255 from `--seed`.
    Noise,
    /// An image file, resized to the first scale.
    File(PathBuf),
}

/// Everything a run needs, already checked for consistency.
#[derive(Clone, Debug, Serialize)]
pub struct Config {
    /// Content photo.
    pub content: PathBuf,
    /// Style images (at least one).
    pub styles: Vec<PathBuf>,
    /// Blend weights of the style images, normalised to sum to 1.
    pub style_blend: Vec<f32>,
    /// Output file; the format follows the extension.
    pub output: PathBuf,
    /// Longest side of the output.
    pub size: u32,
    /// Longest side of the style images at the final scale.
    pub style_size: Option<u32>,
    /// Iterations at each scale.
    pub iters: u32,
    /// Longest side of each scale, coarse to fine (the last is `size`).
    pub scale_sides: Vec<u32>,
    /// Optimizer.
    pub optimizer: OptimizerKind,
    /// Learning rate / step multiplier.
    pub lr: f32,
    /// α.
    pub content_weight: f32,
    /// β.
    pub style_weight: f32,
    /// γ.
    pub tv_weight: f32,
    /// Content layers (their losses add up).
    #[serde(serialize_with = "layer_names")]
    pub content_layers: Vec<Layer>,
    /// Style layers.
    #[serde(serialize_with = "layer_names")]
    pub style_layers: Vec<Layer>,
    /// w_l, one per style layer.
    pub style_layer_weights: Vec<f32>,
    /// Initial image.
    pub init: Init,
    /// Random seed (noise init).
    pub seed: u64,
    /// Device choice.
    pub device: DeviceChoice,
    /// GPU convolution precision.
    pub precision: PrecisionChoice,
    /// VGG pooling.
    #[serde(serialize_with = "pooling_name")]
    pub pooling: Pooling,
    /// Colour preservation.
    pub preserve_colors: ColorMode,
    /// Write an intermediate image every N iterations.
    pub save_every: Option<u32>,
    /// JSON report path.
    pub report: Option<PathBuf>,
    /// Other VGG-19 weights (safetensors).
    pub weights: Option<PathBuf>,
    /// Convolution algorithm (from `NST_CONV`; the backend's fastest by default).
    #[serde(serialize_with = "display")]
    pub conv_algorithm: ConvAlgorithm,
    /// On a GPU, search for the fastest convolution algorithms of every shape, the targets'
    /// and every scale's (`NST_SEARCH_EVERY_SCALE=1`), not only the final scale's image: to
    /// measure what the search costs and saves (see `pipeline::algorithm_search`).
    pub search_every_scale: bool,
    /// On a GPU with cuDNN, how activations are stored (from `NST_CUDA_LAYOUT`: NCHW by
    /// default; NHWC to measure whether tensor cores gain from it). The results are the same
    /// up to rounding (other algorithms, another summation order).
    #[serde(serialize_with = "display")]
    pub layout: Layout,
}

fn display<S: serde::Serializer, T: std::fmt::Display>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

fn layer_names<S: serde::Serializer>(layers: &[Layer], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(layers.iter().map(|l| l.name()))
}

fn pooling_name<S: serde::Serializer>(p: &Pooling, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(match p {
        Pooling::Max => "max",
        Pooling::Avg => "avg",
    })
}
