//! Shapes shared by the benchmarks: the distinct 3×3 convolutions of VGG-19 up to relu5_1,
//! from `nst_vgg::geometry` (the same shapes `nst` runs).

use nst_tensor::Conv2dParams;
use nst_vgg::{geometry, Layer};

/// `(name, shape)` of each distinct convolution shape up to relu5_1 for a `size`² input.
/// Consecutive layers of the same shape are benchmarked once, named like `conv3_x`.
pub fn vgg19_convs(size: usize) -> Vec<(String, Conv2dParams)> {
    let deepest: Layer = "relu5_1".parse().expect("a VGG-19 layer");
    let mut out: Vec<(String, Conv2dParams)> = Vec::new();
    for (layer, p) in geometry::conv_shapes(deepest, size, size) {
        match out.last_mut() {
            Some((name, last)) if *last == p => {
                let block = name.split('_').next().unwrap_or_default().to_string();
                *name = format!("{block}_x");
            }
            _ => out.push((layer.name().to_string(), p)),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn nine_distinct_shapes_with_stable_names() {
        let names: Vec<String> = super::vgg19_convs(64).into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1", "conv3_x", "conv4_1",
                "conv4_x", "conv5_1"
            ]
        );
    }
}
