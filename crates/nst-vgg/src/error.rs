//! Errors from loading weights and extracting features.

use thiserror::Error;

/// What went wrong in `nst-vgg`. Every message is one line and names the offending item.
#[derive(Debug, Error)]
pub enum VggError {
    /// The weights file could not be read.
    #[error("cannot read weights {path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// The bytes are not a valid safetensors file (corrupt or truncated).
    #[error("weights are not a valid safetensors file: {0}")]
    Format(String),
    /// A tensor the network needs is not in the file.
    #[error("weights: missing tensor {0} (expected {0}.weight, or {0}.weight_codes with {0}.weight_codebook)")]
    MissingTensor(String),
    /// A tensor has the wrong shape.
    #[error("weights: tensor {name} has shape {got:?}, expected {want:?}")]
    WrongShape {
        /// Tensor name.
        name: String,
        /// Its shape in the file.
        got: Vec<usize>,
        /// The shape VGG-19 needs.
        want: Vec<usize>,
    },
    /// A tensor has a dtype we cannot use.
    #[error("weights: tensor {name} has dtype {dtype}, expected {want}")]
    WrongDtype {
        /// Tensor name.
        name: String,
        /// Its dtype.
        dtype: String,
        /// What is accepted.
        want: &'static str,
    },
    /// A layer name that VGG-19 does not have.
    #[error("unknown VGG-19 layer '{0}' (valid: conv1_1, relu1_1, …, relu5_4, pool1 … pool5)")]
    UnknownLayer(String),
    /// A weight tensor holds NaN or an infinity.
    #[error("weights: tensor {name} has a non-finite value (element {index})")]
    NonFinite {
        /// The tensor.
        name: String,
        /// The first bad element.
        index: usize,
    },
    /// The image is too small to reach a layer: each pooling before it halves the image.
    #[error("a {height}×{width} image is too small for VGG-19 up to {layer}, which needs at least {min_side} px a side")]
    ImageTooSmall {
        /// The image's height.
        height: usize,
        /// Its width.
        width: usize,
        /// The deepest layer asked for.
        layer: String,
        /// The shortest side that reaches it.
        min_side: usize,
    },
    /// A tensor operation failed (shapes, device, memory).
    #[error(transparent)]
    Tensor(#[from] nst_tensor::TensorError),
}
