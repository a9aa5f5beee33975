//! Our L-BFGS on the style-transfer objective against the PyTorch trace in the reference.

use nst_loss::{content_loss, gram_hat, style_loss};
use nst_optim::{Evaluation, Lbfgs, LbfgsConfig, Optimizer, Step};
use nst_tensor::{Tensor, TensorError};
use nst_testdata::{rel_err, rel_err_scalar, Reference};
use nst_vgg::{Layer, Pooling, Vgg19};

#[test]
fn lbfgs_trace_matches_reference() {
    let r = Reference::load();
    let cfg = &r.json["lbfgs"];
    let (alpha, beta) = (
        cfg["content_weight"].as_f64().unwrap() as f32,
        cfg["style_weight"].as_f64().unwrap() as f32,
    );
    let names = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"];
    let weights: Vec<f32> = names
        .iter()
        .map(|n| cfg["style_layer_weights"][n].as_f64().unwrap() as f32)
        .collect();
    let vgg = Vgg19::embedded(&nst_tensor::Device::Cpu, Pooling::Max).unwrap();
    let style_layers: Vec<Layer> = names.iter().map(|n| n.parse().unwrap()).collect();
    let content_layer: Layer = "relu4_2".parse().unwrap();
    let targets: Vec<Tensor> = vgg
        .features(&r.tensor("style_rgb"), &style_layers)
        .unwrap()
        .iter()
        .map(|f| gram_hat(f).unwrap().detach())
        .collect();
    let content_target = vgg
        .features(&r.tensor("content_rgb"), &[content_layer])
        .unwrap()
        .remove(0)
        .detach();

    let mut all_layers = style_layers.clone();
    all_layers.push(content_layer);
    let mut objective = |x: &Tensor| -> Result<Evaluation, TensorError> {
        let x = x.to_variable();
        let f = vgg.features(&x, &all_layers).map_err(|e| match e {
            nst_vgg::VggError::Tensor(t) => t,
            other => panic!("{other}"),
        })?;
        let jc = content_loss(&f[5], &content_target)?;
        let js = style_loss(&f[..5], &targets, &weights)?;
        let total = jc.scale(alpha)?.add(&js.scale(beta)?)?;
        let grad = total.backward()?.remove(&x).unwrap();
        Ok(Evaluation {
            parts: vec![],
            loss: total.to_scalar()? as f64,
            grad,
        })
    };

    let expected: Vec<f64> = cfg["trace"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["total"].as_f64().unwrap())
        .collect();
    let mut opt = Optimizer::Lbfgs(Lbfgs::new(LbfgsConfig::default()));
    let mut x = r.tensor("content_rgb");
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
    // pair is dominated by f32 rounding in any f32 implementation, and the error grows about
    // 2× per iteration from there. Measured: flipping the last bit of a third of the starting
    // pixels changes trace[7..10] by 1e-3 to 4e-3; the OpenBLAS build (another summation
    // order in the GEMMs) is 1.7e-3 off at trace[6] where the default build is 6.5e-4 off.
    // So iterates 0–5 are held to 1e-3 (both builds measure ≤ 4.3e-4), 6–9 to 1e-2 (the f32
    // noise floor, with margin), later ones to 5e-2.
    for (k, (&ours, &want)) in trace.iter().zip(&expected).enumerate() {
        let tol = match k {
            0..=5 => 1e-3,
            6..=9 => 1e-2,
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
    let final_ref = r.tensor("lbfgs.final_rgb").to_vec();
    let (moved, start) = (
        rel_err(&x.to_vec(), &final_ref),
        rel_err(&r.tensor("content_rgb").to_vec(), &final_ref),
    );
    eprintln!("final image: relative error {moved:.2e} (the start is {start:.2e} away)");
    assert!(
        moved <= 0.1 && moved <= start / 3.0,
        "final image relative error {moved:.2e}, start {start:.2e}"
    );
}
