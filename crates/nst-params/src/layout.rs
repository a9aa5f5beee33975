//! How a 4-D tensor `[N, C, H, W]` lies in memory: NCHW (each channel a plane of H·W values,
//! the layout every shape in this workspace is written in) or NHWC ("channels last": the C
//! values of each pixel side by side, PyTorch's `torch.channels_last`).
//!
//! The layout is a choice of how to store, not a different tensor: shapes, indices and
//! results are always NCHW's, and a backend that stores NHWC converts wherever a caller
//! reads values. Tensor cores compute convolutions on NHWC data; cuDNN transposes NCHW data
//! around many of its tensor-core kernels, which NHWC storage avoids.

use std::fmt;
use std::str::FromStr;

/// The memory layout of a backend's 4-D activations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum Layout {
    /// Channels first: `x[n][c][h][w]`.
    #[default]
    Nchw,
    /// Channels last: `x[n][h][w][c]`.
    Nhwc,
}

impl Layout {
    /// The environment switch binaries read a GPU's activation layout from (kernel crates
    /// never do).
    pub const ENV_VAR: &'static str = "NST_CUDA_LAYOUT";

    /// The layout for the value of [`Layout::ENV_VAR`] (the default when unset or empty); an
    /// error names the variable.
    pub fn from_env_value(value: Option<&str>) -> Result<Self, String> {
        let value = value.filter(|v| !v.trim().is_empty());
        value.map_or(Ok(Self::default()), |v| {
            v.parse().map_err(|e| format!("{}: {e}", Self::ENV_VAR))
        })
    }
}

impl FromStr for Layout {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "nchw" => Ok(Layout::Nchw),
            "nhwc" | "channels_last" => Ok(Layout::Nhwc),
            other => Err(format!("unknown layout {other:?} (expected nchw or nhwc)")),
        }
    }
}

impl fmt::Display for Layout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Layout::Nchw => "nchw",
            Layout::Nhwc => "nhwc",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::Layout;

    #[test]
    fn layout_names_parse_and_print() {
        assert_eq!("NHWC".parse(), Ok(Layout::Nhwc));
        assert_eq!("channels_last".parse(), Ok(Layout::Nhwc));
        assert_eq!(" nchw".parse(), Ok(Layout::Nchw));
        assert!("nwhc".parse::<Layout>().is_err());
        assert_eq!(Layout::from_env_value(None), Ok(Layout::Nchw));
        assert_eq!(Layout::from_env_value(Some("")), Ok(Layout::Nchw));
        let e = Layout::from_env_value(Some("hwcn")).unwrap_err();
        assert!(e.starts_with("NST_CUDA_LAYOUT: unknown layout"), "{e}");
        assert_eq!(Layout::Nhwc.to_string().parse(), Ok(Layout::Nhwc));
    }
}
