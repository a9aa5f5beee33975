//! The CUDA kernels: NVRTC compiles all of them wherever libnvrtc loads (CI installs it, no GPU
//! needed), and on a machine with a GPU each wrapped kernel matches nst-cpu on random inputs
//! within 1e-4 relative. Without NVRTC or a GPU the tests print `skipped: <reason>`.

use nst_cpu::{conv::conv2d_forward_direct, pool, relu, Conv2dParams};

use nst_cuda::{gpu::Gpu, kernels};

fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    // A small LCG: reproducible, no dev-dependency.
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn rel_err(a: &[f32], b: &[f32]) -> f64 {
    let (mut num, mut den) = (0.0f64, 0.0f64);
    for (&x, &y) in a.iter().zip(b) {
        num += ((x - y) as f64).powi(2);
        den += (y as f64).powi(2);
    }
    (num / den.max(1e-30)).sqrt()
}

#[test]
fn every_kernel_compiles_with_nvrtc() {
    if !kernels::nvrtc_present() {
        // .ci/run sets NST_REQUIRE_NVRTC once it has installed NVRTC: then skipping is a failure.
        assert!(
            std::env::var_os("NST_REQUIRE_NVRTC").is_none(),
            "NST_REQUIRE_NVRTC is set but libnvrtc.so.13 does not load"
        );
        eprintln!("skipped: libnvrtc.so.13 not found (CI installs nvidia-cuda-nvrtc from PyPI)");
        return;
    }
    let ptx = kernels::compile().unwrap_or_else(|e| panic!("{e}"));
    let text = ptx.to_src();
    for name in kernels::KERNEL_NAMES {
        assert!(
            text.contains(&format!(".entry {name}(")),
            "no entry point {name} in the PTX"
        );
    }
    // And nothing in the source that the runtime would not load.
    let globals = kernels::SOURCE.matches("__global__").count();
    assert_eq!(
        globals,
        kernels::KERNEL_NAMES.len(),
        "KERNEL_NAMES is out of date"
    );
}

fn gpu() -> Option<Gpu> {
    match Gpu::new() {
        Ok(g) => Some(g),
        Err(why) => {
            eprintln!("skipped GPU parity: {why}");
            None
        }
    }
}

#[test]
fn cuda_matches_cpu_on_random_inputs() {
    let Some(g) = gpu() else { return };
    // ReLU.
    let x = rand_vec(10_000, 1);
    let mut want = vec![0.0; x.len()];
    relu::relu_forward(&x, &mut want);
    let dx = g.upload(&x).unwrap();
    let mut dy = g.zeros(x.len()).unwrap();
    g.relu_forward(&dx, &mut dy).unwrap();
    assert_eq!(g.download(&dy).unwrap(), want, "relu");
    // axpby and Σ(a − b)².
    let y = rand_vec(10_000, 2);
    let dyy = g.upload(&y).unwrap();
    let mut out = g.zeros(x.len()).unwrap();
    g.axpby(0.5, &dx, -2.0, &dyy, &mut out).unwrap();
    let want: Vec<f32> = x.iter().zip(&y).map(|(a, b)| 0.5 * a - 2.0 * b).collect();
    assert!(rel_err(&g.download(&out).unwrap(), &want) <= 1e-6, "axpby");
    let want: f64 = x
        .iter()
        .zip(&y)
        .map(|(a, b)| ((a - b) as f64).powi(2))
        .sum();
    let got = g.sum_sq_diff(&dx, &dyy).unwrap();
    assert!(
        (got - want).abs() <= 1e-9 * want,
        "Σ(a−b)²: {got} vs {want}"
    );
    // Max pooling on odd sizes.
    let p = pool::Pool2dParams {
        planes: 3,
        in_h: 7,
        in_w: 9,
    };
    let x = rand_vec(p.input_len(), 3);
    let (mut want, mut arg) = (vec![0.0; p.output_len()], vec![0u32; p.output_len()]);
    pool::max_pool_forward(&p, &x, &mut want, &mut arg);
    let (got, _) = g.max_pool2x2(&g.upload(&x).unwrap(), &p).unwrap();
    assert_eq!(g.download(&got).unwrap(), want, "max pool");
    // Convolution, a VGG-19 shape (conv3_1 at 28×30).
    let c = Conv2dParams {
        batch: 1,
        in_channels: 128,
        in_h: 28,
        in_w: 30,
        out_channels: 256,
        kernel_h: 3,
        kernel_w: 3,
        stride: 1,
        pad: 1,
    };
    let (x, w, b) = (
        rand_vec(c.input_len(), 4),
        rand_vec(c.weight_len(), 5),
        rand_vec(c.out_channels, 6),
    );
    let mut want = vec![0.0; c.output_len()];
    conv2d_forward_direct(&c, &x, &w, Some(&b), &mut want);
    let got = g
        .conv2d_forward(
            &g.upload(&x).unwrap(),
            &g.upload(&w).unwrap(),
            &g.upload(&b).unwrap(),
            &c,
        )
        .unwrap();
    let e = rel_err(&g.download(&got).unwrap(), &want);
    assert!(e <= 1e-4, "conv forward: relative error {e:.2e}");
}
