//! Losses and their gradients against the PyTorch float64 reference, plus hand-computed cases.

use nst_loss::*;
use nst_tensor::{test_device, Device, Tensor};
use nst_testdata::{rel_err, rel_err_scalar, Reference};
use nst_vgg::{Layer, Pooling, Vgg19};

const STYLE_LAYERS: [&str; 5] = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"];

fn layers(names: &[&str]) -> Vec<Layer> {
    names.iter().map(|n| n.parse().unwrap()).collect()
}

fn style_grams_losses_and_gradients_match_reference(dev: &Device) {
    let r = Reference::load();
    let vgg = Vgg19::embedded(dev, Pooling::Max).unwrap();
    let style_feats = vgg
        .features(&r.tensor_on("style_rgb", dev), &layers(&STYLE_LAYERS))
        .unwrap();
    let targets: Vec<Tensor> = style_feats
        .iter()
        .map(|f| gram_hat(f).unwrap().detach())
        .collect();
    for (name, t) in STYLE_LAYERS.iter().zip(&targets) {
        let e = rel_err(
            &t.to_vec().unwrap(),
            r.values(&format!("gram_hat.style.{name}")),
        );
        assert!(e <= 1e-4, "Ĝ {name}: {e:.2e}");
    }
    for (i, name) in STYLE_LAYERS.iter().enumerate() {
        let g = r.tensor_on("generated_rgb", dev).to_variable();
        let f = vgg.features(&g, &layers(&[name])).unwrap();
        let loss = style_layer_loss(&f[0], &targets[i]).unwrap();
        let e = rel_err_scalar(
            loss.to_scalar().unwrap() as f64,
            r.scalar(&format!("loss.style.{name}")),
        );
        eprintln!("J_s {name}: {e:.3e}");
        assert!(e <= 1e-4, "J_s {name}: {e:.2e}");
        let grad = loss.backward().unwrap().get(&g).unwrap().to_vec().unwrap();
        let e = rel_err(&grad, r.values(&format!("grad.style.{name}")));
        eprintln!("grad style {name}: {e:.3e}");
        assert!(e <= 1e-3, "∂J_s/∂x {name}: {e:.2e}");
    }
}
test_device!(style_grams_losses_and_gradients_match_reference);

fn content_loss_and_gradient_match_reference(dev: &Device) {
    let r = Reference::load();
    let vgg = Vgg19::embedded(dev, Pooling::Max).unwrap();
    let l = layers(&["relu4_2"]);
    let target = vgg
        .features(&r.tensor_on("content_rgb", dev), &l)
        .unwrap()
        .remove(0);
    let g = r.tensor_on("generated_rgb", dev).to_variable();
    let loss = content_loss(&vgg.features(&g, &l).unwrap()[0], &target).unwrap();
    let e = rel_err_scalar(loss.to_scalar().unwrap() as f64, r.scalar("loss.content"));
    assert!(e <= 1e-4, "J_c: {e:.2e}");
    let grad = loss.backward().unwrap().get(&g).unwrap().to_vec().unwrap();
    let e = rel_err(&grad, r.values("grad.content"));
    eprintln!("grad content: {e:.3e}");
    assert!(e <= 1e-3, "∂J_c/∂x: {e:.2e}");
}
test_device!(content_loss_and_gradient_match_reference);

fn hand_computed_values(dev: &Device) {
    // Content: F_G = [1,2,3,4], F_C = 0, C·H·W = 4 → 30 / 16.
    let f = Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[1, 1, 2, 2], dev).unwrap();
    let zero = Tensor::zeros(&[1, 1, 2, 2], dev).unwrap();
    assert_eq!(
        content_loss(&f, &zero).unwrap().to_scalar().unwrap(),
        30.0 / 16.0
    );
    // Ĝ of one channel [1,2,3,4]: (1+4+9+16)/4 = 7.5; style loss to target 0 is 7.5²/4.
    assert_eq!(gram_hat(&f).unwrap().to_vec().unwrap(), vec![7.5]);
    let t0 = Tensor::zeros(&[1, 1], dev).unwrap();
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
        Tensor::full(2.0, &[1, 1], dev).unwrap(),
        Tensor::full(6.0, &[1, 1], dev).unwrap(),
    );
    assert_eq!(
        blend_grams(&[a, b], &[1.0, 3.0]).unwrap().to_vec().unwrap(),
        vec![5.0]
    );
}
test_device!(hand_computed_values);

