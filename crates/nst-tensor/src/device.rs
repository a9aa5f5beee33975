//! Where a tensor's data lives.

use std::fmt;

/// The compute device of a tensor. Ops require all their inputs on the same device.
///
/// `Cpu` runs the rayon kernels of `nst-cpu`. The enum is `non_exhaustive` so that a `Cuda`
/// device can be added without breaking callers that match on it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Device {
    /// Host memory and the `nst-cpu` kernels.
    #[default]
    Cpu,
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Cpu => write!(f, "cpu ({} threads)", rayon_threads()),
        }
    }
}

fn rayon_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}
