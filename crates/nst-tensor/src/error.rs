//! Errors from tensor operations.

use thiserror::Error;

/// Why a tensor operation failed. Every message is one line.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum TensorError {
    /// The operands' shapes do not fit the operation.
    #[error("{op}: shape mismatch between {lhs:?} and {rhs:?}")]
    ShapeMismatch {
        /// The operation.
        op: &'static str,
        /// The first operand's shape.
        lhs: Vec<usize>,
        /// The second operand's (or the expected) shape.
        rhs: Vec<usize>,
    },
    /// The arguments do not fit the operation in a way two shapes cannot say: a tensor of
    /// the wrong rank, lists of different lengths.
    #[error("{op}: {reason}")]
    Invalid {
        /// The operation.
        op: &'static str,
        /// What it expects and what it got, in words.
        reason: String,
    },
    /// A data buffer does not have as many elements as its shape.
    #[error("data has {got} elements but shape {shape:?} needs {want}")]
    DataLength {
        /// The shape asked for.
        shape: Vec<usize>,
        /// Elements given.
        got: usize,
        /// Elements needed.
        want: usize,
    },
    /// The operands live on different devices.
    #[error("{op}: operands are on different devices")]
    DeviceMismatch {
        /// The operation.
        op: &'static str,
    },
    /// An operation that needs a single-element tensor got a larger one.
    #[error("{op}: expected a scalar, got shape {shape:?}")]
    NotScalar {
        /// The operation.
        op: &'static str,
        /// The shape it got.
        shape: Vec<usize>,
    },
    /// `backward` was called on a tensor that does not depend on any variable.
    #[error("backward: the tensor does not depend on any variable (make parameters with Tensor::variable or .to_variable())")]
    NoGraph,
    /// `backward` reached an op whose record an earlier `backward` already consumed.
    #[error("backward: this graph was already used by an earlier backward (it frees the graph)")]
    GraphFreed,
    /// A CUDA device was asked for but cannot be used (no driver, library or device, or no
    /// CUDA backend in this build).
    #[error("CUDA is not available: {reason}")]
    CudaUnavailable {
        /// What is missing, in one line.
        reason: String,
    },
    /// The flag of [`interruptible`](crate::interruptible) was raised: the op did not run.
    #[error("interrupted")]
    Interrupted,
    /// A CUDA operation failed on the device (out of memory names the size that failed).
    #[error("{message}")]
    CudaFailed {
        /// The driver's, cuBLAS's or the allocator's complaint, in one line.
        message: String,
    },
}
