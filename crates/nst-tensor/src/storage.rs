//! The memory behind a tensor, one variant per device.

/// Tensor data. Every op matches on this to pick its kernels; a CUDA variant joins `Cpu`
/// when the CUDA backend lands.
#[derive(Debug)]
pub(crate) enum Storage {
    Cpu(Vec<f32>),
}

impl Storage {
    pub(crate) fn len(&self) -> usize {
        match self {
            Storage::Cpu(v) => v.len(),
        }
    }

    /// The host slice (every storage is host memory today).
    pub(crate) fn as_slice(&self) -> &[f32] {
        match self {
            Storage::Cpu(v) => v,
        }
    }
}