fn style_loss_is_independent_of_style_image_size(dev: &Device) {
    // Tiling an image 2×2 leaves Ĝ unchanged (up to the border of the padding-free features).
    let base: Vec<f32> = (0..2 * 3 * 3).map(|i| (i as f32 * 0.7).sin()).collect();
    let f = Tensor::from_vec(base.clone(), &[1, 2, 3, 3], dev).unwrap();
    let mut tiled = vec![0.0; 2 * 6 * 6];
    for c in 0..2 {
        for y in 0..6 {
            for x in 0..6 {
                tiled[(c * 6 + y) * 6 + x] = base[(c * 3 + y % 3) * 3 + x % 3];
            }
        }
    }
    let big = Tensor::from_vec(tiled, &[1, 2, 6, 6], dev).unwrap();
    let e = rel_err(
        &gram_hat(&big).unwrap().to_vec().unwrap(),
        &gram_hat(&f).unwrap().to_vec().unwrap(),
    );
    assert!(e < 1e-6);
}
test_device!(style_loss_is_independent_of_style_image_size);

fn tv_gradient_matches_finite_differences(dev: &Device) {
    use rand::{rngs::StdRng, Rng, SeedableRng};
    let mut rng = StdRng::seed_from_u64(3);
    let data: Vec<f32> = (0..3 * 5 * 4)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect();
    let x = Tensor::variable(data.clone(), &[1, 3, 5, 4], dev).unwrap();
    let g = tv_loss(&x)
        .unwrap()
        .backward()
        .unwrap()
        .get(&x)
        .unwrap()
        .to_vec()
        .unwrap();
    let h = 1e-2f32;
    for i in 0..data.len() {
        let eval = |d: f32| {
            let mut v = data.clone();
            v[i] += d;
            tv_loss(&Tensor::from_vec(v, &[1, 3, 5, 4], dev).unwrap())
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
test_device!(tv_gradient_matches_finite_differences);

/// The total objective against the reference's separate terms: at the generated image, with
/// the content and style images as targets, its parts are J_c and Σ w_l·J_s^l, and the total
/// is α·J_c + β·Σ w_l·J_s^l + γ·TV.
fn objective_combines_the_reference_terms(dev: &Device) {
    let r = Reference::load();
    let vgg = Vgg19::embedded(dev, Pooling::Max).unwrap();
    let w_l = [0.1, 0.2, 0.4, 0.2, 0.1];
    let (alpha, beta, gamma) = (2.0f32, 1e-3f32, 0.5f32);
    let spec = LossSpec {
        content_layers: layers(&["relu4_2"]),
        style_layers: layers(&STYLE_LAYERS),
        weights: LossWeights {
            content: alpha,
            style: beta,
            tv: gamma,
            style_layers: w_l.to_vec(),
        },
    };
    let content = r.tensor_on("content_rgb", dev);
    let style = r.tensor_on("style_rgb", dev);
    let objective = Objective::new(&vgg, &content, &[style], &[1.0], spec).unwrap();
    let x = r.tensor_on("generated_rgb", dev);
    let v = objective.evaluate(&x).unwrap();
    let want_style: f64 = STYLE_LAYERS
        .iter()
        .zip(w_l)
        .map(|(n, w)| w as f64 * r.scalar(&format!("loss.style.{n}")))
        .sum();
    let want_tv = tv_loss(&x).unwrap().to_scalar().unwrap() as f64;
    assert!(rel_err_scalar(v.content, r.scalar("loss.content")) <= 1e-4);
    assert!(rel_err_scalar(v.style, want_style) <= 1e-4);
    assert_eq!(v.tv, want_tv);
    let want_total = alpha as f64 * v.content + beta as f64 * v.style + gamma as f64 * v.tv;
    assert!(rel_err_scalar(v.total, want_total) <= 1e-5);
    assert_eq!(v.grad.dims(), x.dims());
    assert!(v.grad.abs_max().unwrap() > 0.0);
}
test_device!(objective_combines_the_reference_terms);

/// Luminance-only transfer: a one-channel image is replicated to RGB inside the objective, so
/// its value equals that of the grey RGB image, and its gradient is the sum of the RGB
/// gradient's three channels.
fn objective_on_one_channel_images_replicates_to_rgb(dev: &Device) {
    let (h, w) = (24, 20);
    let y: Vec<f32> = (0..h * w)
        .map(|i| 128.0 + 60.0 * (i as f32 * 0.37).sin())
        .collect();
    let s: Vec<f32> = (0..h * w)
        .map(|i| 128.0 + 50.0 * (i as f32 * 0.11).cos())
        .collect();
    let grey = |v: &[f32]| [v, v, v].concat();
    let vgg = Vgg19::embedded(dev, Pooling::Max).unwrap();
    let spec = LossSpec {
        content_layers: layers(&["relu2_1"]),
        style_layers: layers(&["relu1_1", "relu2_1"]),
        weights: LossWeights {
            content: 1.0,
            style: 1e-2,
            tv: 0.0,
            style_layers: vec![0.5, 0.5],
        },
    };
    let value = |c: usize, content: Vec<f32>, style: Vec<f32>, x: Vec<f32>| {
        let t = |v: Vec<f32>| Tensor::from_vec(v, &[1, c, h, w], dev).unwrap();
        let objective = Objective::new(&vgg, &t(content), &[t(style)], &[1.0], spec.clone());
        objective.unwrap().evaluate(&t(x)).unwrap()
    };
    let x: Vec<f32> = y.iter().map(|v| 255.0 - v).collect();
    let one = value(1, y.clone(), s.clone(), x.clone());
    let three = value(3, grey(&y), grey(&s), grey(&x));
    assert!(
        rel_err_scalar(one.total, three.total) <= 1e-5,
        "{} vs {}",
        one.total,
        three.total
    );
    let g3 = three.grad.to_vec().unwrap();
    let summed: Vec<f32> = (0..h * w)
        .map(|i| g3[i] + g3[h * w + i] + g3[2 * h * w + i])
        .collect();
    assert!(rel_err(&one.grad.to_vec().unwrap(), &summed) <= 1e-5);
}
test_device!(objective_on_one_channel_images_replicates_to_rgb);

/// The lean memory mode's recomputation of relu1_1's style term (a checkpoint whose backward
/// runs conv1_1 again) gives the same J and ∂J/∂x as keeping the features, up to rounding:
/// on the reference images (RGB), and on a one-channel image (replicated to RGB before the
/// checkpoint).
fn objective_recomputing_relu1_1_matches_keeping_it(dev: &Device) {
    let r = Reference::load();
    let vgg = Vgg19::embedded(dev, Pooling::Max).unwrap();
    let spec = LossSpec {
        content_layers: layers(&["relu4_2"]),
        style_layers: layers(&STYLE_LAYERS),
        weights: LossWeights {
            content: 1.0,
            style: 1e-3,
            tv: 0.0,
            style_layers: vec![0.1, 0.2, 0.4, 0.2, 0.1],
        },
    };
    let compare = |content: &Tensor, style: &Tensor, x: &Tensor| {
        let objective = |recompute| {
            Objective::new(
                &vgg,
                content,
                std::slice::from_ref(style),
                &[1.0],
                spec.clone(),
            )
            .unwrap()
            .recomputing_first_layer(recompute)
        };
        let kept = objective(false).evaluate(x).unwrap();
        let recomputed = objective(true).evaluate(x).unwrap();
        assert!(kept.style > 0.0 && kept.grad.abs_max().unwrap() > 0.0);
        assert!(rel_err_scalar(recomputed.total, kept.total) <= 1e-6);
        assert!(rel_err_scalar(recomputed.style, kept.style) <= 1e-6);
        let (a, b) = (
            recomputed.grad.to_vec().unwrap(),
            kept.grad.to_vec().unwrap(),
        );
        assert!(rel_err(&a, &b) <= 1e-5, "gradient: {}", rel_err(&a, &b));
    };
    compare(
        &r.tensor_on("content_rgb", dev),
        &r.tensor_on("style_rgb", dev),
        &r.tensor_on("generated_rgb", dev),
    );
    let (h, w) = (40, 36);
    let grey = |s: f32| {
        let v = (0..h * w)
            .map(|i| 128.0 + 60.0 * (i as f32 * s).sin())
            .collect();
        Tensor::from_vec(v, &[1, 1, h, w], dev).unwrap()
    };
    compare(&grey(0.37), &grey(0.11), &grey(0.23));
}
test_device!(objective_recomputing_relu1_1_matches_keeping_it);

#[test]
fn objective_rejects_mismatched_specifications() {
    let vgg = Vgg19::embedded(&Device::Cpu, Pooling::Max).unwrap();
    let img = Tensor::full(100.0, &[1, 3, 16, 16], &Device::Cpu).unwrap();
    let spec = |style_layer_weights: Vec<f32>| LossSpec {
        content_layers: layers(&["relu2_1"]),
        style_layers: layers(&["relu1_1", "relu2_1"]),
        weights: LossWeights {
            content: 1.0,
            style: 1.0,
            tv: 0.0,
            style_layers: style_layer_weights,
        },
    };
    let err = Objective::new(
        &vgg,
        &img,
        std::slice::from_ref(&img),
        &[1.0],
        spec(vec![1.0]),
    )
    .err()
    .unwrap();
    assert_eq!(
        err.to_string(),
        "loss specification: 2 style layers but 1 style layer weights"
    );
    assert!(Objective::new(
        &vgg,
        &img,
        std::slice::from_ref(&img),
        &[1.0, 1.0],
        spec(vec![1.0, 1.0])
    )
    .is_err());
}

/// What a caller can get wrong is an error that says what, never a panic or a silent NaN.
#[test]
fn objective_refuses_bad_weights_small_images_and_other_sizes() {
    let dev = Device::Cpu;
    let vgg = Vgg19::embedded(&dev, Pooling::Max).unwrap();
    let img = |side: usize| Tensor::full(100.0, &[1, 3, side, side], &dev).unwrap();
    let build = |content: &Tensor, spec: LossSpec, blend: &[f32]| {
        let styles = vec![img(32); blend.len()];
        Objective::new(&vgg, content, &styles, blend, spec)
    };
    let message = |r: Result<Objective, ObjectiveError>| r.err().unwrap().to_string();

    let mut nan_style = LossSpec::default();
    nan_style.weights.style = f32::NAN;
    assert_eq!(
        message(build(&img(32), nan_style, &[1.0])),
        "loss specification: style weight β NaN is not a finite number ≥ 0"
    );
    let mut negative_layer = LossSpec::default();
    negative_layer.weights.style_layers[2] = -1.0;
    let err = message(build(&img(32), negative_layer, &[1.0]));
    assert!(err.contains("style layer weight -1 is not"), "{err}");
    assert_eq!(
        message(build(&img(32), LossSpec::default(), &[0.0, 0.0])),
        "loss specification: the blend weights are all 0"
    );

    // relu5_1 is past four poolings: 16 px a side at least.
    assert_eq!(
        message(build(&img(8), LossSpec::default(), &[1.0])),
        "a 8×8 image is too small for VGG-19 up to relu5_1, which needs at least 16 px a side"
    );
    let objective = build(&img(16), LossSpec::default(), &[1.0]).unwrap();
    let err = objective.evaluate(&img(24)).err().unwrap().to_string();
    assert!(
        err.contains("[1, 3, 24, 24] but the objective was built for [1, 3, 16, 16]"),
        "{err}"
    );
    assert!(objective.evaluate(&img(16)).unwrap().total.is_finite());

    // A target that is not a C×C matrix: an error (it was an index out of bounds).
    let features = Tensor::full(1.0, &[1, 4, 3, 3], &dev).unwrap();
    let scalar = Tensor::scalar(1.0, &dev).unwrap();
    assert!(style_layer_loss(&features, &scalar).is_err());
    let target = Tensor::full(1.0, &[4, 4], &dev).unwrap();
    assert!(style_layer_loss(&features, &target).is_ok());
    let targets = [target.clone(), target];
    let err = style_loss(std::slice::from_ref(&features), &targets, &[1.0]).unwrap_err();
    assert_eq!(
        err.to_string(),
        "style_loss: 1 features, 2 targets and 1 weights: one of each per layer, at least one"
    );
    let err = gram_hat(&Tensor::full(1.0, &[4, 3, 3], &dev).unwrap()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "gram_hat: expects features [N, C, H, W], got [4, 3, 3]"
    );
}

/// Images the objective cannot take are refused when it is built, in words that say what is
/// wrong (not a convolution's shape error, nor a panic), whole or tiled; and `evaluate`
/// records its gradient even inside `no_grad`.
#[test]
fn objective_refuses_images_it_cannot_take() {
    let dev = Device::Cpu;
    let vgg = Vgg19::embedded(&dev, Pooling::Max).unwrap();
    let image = |shape: &[usize]| Tensor::full(100.0, shape, &dev).unwrap();
    let spec = || LossSpec {
        content_layers: layers(&["relu2_1"]),
        style_layers: layers(&["relu1_1"]),
        weights: LossWeights {
            content: 1.0,
            style: 1.0,
            tv: 0.0,
            style_layers: vec![1.0],
        },
    };
    let rgb = image(&[1, 3, 16, 16]);
    let refused = |content: &Tensor, styles: &[Tensor], want: &str| {
        let blend = vec![1.0; styles.len()];
        for tiled in [false, true] {
            let built = if tiled {
                Objective::new_tiled(&vgg, content, styles, &blend, spec(), 16)
            } else {
                Objective::new(&vgg, content, styles, &blend, spec())
            };
            let err = built.err().expect("refused").to_string();
            assert!(err.contains(want), "tiled {tiled}: {err}");
        }
    };
    let rgb_style = std::slice::from_ref(&rgb);
    refused(
        &image(&[3, 16, 16]),
        rgb_style,
        "must be [1, C, H, W] with C = 1 or 3",
    );
    refused(&image(&[1, 16, 16, 3]), rgb_style, "(channels last?");
    refused(&image(&[2, 3, 16, 16]), rgb_style, "(one image at a time)");
    refused(&image(&[1, 4, 16, 16]), rgb_style, "got [1, 4, 16, 16]");
    refused(
        &rgb,
        &[image(&[1, 1, 16, 16])],
        "style image 1 has 1 channels",
    );
    refused(&rgb, &[], "at least one style image is needed");
    let objective = Objective::new(&vgg, &rgb, rgb_style, &[1.0], spec()).unwrap();
    let err = objective.evaluate(&image(&[1, 3, 16, 24])).err().unwrap();
    assert!(
        err.to_string().starts_with("the image is [1, 3, 16, 24]"),
        "{err}"
    );
    let inside = nst_tensor::no_grad(|| objective.evaluate(&image(&[1, 3, 16, 16])));
    assert_eq!(inside.unwrap().grad.dims(), [1, 3, 16, 16]);
}
