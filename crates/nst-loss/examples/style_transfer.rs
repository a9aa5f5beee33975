//! Style transfer with the library crates alone, at 96 px: the `nst` command's work without
//! its coarse-to-fine scales, colour options and progress display.
//!
//! `cargo run --release -p nst-loss --example style_transfer -- content.png style.jpg out.png`
//! (without arguments it uses the example images of the repository).

use nst_image::{fit_longest_side, load_rgb, save_atomic, Planes};
use nst_loss::{LossSpec, Objective};
use nst_optim::{minimize, Evaluation, Lbfgs, LbfgsConfig, Optimizer};
use nst_tensor::{Device, Tensor};
use nst_vgg::{Pooling, Vgg19};
use std::error::Error;
use std::path::Path;
use std::sync::atomic::AtomicBool;

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

fn load(path: &str, what: &str, side: u32) -> Result<Planes, Box<dyn Error>> {
    let planes = Planes::from_rgb(&load_rgb(Path::new(path), what)?);
    let (w, h) = fit_longest_side(planes.width, planes.height, side);
    Ok(planes.resized(w, h))
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [content, style, out] = match &args[..] {
        [c, s, o] => [c.clone(), s.clone(), o.clone()],
        _ => [
            format!("{EXAMPLES}/content_chelsea.png"),
            format!("{EXAMPLES}/style_vangogh_starry_night.jpg"),
            "style_transfer.png".into(),
        ],
    };
    let (device, why_not_cuda) = Device::best_available();
    println!(
        "device: {device}{}",
        why_not_cuda.map(|w| format!("; {w}")).unwrap_or_default()
    );
    let content = load(&content, "content image", 96)?.to_tensor(&device)?;
    let style = load(&style, "style image", 96)?.to_tensor(&device)?;

    // J = α·J_c(relu4_2) + β·Σ w_l·J_s^l over relu1_1 … relu5_1: nst's defaults, with a
    // stronger style (β = 1e-3 instead of 3e-4) for so few iterations at so small a size.
    let vgg = Vgg19::embedded(&device, Pooling::Max)?;
    let mut spec = LossSpec::default();
    spec.weights.style = 1e-3;
    let objective = Objective::new(&vgg, &content, &[style], &[1.0], spec)?;
    // The optimizers see f and ∇f (plus any terms to report) as an Evaluation.
    let evaluate = |x: &Tensor| -> Result<Evaluation, nst_loss::ObjectiveError> {
        let v = objective.evaluate(x)?;
        Ok(Evaluation::new(v.total, v.grad))
    };

    let mut optimizer = Optimizer::Lbfgs(Lbfgs::new(LbfgsConfig::default()));
    let never_interrupted = AtomicBool::new(false);
    let run = minimize(
        content.clone(),
        &evaluate,
        &mut optimizer,
        20,
        &never_interrupted,
        &mut |k, _, e, _| {
            println!("iteration {k:2}: loss {:.4e}", e.loss);
            Ok(())
        },
    )?;
    let best = run.best.ok_or("the loss was never finite")?;
    save_atomic(&Planes::from_tensor(&best)?.to_rgb(), Path::new(&out))?;
    println!("wrote {out} (loss {:.4e}, {:?})", run.best_loss, run.stop);
    Ok(())
}
