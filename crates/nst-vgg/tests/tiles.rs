//! Tiles give the whole image's features: every tile's core, cut out of the tile's features,
//! equals the same rectangle of the features of the whole image (up to summation order),
//! with inner tile edges well inside the image.

use nst_tensor::{no_grad, test_device, Device, Tensor};
use nst_vgg::{tiles, Layer, Pooling, Vgg19};

fn layers(names: &[&str]) -> Vec<Layer> {
    names.iter().map(|n| n.parse().unwrap()).collect()
}

/// A smooth picture with detail (0..255), so features vary everywhere.
fn picture(h: usize, w: usize, dev: &Device) -> Tensor {
    let data = (0..3 * h * w)
        .map(|i| {
            let (c, y, x) = (i / (h * w), (i / w) % h, i % w);
            let v = ((x as f32 * 0.13 + c as f32).sin() * (y as f32 * 0.07).cos() + 1.0) * 120.0;
            v + ((x * 7 + y * 13 + c * 3) % 11) as f32
        })
        .collect();
    Tensor::from_vec(data, &[1, 3, h, w], dev).unwrap()
}

fn max_abs(v: &[f32]) -> f32 {
    v.iter().fold(0.0, |m, x| m.max(x.abs()))
}

fn cores_match_the_whole(
    dev: &Device,
    pooling: Pooling,
    names: &[&str],
    (h, w): (usize, usize),
    core: usize,
) {
    let vgg = Vgg19::embedded(dev, pooling).unwrap();
    let layers = layers(names);
    let deepest = *layers.iter().max().unwrap();
    let image = picture(h, w, dev);
    no_grad(|| {
        let whole = vgg.features(&image, &layers).unwrap();
        let tiles = tiles::tiles(deepest, h, w, core).unwrap();
        assert!(tiles.len() >= 4, "{} tiles", tiles.len());
        let inner = tiles
            .iter()
            .filter(|t| t.input.top > 0 && t.input.left > 0)
            .count();
        assert!(inner > 0, "no tile has inner edges on two sides");
        for t in &tiles {
            let r = t.input;
            let part = image.crop(r.top, r.left, r.height, r.width).unwrap();
            let feats = vgg.features(&part, &layers).unwrap();
            for ((l, f), full) in layers.iter().zip(&feats).zip(&whole) {
                let c = t.core_features(*l);
                let d = l.min_input_side();
                let got = f
                    .crop(c.top, c.left, c.height, c.width)
                    .unwrap()
                    .to_vec()
                    .unwrap();
                let want = full
                    .crop(c.top + r.top / d, c.left + r.left / d, c.height, c.width)
                    .unwrap()
                    .to_vec()
                    .unwrap();
                let diff: Vec<f32> = got.iter().zip(&want).map(|(a, b)| a - b).collect();
                let scale = max_abs(&want).max(1e-3);
                assert!(
                    max_abs(&diff) <= 2e-5 * scale,
                    "{l} of tile {t:?}: off by {} of {scale}",
                    max_abs(&diff)
                );
            }
        }
    });
}

/// The default layers (to relu5_1: margin 80) on an image with 3 × 3 tiles whose middle one
/// has inner edges all round. On the CPU: the test below runs the same code on every device,
/// at a size the emulator runs in seconds.
#[test]
fn tiles_give_the_whole_images_features() {
    let names = [
        "relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu4_2", "relu5_1",
    ];
    cores_match_the_whole(&Device::Cpu, Pooling::Max, &names, (232, 264), 80);
}

/// Average pooling, and a shallower deepest layer (relu3_1: stride 4, margin 20).
fn shallower_tiles_with_average_pooling(dev: &Device) {
    cores_match_the_whole(dev, Pooling::Avg, &["relu1_1", "relu3_1"], (90, 123), 24);
}
test_device!(shallower_tiles_with_average_pooling);
