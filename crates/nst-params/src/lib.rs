//! # nst-params
//!
//! What an op is asked to do, independent of the device that does it: the shapes of a
//! convolution, of a pooling layer and of a window copied between planes (a tile), Adam's
//! hyperparameters, which convolution algorithm the caller wants (and, on a GPU, how it is
//! picked), and how a GPU lays out its activations. Every backend (`nst-cpu`, `nst-cuda`) and
//! the tensor layer above them (`nst-tensor`) take these same types, so a shape is worked out
//! once and means the same thing on every device.
//!
//! Nothing here computes anything but sizes; the crate has no dependencies.

mod adam;
mod conv;
mod layout;
mod pool;
mod window;

pub use adam::AdamParams;
pub use conv::{AlgorithmSearch, Conv2dParams, ConvAlgorithm};
pub use layout::Layout;
pub use pool::Pool2dParams;
pub use window::Window2dParams;
