//! Our L-BFGS on the style-transfer objective against the PyTorch trace in the reference.

use nst_loss::{LossSpec, LossWeights, Objective};
use nst_optim::{Evaluation, Lbfgs, LbfgsConfig, Optimizer, Step};
use nst_tensor::{test_device, Device, Tensor};
use nst_testdata::{rel_err, rel_err_scalar, Reference};
use nst_vgg::{Layer, Pooling, Vgg19};

/// Also checks `nst_loss::Objective` (the total loss the `nst` command optimises): its value
/// at the start is the reference's trace[0].
fn lbfgs_trace_matches_reference(dev: &Device) {
    let r = Reference::load();
    let cfg = &r.json["lbfgs"];
    let names = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"];
    let spec = LossSpec {
        content_layers: vec!["relu4_2".parse().unwrap()],
        style_layers: names.iter().map(|n| n.parse::<Layer>().unwrap()).collect(),
        weights: LossWeights {
            content: cfg["content_weight"].as_f64().unwrap() as f32,
            style: cfg["style_weight"].as_f64().unwrap() as f32,
            tv: 0.0,
            style_layers: names
                .iter()
                .map(|n| cfg["style_layer_weights"][n].as_f64().unwrap() as f32)
                .collect(),
        },
    };
    let vgg = Vgg19::embedded(dev, Pooling::Max).unwrap();
    let loss = Objective::new(
        &vgg,
        &r.tensor_on("content_rgb", dev),
        &[r.tensor_on("style_rgb", dev)],
        &[1.0],
        spec,
    )
    .unwrap();
    let mut objective = |x: &Tensor| -> Result<Evaluation, nst_loss::ObjectiveError> {
        let v = loss.evaluate(x)?;
        Ok(Evaluation::new(v.total, v.grad))
    };

    let expected: Vec<f64> = cfg["trace"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["total"].as_f64().unwrap())
        .collect();
    let mut opt = Optimizer::Lbfgs(Lbfgs::new(LbfgsConfig::default()));
    let mut x = r.tensor_on("content_rgb", dev);
    let mut trace = vec![];
    for _ in 0..20 {
        let at_x = objective(&x).unwrap();
        trace.push(at_x.loss);
        match opt.step(&x, &at_x, &mut objective).unwrap() {
            Step::Moved { x: nx, .. } => x = nx,
            Step::Converged => panic!("converged early"),
        }
    }
    trace.push(objective(&x).unwrap().loss);
    for (k, (&ours, &want)) in trace.iter().zip(&expected).enumerate() {
        eprintln!(
            "trace[{k}]: {ours:.6e} vs {want:.6e}, relative error {:.2e}",
            rel_err_scalar(ours, want)
        );
    }
    // Float32 limits how far the float64 trace can be followed. The first step is tiny
    // (t = 1/‖g‖₁ moves pixels by ~5e-5 around values ~100, a few ulps), so the first (s, y)
    // pair, and with it the step to iterate 2, is dominated by f32 rounding in any f32
    // implementation. Measured, by perturbing every gradient value by a random factor
    // 1 ± k·2⁻²³ on the CPU (four seeds each): k = 16 moves iterates 2–5 by at most 4e-4;
    // k = 256 (3e-5: what another summation order does to gradient values that are sums with
    // much cancellation) by up to 2.4e-3, iterates 6–9 by up to 7e-3. Seen: the CPU build
    // 2.3e-4 at iterate 2; on an H200, im2col + cuBLAS 9.5e-5 and cuDNN (f32, its own
    // summation order) 1.7e-3 in three runs, and at iterate 9 up to 1.18e-2. So iterates 0–1
    // are held to 1e-6 (the same start; all builds ≤ 2.7e-7), 2–5 to 5e-3, 6–9 to 2e-2,
    // later ones to 5e-2. Checked: scaling H₀ = sᵀy/yᵀy by 1.03 fails at trace[3], by 1.1 at
    // trace[2]; keeping 2 pairs instead of 100 only fails at trace[12].
    for (k, (&ours, &want)) in trace.iter().zip(&expected).enumerate() {
        let tol = match k {
            0..=1 => 1e-6,
            2..=5 => 5e-3,
            6..=9 => 2e-2,
            _ => 5e-2,
        };
        let e = rel_err_scalar(ours, want);
        assert!(
            e <= tol,
            "trace[{k}] = {ours} vs {want}: relative error {e:.2e} > {tol:.0e}"
        );
    }
    // The final image must have moved with the reference: much nearer its final image than
    // the starting point is.
    let final_ref = r.values("lbfgs.final_rgb");
    let (moved, start) = (
        rel_err(&x.to_vec().unwrap(), final_ref),
        rel_err(r.values("content_rgb"), final_ref),
    );
    eprintln!("final image: relative error {moved:.2e} (the start is {start:.2e} away)");
    assert!(
        moved <= 0.1 && moved <= start / 3.0,
        "final image relative error {moved:.2e}, start {start:.2e}"
    );
}
test_device!(lbfgs_trace_matches_reference);
