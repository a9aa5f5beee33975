//! 2×2 pooling with stride 2 in floor mode (a trailing odd row or column is dropped).

/// The shape of a pooling layer's input, `x[N, C, H, W]` → `y[N, C, H/2, W/2]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool2dParams {
    /// Batch size times channels: pooling treats every plane alike.
    pub planes: usize,
    /// Input height.
    pub in_h: usize,
    /// Input width.
    pub in_w: usize,
}

impl Pool2dParams {
    /// Output height, `H / 2` rounded down.
    pub fn out_h(&self) -> usize {
        self.in_h / 2
    }
    /// Output width, `W / 2` rounded down.
    pub fn out_w(&self) -> usize {
        self.in_w / 2
    }
    /// Elements of the input.
    pub fn input_len(&self) -> usize {
        self.planes * self.in_h * self.in_w
    }
    /// Elements of the output.
    pub fn output_len(&self) -> usize {
        self.planes * self.out_h() * self.out_w()
    }
}
