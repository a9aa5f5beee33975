//! `cargo xtask bench [--quick] [--sizes 256,512,1024] [--iters N]`: median milliseconds per
//! style-transfer iteration (VGG-19 forward to relu5_1, content + style losses, backward to
//! the image, one L-BFGS update) and the GFLOP/s that implies, per device. Prints a markdown
//! table and writes JSON to `target/bench/bench.json`.
//!
//! The FLOP count is that of the convolutions: forward through conv5_1 plus the input
//! gradient back through them (the same count again), the part that dominates.

use anyhow::{bail, Context, Result};
use nst_cli::image_io::{load_rgb, Planes};
use nst_cli::objective::{to_tensor, LossSpec, Objective, Weights};
use nst_optim::{Lbfgs, LbfgsConfig, Optimizer, Step};
use nst_tensor::Device;
use nst_vgg::{Layer, LayerKind, Pooling, Vgg19};
use std::time::Instant;

const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

struct Row {
    device: String,
    size: usize,
    result: Result<(f64, f64), String>,
}

/// Convolution GFLOP of one iteration at `size`², through `deepest`.
fn gflop_per_iter(size: usize, deepest: Layer) -> f64 {
    let channels = nst_vgg::weights::CONV_CHANNELS;
    let mut side = size;
    let mut flops = 0.0;
    for layer in Layer::all().take(deepest.index() + 1) {
        match layer.kind() {
            LayerKind::Conv(i) => {
                flops += 2.0 * (side * side) as f64 * (channels[i].0 * 9 * channels[i].1) as f64
            }
            LayerKind::Pool => side /= 2,
            LayerKind::Relu => {}
        }
    }
    2.0 * flops / 1e9
}

fn time_cpu(size: usize, iters: usize) -> Result<(f64, f64)> {
    let dev = Device::Cpu;
    let vgg = Vgg19::embedded(&dev, Pooling::Max)?;
    let content = Planes::from_rgb(&load_rgb(
        format!("{ROOT}/examples/content_chelsea.png").as_ref(),
        "content",
    )?)
    .resized(size, size);
    let style = Planes::from_rgb(&load_rgb(
        format!("{ROOT}/examples/style_vangogh_starry_night.jpg").as_ref(),
        "style",
    )?)
    .resized(size, size);
    let style_layers: Vec<Layer> = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    let content_layers: Vec<Layer> = vec!["relu4_2".parse()?];
    let weights = Weights {
        content: 1.0,
        style: 1e-3,
        tv: 0.0,
        style_layers: vec![0.1, 0.2, 0.4, 0.2, 0.1],
    };
    let spec = LossSpec {
        content_layers: &content_layers,
        style_layers: &style_layers,
        weights,
        luminance_only: false,
    };
    let objective = Objective::new(&vgg, &content, &[style], &[1.0], spec, &dev)?;
    let mut opt = Optimizer::Lbfgs(Lbfgs::new(LbfgsConfig::default()));
    let mut x = to_tensor(&content, &dev)?;
    let mut eval = objective.evaluate(&x)?;
    let mut times = Vec::new();
    for _ in 0..iters + 1 {
        let t = Instant::now();
        match opt.step(&x, &eval, &mut |x| objective.evaluate(x))? {
            Step::Moved { x: nx, .. } => x = nx,
            Step::Converged => bail!("converged during the benchmark"),
        }
        eval = objective.evaluate(&x)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.remove(0); // warm-up: first-touch allocations
    let ms = nst_cli::report::median(&times);
    Ok((ms, gflop_per_iter(size, "relu5_1".parse()?) / (ms / 1e3)))
}

pub fn run(args: &[String]) -> Result<()> {
    let mut quick = false;
    let mut sizes = vec![256, 512];
    let mut iters = 5;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--sizes" => {
                sizes = it
                    .next()
                    .context("--sizes needs a list")?
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--iters" => iters = it.next().context("--iters needs a number")?.parse()?,
            other => bail!("unknown bench option {other}"),
        }
    }
    if quick {
        sizes = vec![128, 256];
        iters = 3;
    }
    let mut rows = Vec::new();
    for &size in &sizes {
        eprintln!("cpu {size}²: {iters} iterations…");
        rows.push(Row {
            device: Device::Cpu.to_string(),
            size,
            result: time_cpu(size, iters).map_err(|e| e.to_string()),
        });
        let cuda = match nst_cuda::probe() {
            nst_cuda::Probe::Unavailable(why) => format!("unavailable: {why}"),
            nst_cuda::Probe::Available { name } => {
                format!("unavailable: {name} found, but the CUDA kernels are not written yet")
            }
        };
        rows.push(Row {
            device: "cuda".into(),
            size,
            result: Err(cuda),
        });
    }
    println!("| device | size | ms/iter (median) | GFLOP/s |\n|---|---|---|---|");
    let mut json = Vec::new();
    for r in &rows {
        match &r.result {
            Ok((ms, gf)) => {
                println!("| {} | {}² | {ms:.0} | {gf:.0} |", r.device, r.size);
                json.push(serde_json::json!({"device": r.device, "size": r.size, "ms_per_iter": ms, "gflops": gf}));
            }
            Err(why) => {
                println!("| {} | {}² | {why} | |", r.device, r.size);
                json.push(serde_json::json!({"device": r.device, "size": r.size, "error": why}));
            }
        }
    }
    let dir = format!("{ROOT}/target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        format!("{dir}/bench.json"),
        serde_json::to_string_pretty(&json)?,
    )?;
    eprintln!("wrote {dir}/bench.json");
    Ok(())
}
