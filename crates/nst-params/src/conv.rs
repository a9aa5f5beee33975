//! 2-D convolution (cross-correlation, as in every DL framework) on NCHW tensors.
//!
//! Shapes: `x[N, C_in, H, W]`, `w[C_out, C_in, kh, kw]`, `b[C_out]`, `y[N, C_out, OH, OW]`
//! with `OH = (H + 2·pad − kh)/stride + 1` (floor).

use std::fmt;
use std::str::FromStr;

/// The shape of one convolution.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dParams {
    /// Batch size N.
    pub batch: usize,
    /// Input channels C_in.
    pub in_channels: usize,
    /// Input height H.
    pub in_h: usize,
    /// Input width W.
    pub in_w: usize,
    /// Output channels C_out.
    pub out_channels: usize,
    /// Kernel height kh.
    pub kernel_h: usize,
    /// Kernel width kw.
    pub kernel_w: usize,
    /// Stride (same along both axes).
    pub stride: usize,
    /// Zero padding on every side.
    pub pad: usize,
}

impl Conv2dParams {
    /// A 3×3 convolution, stride 1, padding 1: the output keeps the input's size. Every
    /// convolution of VGG-19 has this shape (and it is the one Winograd takes).
    pub fn same_3x3(
        batch: usize,
        in_channels: usize,
        in_h: usize,
        in_w: usize,
        out_channels: usize,
    ) -> Self {
        Self {
            batch,
            in_channels,
            in_h,
            in_w,
            out_channels,
            kernel_h: 3,
            kernel_w: 3,
            stride: 1,
            pad: 1,
        }
    }
    /// Output height (floor mode). Zero when the kernel does not fit.
    pub fn out_h(&self) -> usize {
        (self.in_h + 2 * self.pad)
            .checked_sub(self.kernel_h)
            .map_or(0, |d| d / self.stride + 1)
    }
    /// Output width (floor mode). Zero when the kernel does not fit.
    pub fn out_w(&self) -> usize {
        (self.in_w + 2 * self.pad)
            .checked_sub(self.kernel_w)
            .map_or(0, |d| d / self.stride + 1)
    }
    /// Rows of the im2col matrix: C_in·kh·kw.
    pub fn patch_len(&self) -> usize {
        self.in_channels * self.kernel_h * self.kernel_w
    }
    /// Elements of x.
    pub fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.in_h * self.in_w
    }
    /// Elements of w.
    pub fn weight_len(&self) -> usize {
        self.out_channels * self.patch_len()
    }
    /// Elements of y.
    pub fn output_len(&self) -> usize {
        self.batch * self.out_channels * self.out_h() * self.out_w()
    }
    /// Elements of the largest of x, w and y (what a library's per-tensor limit is about).
    pub fn largest_len(&self) -> usize {
        self.input_len()
            .max(self.weight_len())
            .max(self.output_len())
    }
    /// Multiply-adds ×2 of the forward pass as a direct convolution (the input gradient
    /// costs the same).
    pub fn flops(&self) -> f64 {
        2.0 * (self.batch * self.out_channels * self.out_h() * self.out_w()) as f64
            * self.patch_len() as f64
    }
    /// The input gradient `dx = ∂L/∂x` of a stride-1 convolution is itself a stride-1
    /// convolution of `dy` with the flipped kernel (`W̃[ci, co, y, x] = W[co, ci, kh−1−y,
    /// kw−1−x]`) and padding `k−1−pad`. This is that convolution's shape, or `None` where the
    /// identity does not hold (stride > 1, padding ≥ kernel, non-square kernel).
    pub fn input_gradient_as_forward(&self) -> Option<Conv2dParams> {
        let (kh, kw) = (self.kernel_h, self.kernel_w);
        if self.stride != 1 || self.pad >= kh || self.pad >= kw || kh != kw {
            return None;
        }
        Some(Conv2dParams {
            batch: self.batch,
            in_channels: self.out_channels,
            in_h: self.out_h(),
            in_w: self.out_w(),
            out_channels: self.in_channels,
            kernel_h: kh,
            kernel_w: kw,
            stride: 1,
            pad: kh - 1 - self.pad,
        })
    }
}

