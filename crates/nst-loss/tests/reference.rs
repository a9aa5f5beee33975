//! Losses and their gradients against the PyTorch float64 reference, plus hand-computed cases.

use nst_loss::*;
use nst_tensor::{Device, Tensor};
use nst_testdata::{rel_err, rel_err_scalar, Reference};
use nst_vgg::{Layer, Pooling, Vgg19};

const STYLE_LAYERS: [&str; 5] = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"];

fn layers(names: &[&str]) -> Vec<Layer> {
    names.iter().map(|n| n.parse().unwrap()).collect()
}

#[test]
fn style_grams_losses_and_gradients_match_reference() {
    let r = Reference::load();
    let vgg = Vgg19::embedded(&Device::Cpu, Pooling::Max).unwrap();
    let style_feats = vgg
        .features(&r.tensor("style_rgb"), &layers(&STYLE_LAYERS))
        .unwrap();
    let targets: Vec<Tensor> = style_feats
        .iter()
        .map(|f| gram_hat(f).unwrap().detach())
        .collect();
    for (name, t) in STYLE_LAYERS.iter().zip(&targets) {
        let e = rel_err(
            &t.to_vec(),
            &r.tensor(&format!("gram_hat.style.{name}")).to_vec(),
        );
        assert!(e <= 1e-4, "Ĝ {name}: {e:.2e}");
    }
    for (i, name) in STYLE_LAYERS.iter().enumerate() {
        let g = r.tensor("generated_rgb").to_variable();
        let f = vgg.features(&g, &layers(&[name])).unwrap();
        let loss = style_layer_loss(&f[0], &targets[i]).unwrap();
        let e = rel_err_scalar(
            loss.to_scalar().unwrap() as f64,
            r.scalar(&format!("loss.style.{name}")),
        );
        eprintln!("J_s {name}: {e:.3e}");
        assert!(e <= 1e-4, "J_s {name}: {e:.2e}");
        let grad = loss.backward().unwrap().get(&g).unwrap().to_vec();
        let e = rel_err(&grad, &r.tensor(&format!("grad.style.{name}")).to_vec());
        eprintln!("grad style {name}: {e:.3e}");
        assert!(e <= 1e-3, "∂J_s/∂x {name}: {e:.2e}");
    }
}

#[test]
fn content_loss_and_gradient_match_reference() {
    let r = Reference::load();
    let vgg = Vgg19::embedded(&Device::Cpu, Pooling::Max).unwrap();
    let l = layers(&["relu4_2"]);
    let target = vgg
        .features(&r.tensor("content_rgb"), &l)
        .unwrap()
        .remove(0);
    let g = r.tensor("generated_rgb").to_variable();
    let loss = content_loss(&vgg.features(&g, &l).unwrap()[0], &target).unwrap();
    let e = rel_err_scalar(loss.to_scalar().unwrap() as f64, r.scalar("loss.content"));
    assert!(e <= 1e-4, "J_c: {e:.2e}");
    let grad = loss.backward().unwrap().get(&g).unwrap().to_vec();
    let e = rel_err(&grad, &r.tensor("grad.content").to_vec());
    eprintln!("grad content: {e:.3e}");
    assert!(e <= 1e-3, "∂J_c/∂x: {e:.2e}");
}

#[test]
fn hand_computed_values() {
    let dev = Device::Cpu;
    // Content: F_G = [1,2,3,4], F_C = 0, C·H·W = 4 → 30 / 16.
    let f = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[1, 1, 2, 2], &dev).unwrap();
    let zero = Tensor::zeros(&[1, 1, 2, 2], &dev);
    assert_eq!(
        content_loss(&f, &zero).unwrap().to_scalar().unwrap(),
        30.0 / 16.0
    );
    // Ĝ of one channel [1,2,3,4]: (1+4+9+16)/4 = 7.5; style loss to target 0 is 7.5²/4.
    assert_eq!(gram_hat(&f).unwrap().to_vec(), vec![7.5]);
    let t0 = Tensor::zeros(&[1, 1], &dev);
    assert_eq!(
        style_layer_loss(&f, &t0).unwrap().to_scalar().unwrap(),
        7.5 * 7.5 / 4.0
    );
    // Weighted sum of two layers.
    let s = style_loss(&[f.clone(), f.clone()], &[t0.clone(), t0], &[0.5, 2.0]).unwrap();
    assert_eq!(s.to_scalar().unwrap(), 2.5 * 7.5 * 7.5 / 4.0);
    // TV of [[1,2],[3,4]]: horizontal (1² + 1²), vertical (2² + 2²) → 10 / 4.
    assert_eq!(tv_loss(&f).unwrap().to_scalar().unwrap(), 10.0 / 4.0);
    // Blending: (1·[2] + 3·[6]) / 4 = [5].
    let (a, b) = (
        Tensor::full(2.0, &[1, 1], &dev),
        Tensor::full(6.0, &[1, 1], &dev),
    );
    assert_eq!(
        blend_grams(&[a, b], &[1.0, 3.0]).unwrap().to_vec(),
        vec![5.0]
    );
}

#[test]
fn style_loss_is_independent_of_style_image_size() {
    // Tiling an image 2×2 leaves Ĝ unchanged (up to the border of the padding-free features).
    let dev = Device::Cpu;
    let base: Vec<f32> = (0..2 * 3 * 3).map(|i| (i as f32 * 0.7).sin()).collect();
    let f = Tensor::from_vec(base.clone(), &[1, 2, 3, 3], &dev).unwrap();
    let mut tiled = vec![0.0; 2 * 6 * 6];
    for c in 0..2 {
        for y in 0..6 {
            for x in 0..6 {
                tiled[(c * 6 + y) * 6 + x] = base[(c * 3 + y % 3) * 3 + x % 3];
            }
        }
    }
    let big = Tensor::from_vec(tiled, &[1, 2, 6, 6], &dev).unwrap();
    let e = rel_err(
        &gram_hat(&big).unwrap().to_vec(),
        &gram_hat(&f).unwrap().to_vec(),
    );
    assert!(e < 1e-6);
}

#[test]
fn tv_gradient_matches_finite_differences() {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(3);
    let data: Vec<f32> = (0..3 * 5 * 4)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let x = Tensor::variable(data.clone(), &[1, 3, 5, 4], &Device::Cpu).unwrap();
    let g = tv_loss(&x)
        .unwrap()
        .backward()
        .unwrap()
        .get(&x)
        .unwrap()
        .to_vec();
    let h = 1e-2f32;
    for i in 0..data.len() {
        let eval = |d: f32| {
            let mut v = data.clone();
            v[i] += d;
            tv_loss(&Tensor::from_vec(v, &[1, 3, 5, 4], &Device::Cpu).unwrap())
                .unwrap()
                .to_scalar()
                .unwrap() as f64
        };
        let fd = (eval(h) - eval(-h)) / (2.0 * h as f64);
        assert!(
            (fd - g[i] as f64).abs() < 1e-3 * (1.0 + fd.abs()),
            "{i}: fd {fd} vs {}",
            g[i]
        );
    }
}
