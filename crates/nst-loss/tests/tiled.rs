//! A tiled objective gives the whole image's J, its terms and ∂J/∂x, up to summation order:
//! on images cut into several tiles with inner edges, RGB and one-channel, with TV, two style
//! images (one larger than the content) and several content layers.

use nst_loss::*;
use nst_tensor::{test_device, Device, Tensor};
use nst_testdata::{rel_err, rel_err_scalar};
use nst_vgg::{Layer, Pooling, Vgg19};

fn layers(names: &[&str]) -> Vec<Layer> {
    names.iter().map(|n| n.parse().unwrap()).collect()
}

/// A picture with smooth shapes and fine detail in 0..255.
fn picture(c: usize, (h, w): (usize, usize), seed: f32, dev: &Device) -> Tensor {
    let data = (0..c * h * w)
        .map(|i| {
            let (ch, y, x) = (i / (h * w), (i / w) % h, i % w);
            let (x, y) = (x as f32, y as f32);
            let smooth = ((x * 0.05 * seed + ch as f32).sin() * (y * 0.04).cos() + 1.0) * 100.0;
            smooth + ((x * seed + y * 3.7).sin() * 25.0) + 25.0
        })
        .collect();
    Tensor::from_vec(data, &[1, c, h, w], dev).unwrap()
}

fn spec(content: &[&str], style: &[&str], tv: f32) -> LossSpec {
    LossSpec {
        content_layers: layers(content),
        style_layers: layers(style),
        weights: LossWeights {
            content: 1.0,
            style: 1e-2,
            tv,
            style_layers: (1..=style.len()).map(|i| i as f32 / 10.0).collect(),
        },
    }
}

/// Whole and tiled, for the given images: every term within `tol` relative.
fn agree(
    vgg: &Vgg19,
    (content, styles, x): (&Tensor, &[Tensor], &Tensor),
    spec: LossSpec,
    core_side: usize,
    tol: f64,
) {
    let blend: Vec<f32> = (1..=styles.len()).map(|i| i as f32).collect();
    let whole = Objective::new(vgg, content, styles, &blend, spec.clone()).unwrap();
    let tiled = Objective::new_tiled(vgg, content, styles, &blend, spec.clone(), core_side);
    let (a, b) = (
        whole.evaluate(x).unwrap(),
        tiled.unwrap().evaluate(x).unwrap(),
    );
    assert!(a.content > 0.0 && a.style > 0.0, "a vacuous comparison");
    for (what, got, want) in [
        ("J", b.total, a.total),
        ("J_c", b.content, a.content),
        ("J_s", b.style, a.style),
        ("TV", b.tv, a.tv),
    ] {
        let e = rel_err_scalar(got, want);
        assert!(e <= tol, "{what}: {got} tiled, {want} whole ({e:.1e})");
    }
    let (g, want) = (b.grad.to_vec().unwrap(), a.grad.to_vec().unwrap());
    let e = rel_err(&g, &want);
    assert!(e <= tol, "∂J/∂x: relative error {e:.1e}");
}

/// Layers to relu3_1 (stride 4, margin 20): 4 × 5 tiles at 88 × 100, on every device.
fn tiled_objective_matches_the_whole_one(dev: &Device) {
    let vgg = Vgg19::embedded(dev, Pooling::Max).unwrap();
    let size = (88, 100);
    let (content, x) = (picture(3, size, 1.0, dev), picture(3, size, 1.7, dev));
    let styles = [
        picture(3, (90, 70), 2.3, dev),
        picture(3, (160, 170), 0.6, dev),
    ];
    let spec = spec(
        &["relu2_1", "relu3_1"],
        &["relu1_1", "relu2_1", "relu3_1"],
        0.5,
    );
    agree(&vgg, (&content, &styles, &x), spec.clone(), 24, 1e-5);
    // One channel, replicated to RGB inside the objective, tile by tile.
    let (content, x) = (picture(1, size, 1.0, dev), picture(1, size, 1.7, dev));
    let style = [picture(1, (90, 70), 2.3, dev)];
    agree(&vgg, (&content, &style, &x), spec, 24, 1e-5);
}
test_device!(tiled_objective_matches_the_whole_one);

/// nst's default layers (to relu5_1: stride 16, margin 80) at 250 × 290 (not multiples of
/// 16: the poolings floor at the far edges), with TV: 3 × 3 tiles, the middle one with inner
/// edges all round. On the CPU (the emulator's share is the test above).
#[test]
fn tiled_objective_with_the_default_layers_matches_the_whole_one() {
    let dev = Device::Cpu;
    let vgg = Vgg19::embedded(&dev, Pooling::Max).unwrap();
    let size = (250, 290);
    let (content, x) = (picture(3, size, 1.0, &dev), picture(3, size, 1.7, &dev));
    let styles = [picture(3, (200, 180), 2.3, &dev)];
    let mut spec = LossSpec::default();
    spec.weights.tv = 0.5;
    agree(&vgg, (&content, &styles, &x), spec, 96, 1e-5);
}