/// Which convolution algorithm a backend should use. The caller chooses (an environment
/// switch such as `NST_CONV` is read by binaries, never inside a kernel crate), and the
/// choice is carried from the forward op to its backward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum ConvAlgorithm {
    /// The backend's fastest for the shape. CPU: Winograd F(4×4, 3×3) for 3×3 stride-1
    /// padding-1 layers with at least 16 input channels, im2col + GEMM otherwise. CUDA: the
    /// algorithm measured fastest for the shape.
    #[default]
    Fastest,
    /// im2col + GEMM everywhere: the reference path, for comparisons.
    Im2col,
}

impl ConvAlgorithm {
    /// The environment switch binaries read the algorithm from (kernel crates never do).
    pub const ENV_VAR: &'static str = "NST_CONV";

    /// The algorithm for the value of [`ConvAlgorithm::ENV_VAR`] (the default when unset); an
    /// error names the variable.
    pub fn from_env_value(value: Option<&str>) -> Result<Self, String> {
        value.map_or(Ok(Self::default()), |v| {
            v.parse().map_err(|e| format!("{}: {e}", Self::ENV_VAR))
        })
    }
}

impl FromStr for ConvAlgorithm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "fastest" | "auto" => Ok(ConvAlgorithm::Fastest),
            "im2col" | "direct" => Ok(ConvAlgorithm::Im2col),
            other => Err(format!(
                "unknown convolution algorithm {other:?} (expected fastest or im2col)"
            )),
        }
    }
}

impl fmt::Display for ConvAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ConvAlgorithm::Fastest => "fastest",
            ConvAlgorithm::Im2col => "im2col",
        })
    }
}

/// How a GPU's convolution library picks the algorithm for a shape it has not seen yet.
/// (The CPU has one algorithm per shape and ignores this.)
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Hash)]
pub enum AlgorithmSearch {
    /// Run the candidates once each and keep the fastest (cuDNN's `cudnnFind*`, as
    /// `torch.backends.cudnn.benchmark` does): the fastest iterations, at a one-off cost of
    /// every candidate's run for each new shape.
    #[default]
    Measured,
    /// Take the library's own ranking at once, running nothing (`cudnnGet*_v7`): for shapes
    /// used too few times for a search to pay (an image's features computed once, an early
    /// scale of a multi-scale run). A shape already measured keeps its measured algorithm.
    Heuristic,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(h: usize, w: usize, k: usize, stride: usize, pad: usize) -> Conv2dParams {
        Conv2dParams {
            batch: 2,
            in_channels: 3,
            in_h: h,
            in_w: w,
            out_channels: 5,
            kernel_h: k,
            kernel_w: k,
            stride,
            pad,
        }
    }

    #[test]
    fn output_sizes_follow_the_floor_formula() {
        // (7 + 2·1 − 3)/2 + 1 = 4; (6 + 2 − 3)/2 + 1 = 3 (floor of 2.5 + 1).
        let p = conv(7, 6, 3, 2, 1);
        assert_eq!((p.out_h(), p.out_w()), (4, 3));
        assert_eq!(p.output_len(), 2 * 5 * 4 * 3);
        assert_eq!(p.patch_len(), 27);
        // A kernel larger than the padded input gives an empty output, not an underflow.
        assert_eq!(conv(1, 1, 5, 1, 1).out_h(), 0);
    }

    #[test]
    fn input_gradient_shape_maps_back_to_the_input() {
        for (h, w, k, pad) in [(7, 9, 3, 1), (5, 5, 3, 0), (6, 4, 1, 0), (8, 8, 5, 2)] {
            let p = conv(h, w, k, 1, pad);
            let q = p.input_gradient_as_forward().unwrap();
            assert_eq!((q.out_h(), q.out_w()), (h, w), "{p:?}");
            assert_eq!((q.in_channels, q.out_channels), (5, 3));
        }
        assert!(conv(7, 7, 3, 2, 1).input_gradient_as_forward().is_none());
    }

    #[test]
    fn algorithm_names_parse() {
        assert_eq!("direct".parse(), Ok(ConvAlgorithm::Im2col));
        assert_eq!("fastest".parse(), Ok(ConvAlgorithm::Fastest));
        assert!("winograd?".parse::<ConvAlgorithm>().is_err());
        assert_eq!(
            ConvAlgorithm::from_env_value(None),
            Ok(ConvAlgorithm::Fastest)
        );
        assert!(ConvAlgorithm::from_env_value(Some("x"))
            .unwrap_err()
            .starts_with("NST_CONV: "));
    }
}
