//! Central finite-difference checks of every differentiable op and of a small composed network.
//!
//! Each check projects the op's output onto a fixed random direction r (L = Σ r ⊙ out), so all
//! output elements contribute, then compares ∂L/∂input from `backward` with
//! (L(x + h·eᵢ) − L(x − h·eᵢ)) / 2h, where L is accumulated in f64 from the f32 outputs.

use nst_tensor::{no_grad, test_device, Conv2dOptions, ConvAlgorithm, Device, Tensor};
use rand::{rngs::StdRng, seq::SliceRandom, Rng, SeedableRng};

struct Input {
    data: Vec<f32>,
    shape: Vec<usize>,
}

fn uniform(rng: &mut StdRng, shape: &[usize]) -> Input {
    let n = shape.iter().product();
    Input {
        data: (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
        shape: shape.to_vec(),
    }
}

/// Values with |x| ≥ 0.1, so a step of 1e-2 never crosses ReLU's kink.
fn away_from_zero(rng: &mut StdRng, shape: &[usize]) -> Input {
    let mut i = uniform(rng, shape);
    i.data
        .iter_mut()
        .for_each(|v| *v = v.signum() * (0.1 + 0.9 * v.abs()));
    i
}

/// Distinct values spaced 2/n apart, shuffled, so a small step never changes a max.
fn distinct(rng: &mut StdRng, shape: &[usize]) -> Input {
    let n: usize = shape.iter().product();
    let mut data: Vec<f32> = (0..n).map(|i| -1.0 + 2.0 * i as f32 / n as f32).collect();
    data.shuffle(rng);
    Input {
        data,
        shape: shape.to_vec(),
    }
}

fn gradcheck(dev: &Device, name: &str, inputs: &[Input], h: f32, f: impl Fn(&[Tensor]) -> Tensor) {
    let vars: Vec<Tensor> = inputs
        .iter()
        .map(|i| Tensor::variable(i.data.clone(), &i.shape, dev).unwrap())
        .collect();
    let out = f(&vars);
    let mut rng = StdRng::seed_from_u64(99);
    let r: Vec<f32> = (0..out.elem_count())
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect();
    let r_t = Tensor::from_vec(r.clone(), out.dims(), dev).unwrap();
    let grads = out.mul(&r_t).unwrap().sum().unwrap().backward().unwrap();

    let loss_at = |k: usize, data: Vec<f32>| -> f64 {
        no_grad(|| {
            let ts: Vec<Tensor> = inputs
                .iter()
                .enumerate()
                .map(|(j, inp)| {
                    Tensor::from_vec(
                        if j == k {
                            data.clone()
                        } else {
                            inp.data.clone()
                        },
                        &inp.shape,
                        dev,
                    )
                    .unwrap()
                })
                .collect();
            f(&ts)
                .to_vec()
                .unwrap()
                .iter()
                .zip(&r)
                .map(|(&o, &r)| o as f64 * r as f64)
                .sum()
        })
    };
    for (k, (inp, var)) in inputs.iter().zip(&vars).enumerate() {
        let analytic = grads
            .get(var)
            .unwrap_or_else(|| panic!("{name}: no gradient for input {k}"))
            .to_vec()
            .unwrap();
        let mut numeric = vec![0.0f64; inp.data.len()];
        for i in 0..inp.data.len() {
            let (mut plus, mut minus) = (inp.data.clone(), inp.data.clone());
            plus[i] += h;
            minus[i] -= h;
            numeric[i] = (loss_at(k, plus) - loss_at(k, minus)) / (2.0 * h as f64);
        }
        let err: f64 = analytic
            .iter()
            .zip(&numeric)
            .map(|(&a, &n)| (a as f64 - n).powi(2))
            .sum::<f64>()
            .sqrt();
        let norm: f64 = numeric.iter().map(|n| n * n).sum::<f64>().sqrt();
        assert!(
            norm > 1e-6,
            "{name}: input {k} has a zero gradient; the check would be vacuous"
        );
        assert!(
            err / norm <= 1e-3,
            "{name}: input {k} relative error {:.2e}",
            err / norm
        );
    }
}

fn conv2d_gradients(dev: &Device) {
    let mut rng = StdRng::seed_from_u64(1);
    for (x, w, stride, pad) in [
        ([1, 3, 5, 6], [4, 3, 3, 3], 1, 1),
        ([2, 2, 4, 3], [3, 2, 3, 3], 2, 1),
        ([1, 3, 1, 1], [2, 3, 3, 3], 1, 1),
        ([1, 2, 4, 4], [2, 2, 1, 2], 1, 0),
    ] {
        let inputs = [
            uniform(&mut rng, &x),
            uniform(&mut rng, &w),
            uniform(&mut rng, &[w[0]]),
        ];
        gradcheck(dev, "conv2d", &inputs, 1e-2, |t| {
            t[0].conv2d(&t[1], Some(&t[2]), stride, pad).unwrap()
        });
    }
}
test_device!(conv2d_gradients);

/// The fused conv + ReLU against conv followed by ReLU (itself checked by finite differences
/// above): same output and same gradients for x, w and b, on the im2col path (3 input
/// channels) and the Winograd path (16).
fn fused_conv_relu_matches_conv_then_relu(dev: &Device) {
    let mut rng = StdRng::seed_from_u64(7);
    for (x, w) in [
        ([1, 3, 6, 7], [5, 3, 3, 3]),
        ([1, 16, 9, 10], [8, 16, 3, 3]),
    ] {
        let inputs = [
            uniform(&mut rng, &x),
            uniform(&mut rng, &w),
            uniform(&mut rng, &[w[0]]),
        ];
        let run = |fused: bool| {
            let t: Vec<Tensor> = inputs
                .iter()
                .map(|i| Tensor::variable(i.data.clone(), &i.shape, dev).unwrap())
                .collect();
            let y = if fused {
                t[0].conv2d_relu(&t[1], Some(&t[2]), 1, 1).unwrap()
            } else {
                t[0].conv2d(&t[1], Some(&t[2]), 1, 1)
                    .unwrap()
                    .relu()
                    .unwrap()
            };
            let g = y.square().unwrap().sum().unwrap().backward().unwrap();
            let mut v = vec![y.to_vec().unwrap()];
            v.extend(t.iter().map(|t| g.get(t).unwrap().to_vec().unwrap()));
            v
        };
        let (fused, plain) = (run(true), run(false));
        assert!(fused[0].contains(&0.0) && fused[0].iter().any(|&v| v > 0.0));
        for (k, (a, b)) in fused.iter().zip(&plain).enumerate() {
            let err = a
                .iter()
                .zip(b)
                .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
            let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(err <= 1e-5 * scale, "{x:?}: part {k} differs by {err:e}");
        }
    }
}
test_device!(fused_conv_relu_matches_conv_then_relu);

fn relu_gradient(dev: &Device) {
    let mut rng = StdRng::seed_from_u64(2);
    gradcheck(
        dev,
        "relu",
        &[away_from_zero(&mut rng, &[2, 3, 4, 5])],
        1e-2,
        |t| t[0].relu().unwrap(),
    );
}
test_device!(relu_gradient);

fn pooling_gradients(dev: &Device) {
    let mut rng = StdRng::seed_from_u64(3);
    for shape in [[1, 3, 4, 4], [2, 2, 5, 7], [1, 1, 2, 3]] {
        gradcheck(
            dev,
            "max_pool2d",
            &[distinct(&mut rng, &shape)],
            1e-3,
            |t| t[0].max_pool2d().unwrap(),
        );
        gradcheck(dev, "avg_pool2d", &[uniform(&mut rng, &shape)], 1e-2, |t| {
            t[0].avg_pool2d().unwrap()
        });
    }
}
test_device!(pooling_gradients);

fn crop_gradients(dev: &Device) {
    let mut rng = StdRng::seed_from_u64(31);
    gradcheck(
        dev,
        "crop",
        &[uniform(&mut rng, &[2, 3, 6, 7])],
        1e-2,
        |t| t[0].crop(1, 2, 4, 3).unwrap(),
    );
    // Of a convolution's output, which an NHWC device stores channels last.
    let (x, w) = (
        uniform(&mut rng, &[1, 8, 6, 6]),
        uniform(&mut rng, &[8, 8, 3, 3]),
    );
    gradcheck(dev, "conv2d then crop", &[x, w], 1e-2, |t| {
        t[0].conv2d(&t[1], None, 1, 1)
            .unwrap()
            .crop(2, 1, 3, 4)
            .unwrap()
    });
}
test_device!(crop_gradients);

/// Crops and pasted windows against values written out by hand.
fn windows_hold_what_was_cut(dev: &Device) {
    let x = Tensor::from_vec((0..24).map(|v| v as f32).collect(), &[1, 2, 3, 4], dev).unwrap();
    let tile = x.crop(1, 2, 2, 2).unwrap();
    assert_eq!(tile.dims(), [1, 2, 2, 2]);
    assert_eq!(
        tile.to_vec().unwrap(),
        [6.0, 7.0, 10.0, 11.0, 18.0, 19.0, 22.0, 23.0]
    );
    let sum = Tensor::full(1.0, &[1, 2, 3, 4], dev)
        .unwrap()
        .add_window(&tile, 0, 1)
        .unwrap();
    let mut want = vec![1.0; 24];
    for (i, v) in [(1, 6.0), (2, 7.0), (5, 10.0), (6, 11.0)] {
        want[i] += v;
        want[12 + i] += v + 12.0;
    }
    assert_eq!(sum.to_vec().unwrap(), want);
    // A window past the edge, a patch of other channels and a variable are refused.
    assert!(x
        .crop(2, 0, 2, 4)
        .unwrap_err()
        .to_string()
        .contains("not inside"));
    assert!(x.clone().add_window(&tile, 0, 3).is_err());
    let other_channels = Tensor::zeros(&[1, 1, 2, 2], dev).unwrap();
    assert!(x.clone().add_window(&other_channels, 0, 0).is_err());
    let variable = x.to_variable();
    assert!(variable.clone().add_window(&tile, 0, 0).is_err());
    assert!(no_grad(|| variable.add_window(&tile, 0, 0)).is_ok());
}
test_device!(windows_hold_what_was_cut);

fn matmul_transpose_reshape_gradients(dev: &Device) {
    let mut rng = StdRng::seed_from_u64(4);
    let inputs = [uniform(&mut rng, &[3, 5]), uniform(&mut rng, &[5, 4])];
    gradcheck(dev, "matmul", &inputs, 1e-2, |t| {
        t[0].matmul(&t[1]).unwrap()
    });
    gradcheck(dev, "transpose", &[uniform(&mut rng, &[3, 7])], 1e-2, |t| {
        t[0].transpose().unwrap()
    });
    gradcheck(
        dev,
        "reshape",
        &[uniform(&mut rng, &[2, 3, 4])],
        1e-2,
        |t| t[0].reshape(&[6, 4]).unwrap().transpose().unwrap(),
    );
}
test_device!(matmul_transpose_reshape_gradients);

fn gram_gradient(dev: &Device) {
    let mut rng = StdRng::seed_from_u64(5);
    gradcheck(
        dev,
        "gram 4-D",
        &[uniform(&mut rng, &[2, 3, 4, 5])],
        1e-2,
        |t| t[0].gram(1.0 / 20.0).unwrap(),
    );
    gradcheck(dev, "gram 2-D", &[uniform(&mut rng, &[4, 9])], 1e-2, |t| {
        t[0].gram(0.5).unwrap()
    });
}
test_device!(gram_gradient);

fn elementwise_and_reduction_gradients(dev: &Device) {
    let mut rng = StdRng::seed_from_u64(6);
    let pair = [uniform(&mut rng, &[3, 4]), uniform(&mut rng, &[3, 4])];
    gradcheck(dev, "add", &pair, 1e-2, |t| t[0].add(&t[1]).unwrap());
    gradcheck(dev, "sub", &pair, 1e-2, |t| t[0].sub(&t[1]).unwrap());
    gradcheck(dev, "mul", &pair, 1e-2, |t| t[0].mul(&t[1]).unwrap());
    gradcheck(dev, "scale", &pair[..1], 1e-2, |t| {
        t[0].scale(-2.5).unwrap()
    });
    gradcheck(dev, "square", &pair[..1], 1e-2, |t| t[0].square().unwrap());
    gradcheck(dev, "sum", &pair[..1], 1e-2, |t| t[0].sum().unwrap());
    gradcheck(dev, "mean", &pair[..1], 1e-2, |t| t[0].mean().unwrap());
    // The same tensor used twice: gradients from both uses must accumulate.
    gradcheck(dev, "reuse", &pair[..1], 1e-2, |t| {
        t[0].mul(&t[0]).unwrap().add(&t[0]).unwrap()
    });
}
test_device!(elementwise_and_reduction_gradients);

fn squared_distance_gradients(dev: &Device) {
    let mut rng = StdRng::seed_from_u64(12);
    let pair = [uniform(&mut rng, &[3, 4]), uniform(&mut rng, &[3, 4])];
    // Both operands variables (the caller holds them: the gradient goes to a copy), then a
    // computed operand whose record is its last holder (the gradient is written over it).
    gradcheck(dev, "squared_distance", &pair, 1e-2, |t| {
        t[0].squared_distance(&t[1]).unwrap()
    });
    gradcheck(dev, "squared_distance of a product", &pair, 1e-2, |t| {
        t[0].mul(&t[1]).unwrap().squared_distance(&t[1]).unwrap()
    });
    let mismatched = Tensor::from_vec(vec![0.0; 4], &[4], dev).unwrap();
    let a = Tensor::from_vec(vec![0.0; 4], &[2, 2], dev).unwrap();
    assert!(
        a.squared_distance(&mismatched).is_err(),
        "shapes must match"
    );
}
test_device!(squared_distance_gradients);

/// `squared_distance` replaced `sub`, `square` and `sum` in the losses: the same bits, value
/// and gradients, on every device (both compute each term in f32 and sum in f64).
fn squared_distance_matches_the_chain_it_replaces(dev: &Device) {
    let mut rng = StdRng::seed_from_u64(13);
    let n = 70_001; // several of nst-cpu's parallel chunks, and a partial one
    let x = uniform(&mut rng, &[n]).data;
    let target = uniform(&mut rng, &[n]).data;
    let run = |fused: bool| {
        let v = Tensor::variable(x.clone(), &[n], dev).unwrap();
        let t = Tensor::variable(target.clone(), &[n], dev).unwrap();
        // A computed operand, as features are: the fused op's gradient goes over it.
        let a = v.scale(0.5).unwrap();
        let d = if fused {
            a.squared_distance(&t).unwrap()
        } else {
            a.sub(&t).unwrap().square().unwrap().sum().unwrap()
        };
        drop(a);
        let loss = d.scale(0.37).unwrap();
        let mut grads = loss.backward().unwrap();
        (
            loss.to_vec().unwrap(),
            grads.remove(&v).unwrap().to_vec().unwrap(),
            grads.remove(&t).unwrap().to_vec().unwrap(),
        )
    };
    let same_bits = |got: &[f32], want: &[f32], what: &str| {
        assert_eq!(got.len(), want.len(), "{what}: length");
        if let Some(i) = (0..got.len()).find(|&i| got[i].to_bits() != want[i].to_bits()) {
            panic!("{what}: element {i} is {} against {}", got[i], want[i]);
        }
    };
    let (fused, chain) = (run(true), run(false));
    same_bits(&fused.0, &chain.0, "value");
    same_bits(&fused.1, &chain.1, "gradient of the first operand");
    same_bits(&fused.2, &chain.2, "gradient of the second operand");
}
test_device!(squared_distance_matches_the_chain_it_replaces);

fn composed_network_gradient(dev: &Device) {
    // conv → ReLU → max-pool → conv → Gram → squared distance to a target (a style loss).
    let mut rng = StdRng::seed_from_u64(7);
    let inputs = [
        uniform(&mut rng, &[1, 3, 8, 7]),
        uniform(&mut rng, &[6, 3, 3, 3]),
        uniform(&mut rng, &[6]),
        uniform(&mut rng, &[5, 6, 3, 3]),
    ];
    let target =
        Tensor::from_vec((0..25).map(|i| (i as f32).sin()).collect(), &[1, 5, 5], dev).unwrap();
    gradcheck(dev, "network", &inputs, 1e-3, |t| {
        let h = t[0]
            .conv2d(&t[1], Some(&t[2]), 1, 1)
            .unwrap()
            .relu()
            .unwrap()
            .max_pool2d()
            .unwrap();
        let f = h.conv2d(&t[3], None, 1, 1).unwrap();
        let n = (f.dims()[2] * f.dims()[3]) as f32;
        f.gram(1.0 / n)
            .unwrap()
            .sub(&target)
            .unwrap()
            .square()
            .unwrap()
            .sum()
            .unwrap()
    });
}
test_device!(composed_network_gradient);

fn frozen_network_gradient(dev: &Device) {
    // The style-transfer case: only the image is a variable, so the convolutions keep one-bit
    // ReLU masks instead of their inputs and outputs. Fused conv+ReLU, separate ReLU, both
    // poolings, and a loss on an intermediate feature and on the last one.
    let mut rng = StdRng::seed_from_u64(11);
    let constant = |rng: &mut StdRng, shape: &[usize]| {
        let i = uniform(rng, shape);
        Tensor::from_vec(i.data, &i.shape, dev).unwrap()
    };
    let (w1, b1) = (constant(&mut rng, &[4, 3, 3, 3]), constant(&mut rng, &[4]));
    let w2 = constant(&mut rng, &[5, 4, 3, 3]);
    let w3 = constant(&mut rng, &[3, 5, 3, 3]);
    let inputs = [uniform(&mut rng, &[1, 3, 10, 9])];
    let network = |x: &Tensor, w1: &Tensor, w2: &Tensor, w3: &Tensor| {
        let f1 = x.conv2d_relu(w1, Some(&b1), 1, 1).unwrap();
        let h = f1.max_pool2d().unwrap();
        let f2 = h.conv2d(w2, None, 1, 1).unwrap().relu().unwrap();
        let f3 = f2
            .avg_pool2d()
            .unwrap()
            .conv2d_relu(w3, None, 1, 1)
            .unwrap();
        let n1 = (f1.dims()[2] * f1.dims()[3]) as f32;
        let style = f1.gram(1.0 / n1).unwrap().square().unwrap().sum().unwrap();
        let content = f3.square().unwrap().sum().unwrap();
        style.add(&content).unwrap().reshape(&[1]).unwrap()
    };
    // (A step of 1e-3 is already at f32's rounding floor for this loss.)
    gradcheck(dev, "frozen network", &inputs, 3e-3, |t| {
        network(&t[0], &w1, &w2, &w3)
    });

    // The same gradient as when every layer keeps its activations (learnable weights).
    let x = Tensor::variable(inputs[0].data.clone(), &inputs[0].shape, dev).unwrap();
    let frozen = network(&x, &w1, &w2, &w3)
        .sum()
        .unwrap()
        .backward()
        .unwrap();
    let (v1, v2, v3) = (w1.to_variable(), w2.to_variable(), w3.to_variable());
    let learning = network(&x, &v1, &v2, &v3)
        .sum()
        .unwrap()
        .backward()
        .unwrap();
    assert_eq!(
        frozen.get(&x).unwrap().to_vec().unwrap(),
        learning.get(&x).unwrap().to_vec().unwrap()
    );
}
test_device!(frozen_network_gradient);

fn in_place_accumulation_adds_up(dev: &Device) {
    // Losses on intermediate features that also feed a convolution: the convolution's input
    // gradient is added into the loss's in place — by Winograd's output transform into f1
    // (conv2's input gradient is a convolution of its 16-channel output), through a temporary
    // into f3 (conv4's 3-channel output is too few for Winograd).
    let mut rng = StdRng::seed_from_u64(11);
    let constant = |rng: &mut StdRng, shape: &[usize]| {
        let i = uniform(rng, shape);
        Tensor::from_vec(i.data, &i.shape, dev).unwrap()
    };
    let (w1, b1) = (
        constant(&mut rng, &[16, 3, 3, 3]),
        constant(&mut rng, &[16]),
    );
    let w2 = constant(&mut rng, &[16, 16, 3, 3]);
    let w3 = constant(&mut rng, &[5, 16, 3, 3]);
    let w4 = constant(&mut rng, &[3, 5, 3, 3]);
    let inputs = [uniform(&mut rng, &[1, 3, 10, 9])];
    let style = |f: &Tensor| {
        let n = (f.dims()[2] * f.dims()[3]) as f32;
        f.gram(1.0 / n).unwrap().sum().unwrap()
    };
    let network = |x: &Tensor, w: [&Tensor; 4]| {
        let f1 = x.conv2d_relu(w[0], Some(&b1), 1, 1).unwrap();
        let f2 = f1.conv2d_relu(w[1], None, 1, 1).unwrap();
        let f3 = f2
            .max_pool2d()
            .unwrap()
            .conv2d(w[2], None, 1, 1)
            .unwrap()
            .relu()
            .unwrap();
        let f4 = f3
            .conv2d_relu(w[3], None, 1, 1)
            .unwrap()
            .avg_pool2d()
            .unwrap();
        (style(&f1), style(&f3), f4.square().unwrap().sum().unwrap())
    };
    // The whole loss's gradient against the sum of its terms' gradients taken one at a time,
    // where no activation gets two gradients (so nothing is added in place): linearity,
    // exactly what the accumulation must preserve.
    let x = Tensor::variable(inputs[0].data.clone(), &inputs[0].shape, dev).unwrap();
    let grad_of = |term: usize| {
        let (s1, s3, content) = network(&x, [&w1, &w2, &w3, &w4]);
        let loss = match term {
            0 => s1,
            1 => s3,
            2 => content,
            _ => s1.add(&s3).unwrap().add(&content).unwrap(),
        };
        let grads = loss.backward().unwrap();
        grads.get(&x).unwrap().to_vec().unwrap()
    };
    let together = grad_of(3);
    let (a, b, c) = (grad_of(0), grad_of(1), grad_of(2));
    let scale = together.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(scale > 0.0);
    for (i, t) in together.iter().enumerate() {
        let parts = a[i] + b[i] + c[i];
        assert!((t - parts).abs() <= 1e-5 * scale, "{i}: {t} vs {parts}");
    }
}
test_device!(in_place_accumulation_adds_up);

fn constants_and_no_grad_record_nothing(dev: &Device) {
    let x = Tensor::variable(vec![1.0, 2.0], &[2], dev).unwrap();
    let c = Tensor::from_vec(vec![3.0, 4.0], &[2], dev).unwrap();
    let y = no_grad(|| x.mul(&c).unwrap());
    assert!(!y.requires_grad(), "no_grad output must not track");
    assert!(
        y.sum().unwrap().backward().is_err(),
        "backward without a graph is an error"
    );
    let loss = x.mul(&c).unwrap().sum().unwrap();
    let grads = loss.backward().unwrap();
    assert_eq!(grads.get(&x).unwrap().to_vec().unwrap(), vec![3.0, 4.0]);
    assert!(grads.get(&c).is_none(), "a constant gets no gradient");
    assert!(
        x.mul(&c).unwrap().backward().is_err(),
        "backward needs a scalar"
    );
}
test_device!(constants_and_no_grad_record_nothing);

fn shape_errors_are_reported(dev: &Device) {
    let a = Tensor::zeros(&[2, 3], dev).unwrap();
    let b = Tensor::zeros(&[2, 3], dev).unwrap();
    assert!(a.matmul(&b).unwrap_err().to_string().contains("matmul"));
    assert!(a.add(&Tensor::zeros(&[3, 2], dev).unwrap()).is_err());
    assert!(Tensor::from_vec(vec![1.0; 5], &[2, 3], dev).is_err());
    let x = Tensor::zeros(&[1, 3, 4, 4], dev).unwrap();
    assert!(
        x.conv2d(&Tensor::zeros(&[2, 4, 3, 3], dev).unwrap(), None, 1, 1)
            .is_err(),
        "channel mismatch"
    );
    assert!(
        x.conv2d(&Tensor::zeros(&[2, 3, 5, 5], dev).unwrap(), None, 1, 0)
            .is_err(),
        "kernel larger than input"
    );
}
test_device!(shape_errors_are_reported);

/// The algorithm a caller picks reaches the kernels, forward and backward: Winograd (the
/// fastest path for this 16-channel 3×3 layer) and im2col agree on the output and on every
/// gradient, and a backward pass after an im2col forward runs im2col too (both paths are
/// checked against naive loops in nst-cpu).
fn conv_algorithms_agree(dev: &Device) {
    let mut rng = StdRng::seed_from_u64(8);
    let inputs = [
        uniform(&mut rng, &[1, 16, 9, 10]),
        uniform(&mut rng, &[8, 16, 3, 3]),
    ];
    let run = |algorithm: ConvAlgorithm| {
        let x = Tensor::variable(inputs[0].data.clone(), &inputs[0].shape, dev).unwrap();
        let w = Tensor::variable(inputs[1].data.clone(), &inputs[1].shape, dev).unwrap();
        let o = Conv2dOptions {
            algorithm,
            ..Conv2dOptions::new(1, 1)
        };
        let y = x.conv2d_with(&w, None, o).unwrap();
        let g = y.square().unwrap().sum().unwrap().backward().unwrap();
        [y, g.get(&x).unwrap().clone(), g.get(&w).unwrap().clone()].map(|t| t.to_vec().unwrap())
    };
    let (fast, reference) = (run(ConvAlgorithm::Fastest), run(ConvAlgorithm::Im2col));
    for (k, (a, b)) in fast.iter().zip(&reference).enumerate() {
        let err = a
            .iter()
            .zip(b)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        let scale = b.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(
            scale > 0.0 && err <= 1e-5 * scale,
            "part {k} differs by {err:e}"
        );
    }
}
test_device!(conv_algorithms_agree);

/// The optimizer's device scalars: `dot_scalar` is `dot` left on the device, and
/// `add_scaled` is exactly `axpby(1, y, f32(factor·coef))`, whatever the device; mixing
/// devices is an error.
fn device_scalars_match_host_arithmetic(dev: &Device) {
    let mut rng = StdRng::seed_from_u64(11);
    let (a, b) = (uniform(&mut rng, &[3, 37]), uniform(&mut rng, &[3, 37]));
    let x = Tensor::from_vec(a.data, &a.shape, dev).unwrap();
    let y = Tensor::from_vec(b.data, &b.shape, dev).unwrap();
    let d = x.dot_scalar(&y).unwrap();
    assert_eq!(d.value().unwrap(), x.dot(&y).unwrap());
    let alpha = d.scale(0.25).unwrap();
    let beta = y.dot_scalar(&y).unwrap().scale(-0.5).unwrap();
    let coef = alpha.sub(&beta).unwrap();
    let want_coef = x.dot(&y).unwrap() * 0.25 - y.dot(&y).unwrap() * -0.5;
    assert_eq!(coef.value().unwrap(), want_coef);
    let got = x.add_scaled(&y, &coef, -1.0).unwrap().to_vec().unwrap();
    let want = x
        .axpby(1.0, &y, (-want_coef) as f32)
        .unwrap()
        .to_vec()
        .unwrap();
    assert_eq!(got, want);
    let other = Tensor::from_vec(vec![0.0; 3 * 37], &[3, 37], &Device::Cpu).unwrap();
    if !dev.is_cpu() {
        assert!(x.dot_scalar(&other).is_err(), "operands on two devices");
        assert!(
            other.add_scaled(&other, &coef, 1.0).is_err(),
            "a scalar of another device"
        );
    }
}
test_device!(device_scalars_match_host_arithmetic);

/// The fused step of L-BFGS's two-loop recursion gives the bits of the ops it stands for.
fn fused_two_loop_step_matches_its_parts(dev: &Device) {
    let mut rng = StdRng::seed_from_u64(12);
    let t = |rng: &mut StdRng| {
        let u = uniform(rng, &[5, 301]);
        Tensor::from_vec(u.data, &u.shape, dev).unwrap()
    };
    let (x, y, v) = (t(&mut rng), t(&mut rng), t(&mut rng));
    let alpha = x.dot_scalar(&y).unwrap().scale(0.37).unwrap();
    let beta = v.dot_scalar(&y).unwrap().scale(-1.3).unwrap();
    assert_eq!(
        x.dot_scalar_scaled(&y, 0.37).unwrap().value().unwrap(),
        alpha.value().unwrap()
    );
    for minus in [None, Some(&beta)] {
        let coef = match minus {
            Some(b) => alpha.sub(b).unwrap(),
            None => alpha.scale(1.0).unwrap(),
        };
        let want = x.add_scaled(&y, &coef, -1.0).unwrap();
        let want_dot = v.dot_scalar(&want).unwrap().scale(0.7).unwrap().value();
        let (got, dot) = x
            .add_scaled_dot(&y, &alpha, minus, -1.0, Some((&v, 0.7)))
            .unwrap();
        assert_eq!(got.to_vec().unwrap(), want.to_vec().unwrap());
        assert_eq!(dot.unwrap().value().unwrap(), want_dot.unwrap());
        let (alone, none) = x.add_scaled_dot(&y, &alpha, minus, -1.0, None).unwrap();
        assert!(none.is_none());
        assert_eq!(alone.to_vec().unwrap(), want.to_vec().unwrap());
    }
    let wrong = Tensor::from_vec(vec![0.0; 7], &[7], dev).unwrap();
    assert!(x
        .add_scaled_dot(&y, &alpha, None, 1.0, Some((&wrong, 1.0)))
        .is_err());
}
test_device!(fused_two_loop_step_matches_its_parts);
