//! # nst-vgg
//!
//! The VGG-19 convolutional feature extractor (Simonyan & Zisserman, 2014) as used for neural
//! style transfer: 16 3×3 convolutions with ReLU, in five blocks separated by 2×2 pooling,
//! with no classifier. Layers are named `conv1_1 … relu5_4`, `pool1 … pool5`.
//!
//! - [`Vgg19::embedded`] loads the original Caffe weights shipped inside the binary
//!   (`weights/vgg19.safetensors`, 8-bit k-means codes + codebooks, CC BY 4.0), so no download
//!   or path is ever needed. [`Vgg19::from_safetensors`] loads other weights; see
//!   [`weights`] for the tensor names and dtypes accepted.
//! - [`Vgg19::features`] takes an RGB image in 0..255 (`[N, 3, H, W]`), applies the Caffe
//!   preprocessing (RGB → BGR, minus the mean pixel) and runs only as deep as the deepest
//!   requested layer. It is differentiable with respect to the image. The convolution
//!   algorithm is the caller's choice ([`Vgg19::with_conv_algorithm`]).
//! - [`geometry`]: layer sizes for an image — poolings before a layer, the smallest image a
//!   layer accepts, every convolution's shape and the FLOPs of an iteration.
//! - [`tiles`]: an image cut into tiles (a core plus a halo covering its receptive field)
//!   whose features are exactly the whole image's, for images too large to run at once.
//!
//! ```
//! use nst_tensor::{Device, Tensor};
//! use nst_vgg::{Layer, Pooling, Vgg19};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let vgg = Vgg19::embedded(&Device::Cpu, Pooling::Max)?;
//! let img = Tensor::full(128.0, &[1, 3, 32, 32], &Device::Cpu)?;
//! let layers: Vec<Layer> = ["relu1_1", "relu3_1"].iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
//! let feats = vgg.features(&img, &layers)?;
//! assert_eq!(feats[1].dims(), &[1, 256, 8, 8]);
//! # Ok(()) }
//! ```

mod error;
pub mod geometry;
mod layer;
mod model;
pub mod tiles;
pub mod weights;

pub use error::VggError;
pub use layer::{Layer, LayerKind, LAYER_NAMES};
pub use model::{Pooling, Vgg19, CAFFE_MEAN_BGR};
