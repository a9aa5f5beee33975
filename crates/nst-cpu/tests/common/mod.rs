//! Shared by the test binaries of this crate.

use nst_cpu::Conv2dParams;

/// A 3×3, stride-1, padding-1 convolution (the shape Winograd takes).
pub fn conv3x3(batch: usize, cin: usize, h: usize, w: usize, cout: usize) -> Conv2dParams {
    Conv2dParams::same_3x3(batch, cin, h, w, cout)
}
