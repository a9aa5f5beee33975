//! Shapes shared by the benchmarks: the 3×3 convolutions of VGG-19 up to relu5_1.

use nst_cpu::Conv2dParams;

/// (name, C_in, C_out, downsampling factor) of each distinct convolution shape.
pub const VGG19_CONVS: [(&str, usize, usize, usize); 9] = [
    ("conv1_1", 3, 64, 1),
    ("conv1_2", 64, 64, 1),
    ("conv2_1", 64, 128, 2),
    ("conv2_2", 128, 128, 2),
    ("conv3_1", 128, 256, 4),
    ("conv3_x", 256, 256, 4),
    ("conv4_1", 256, 512, 8),
    ("conv4_x", 512, 512, 8),
    ("conv5_1", 512, 512, 16),
];

/// The convolution shape of a VGG-19 layer for a square input of side `size`.
pub fn vgg_conv(size: usize, cin: usize, cout: usize, down: usize) -> Conv2dParams {
    Conv2dParams {
        batch: 1,
        in_channels: cin,
        in_h: size / down,
        in_w: size / down,
        out_channels: cout,
        kernel_h: 3,
        kernel_w: 3,
        stride: 1,
        pad: 1,
    }
}
