//! Style transfer end to end: load, prepare colours, optimise coarse to fine, write.
//!
//! Coarse-to-fine (Gatys et al. 2017; crowsonkb/style-transfer-pytorch): the image is first
//! optimised at a small size, then upsampled as the start of the next scale, √2 larger, up to
//! the output size. Large-scale structure settles cheaply at low resolution, so the final,
//! expensive scale needs fewer iterations.
//!
//! Nothing is lost: the best iterate (lowest finite loss) of the current scale is kept; on
//! interruption or a non-finite loss it is written to the output (atomically) before the run
//! stops with an error.

use crate::color::{join_luminance, match_colors, match_luminance, split_luminance};
use crate::config::{ColorMode, Config, DeviceChoice, Init, OptimizerKind};
use crate::image_io::{fit_longest_side, load_rgb, save_atomic, write_atomic, Planes};
use crate::objective::{
    to_tensor, LossSpec, Objective, Weights, PART_CONTENT, PART_STYLE, PART_TV,
};
use crate::progress::{IterationInfo, Progress};
use crate::report::{median, Report, Timing, TracePoint};
use anyhow::{bail, Context, Result};
use nst_optim::{Adam, AdamConfig, Evaluation, Lbfgs, LbfgsConfig, Optimizer, Step};
use nst_tensor::{Device, Tensor};
use nst_vgg::{Layer, LayerKind, Vgg19};
use rand::{Rng, SeedableRng};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// L-BFGS history is capped so its (s, y) pairs stay within this many bytes.
const LBFGS_HISTORY_BYTES: usize = 2 << 30;

/// What a finished run produced.
#[derive(Debug)]
pub struct Outcome {
    /// Output width and height.
    pub output_size: (usize, usize),
    /// Loss at each iterate of the final scale.
    pub trace: Vec<TracePoint>,
    /// Timing.
    pub timing: Timing,
    /// The device used, in words.
    pub device: String,
}

/// The run was interrupted (Ctrl-C); the best image so far was written.
#[derive(Debug)]
pub struct Interrupted {
    /// Where the image went.
    pub saved: PathBuf,
}

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "interrupted: wrote the best image so far to {}",
            self.saved.display()
        )
    }
}

impl std::error::Error for Interrupted {}

/// The loss or gradient became NaN or infinite.
#[derive(Debug)]
pub struct NonFiniteLoss {
    /// 1-based scale.
    pub scale: usize,
    /// Iteration within the scale.
    pub iter: u32,
    /// Where the last finite image went, if there was one.
    pub saved: Option<PathBuf>,
}

impl fmt::Display for NonFiniteLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the loss became non-finite at iteration {} of scale {}",
            self.iter, self.scale
        )?;
        match &self.saved {
            Some(p) => write!(f, "; wrote the last finite image to {}", p.display())?,
            None => write!(f, "; no image was written")?,
        }
        write!(f, " (try a smaller --lr or --style-weight)")
    }
}

impl std::error::Error for NonFiniteLoss {}

fn select_device(choice: DeviceChoice, progress: &mut dyn Progress) -> Result<(Device, String)> {
    let cpu = Device::Cpu;
    match choice {
        DeviceChoice::Cpu => Ok((cpu.clone(), cpu.to_string())),
        DeviceChoice::Cuda => match nst_cuda::probe() {
            nst_cuda::Probe::Unavailable(why) => {
                bail!("--device cuda: CUDA is not available: {why}")
            }
            nst_cuda::Probe::Available { name } => {
                bail!("--device cuda: found {name}, but this build's CUDA backend has no kernels yet; use --device cpu")
            }
        },
        DeviceChoice::Auto => {
            let why = match nst_cuda::probe() {
                nst_cuda::Probe::Unavailable(why) => why,
                nst_cuda::Probe::Available { name } => {
                    format!("{name} found, but the CUDA backend has no kernels yet")
                }
            };
            progress.note(&format!("device: {cpu} (CUDA not used: {why})"));
            Ok((cpu.clone(), cpu.to_string()))
        }
    }
}

/// Pooling layers a signal passes through before reaching `layer`.
fn pools_before(layer: Layer) -> u32 {
    Layer::all()
        .take(layer.index())
        .filter(|l| l.kind() == LayerKind::Pool)
        .count() as u32
}

fn planes_of(x: &Tensor) -> Planes {
    let d = x.dims();
    Planes {
        channels: d[1],
        height: d[2],
        width: d[3],
        data: x.to_vec(),
    }
}

fn starting_image(
    cfg: &Config,
    content: &Planes,
    init_file: Option<&Planes>,
    luminance: bool,
) -> Planes {
    let (w, h) = (content.width, content.height);
    match (&cfg.init, init_file) {
        (Init::File(_), Some(img)) => {
            let img = if luminance {
                split_luminance(img).0
            } else {
                img.clone()
            };
            img.resized(w, h)
        }
        (Init::Noise, _) => {
            let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
            let data = (0..content.channels * w * h)
                .map(|_| rng.random_range(0.0..255.0))
                .collect();
            Planes {
                data,
                ..content.clone()
            }
        }
        _ => content.clone(),
    }
}

/// `out.png` → `out_s3_0050.png`.
fn intermediate_path(output: &Path, scale: usize, iter: u32) -> PathBuf {
    let stem = output
        .file_stem()
        .map(|s| s.to_string_lossy())
        .unwrap_or_default();
    let ext = output
        .extension()
        .map(|s| s.to_string_lossy())
        .unwrap_or_default();
    output.with_file_name(format!("{stem}_s{scale}_{iter:04}.{ext}"))
}

/// Runs style transfer as configured. `interrupt` is polled between iterations.
pub fn run(cfg: &Config, progress: &mut dyn Progress, interrupt: &AtomicBool) -> Result<Outcome> {
    let started = Instant::now();
    let (device, device_name) = select_device(cfg.device, progress)?;

    let content_full = Planes::from_rgb(&load_rgb(&cfg.content, "content image")?);
    let styles_full: Vec<Planes> = cfg
        .styles
        .iter()
        .map(|p| load_rgb(p, "style image").map(|i| Planes::from_rgb(&i)))
        .collect::<Result<_>>()?;
    let init_file = match &cfg.init {
        Init::File(p) => Some(Planes::from_rgb(&load_rgb(p, "init image")?)),
        _ => None,
    };
    let vgg = match &cfg.weights {
        Some(p) => Vgg19::from_file(p, &device, cfg.pooling),
        None => Vgg19::embedded(&device, cfg.pooling),
    }
    .map_err(|e| anyhow::anyhow!("{e}"))?;

    // Every scale must be big enough to survive the pooling before the deepest layer.
    let deepest = cfg
        .content_layers
        .iter()
        .chain(&cfg.style_layers)
        .max()
        .copied()
        .expect("validated: layers exist");
    let min_side = 1usize << pools_before(deepest);
    let (out_w, out_h) = fit_longest_side(content_full.width, content_full.height, cfg.size);
    if out_w.min(out_h) < min_side {
        bail!(
            "--size {} gives a {out_w}×{out_h} image, too small for layer {deepest} (needs at least {min_side} px on the shorter side)",
            cfg.size
        );
    }
    let mut scales: Vec<(usize, usize)> = cfg
        .scale_sides
        .iter()
        .map(|&s| fit_longest_side(content_full.width, content_full.height, s))
        .filter(|&(w, h)| w.min(h) >= min_side)
        .collect();
    scales.dedup();

    // Colour preservation prepares the images once, at full resolution.
    let luminance = cfg.preserve_colors == ColorMode::Luminance;
    let (content_work, content_iq) = if luminance {
        let (y, iq) = split_luminance(&content_full);
        (y, Some(iq.resized(out_w, out_h)))
    } else {
        (content_full.clone(), None)
    };
    let styles_work: Vec<Planes> = styles_full
        .iter()
        .map(|s| match cfg.preserve_colors {
            ColorMode::None => s.clone(),
            ColorMode::Match => match_colors(s, &content_full),
            ColorMode::Luminance => match_luminance(&split_luminance(s).0, &content_work),
        })
        .collect();
    let to_output = |x: &Planes| {
        let x = x.resized(out_w, out_h);
        match &content_iq {
            Some(iq) => join_luminance(&x, iq).to_rgb(),
            None => x.to_rgb(),
        }
    };

    let channels = content_work.channels;
    let history = (LBFGS_HISTORY_BYTES / (2 * 4 * channels * out_w * out_h).max(1)).clamp(5, 100);
    let mut optimizer = match cfg.optimizer {
        OptimizerKind::Lbfgs => Optimizer::Lbfgs(Lbfgs::new(LbfgsConfig {
            lr: cfg.lr,
            history,
            ..Default::default()
        })),
        OptimizerKind::Adam => Optimizer::Adam(Adam::new(AdamConfig {
            lr: cfg.lr,
            ..Default::default()
        })),
    };
    let weights = Weights {
        content: cfg.content_weight,
        style: cfg.style_weight,
        tv: cfg.tv_weight,
        style_layers: cfg.style_layer_weights.clone(),
    };

    let mut image: Option<Planes> = None;
    let mut trace = Vec::new();
    let mut iter_ms = Vec::new();
    for (si, &(w, h)) in scales.iter().enumerate() {
        let (scale, final_scale) = (si + 1, si + 1 == scales.len());
        let content_s = content_work.resized(w, h);
        let style_side = match cfg.style_size {
            Some(s) => {
                ((s as f64 * w.max(h) as f64 / out_w.max(out_h) as f64).round() as u32).max(1)
            }
            None => w.max(h) as u32,
        };
        let mut style_s = Vec::new();
        for (s, path) in styles_work.iter().zip(&cfg.styles) {
            let (sw, sh) = fit_longest_side(s.width, s.height, style_side);
            if sw.min(sh) < min_side {
                bail!(
                    "style image {} becomes {sw}×{sh} at scale {scale}, too small for layer {deepest} (needs {min_side} px); raise --style-size",
                    path.display()
                );
            }
            style_s.push(s.resized(sw, sh));
        }
        let spec = LossSpec {
            content_layers: &cfg.content_layers,
            style_layers: &cfg.style_layers,
            weights: weights.clone(),
            luminance_only: luminance,
        };
        let objective =
            Objective::new(&vgg, &content_s, &style_s, &cfg.style_blend, spec, &device)?;
        let start = match image.take() {
            Some(prev) => prev.resized(w, h),
            None => starting_image(cfg, &content_s, init_file.as_ref(), luminance),
        };
        optimizer.reset();
        progress.scale_started(scale, scales.len(), w, h, cfg.iters);
        let scale_started = Instant::now();
        let mut on_iterate =
            |k: u32, x: &Tensor, eval: &Evaluation, step_ms: Option<f64>| -> Result<()> {
                if final_scale {
                    let p = &eval.parts;
                    trace.push(TracePoint {
                        iter: k,
                        total: eval.loss,
                        content: p[PART_CONTENT],
                        style: p[PART_STYLE],
                        tv: p[PART_TV],
                    });
                    iter_ms.extend(step_ms);
                }
                if k > 0 {
                    let it_per_s = k as f64 / scale_started.elapsed().as_secs_f64();
                    progress.iteration(&IterationInfo {
                        scale,
                        scales: scales.len(),
                        iter: k,
                        iters: cfg.iters,
                        total: eval.loss,
                        it_per_s,
                    });
                    if cfg.save_every.is_some_and(|n| k.is_multiple_of(n)) {
                        let path = intermediate_path(&cfg.output, scale, k);
                        save_atomic(&to_output(&planes_of(x)), &path)
                            .with_context(|| format!("writing {}", path.display()))?;
                    }
                }
                Ok(())
            };
        let evaluate = |x: &Tensor| objective.evaluate(x);
        let (best, end) = optimise_scale(
            to_tensor(&start, &device)?,
            &evaluate,
            &mut optimizer,
            cfg.iters,
            interrupt,
            &mut on_iterate,
        )?;
        progress.scale_finished();
        match (end, best) {
            (ScaleEnd::Finished, Some(best)) => image = Some(planes_of(&best)),
            (ScaleEnd::Interrupted, Some(best)) => {
                save_atomic(&to_output(&planes_of(&best)), &cfg.output)?;
                return Err(Interrupted {
                    saved: cfg.output.clone(),
                }
                .into());
            }
            (ScaleEnd::NonFinite { iter }, best) => {
                let saved = match best {
                    Some(b) => {
                        save_atomic(&to_output(&planes_of(&b)), &cfg.output)?;
                        Some(cfg.output.clone())
                    }
                    None => None,
                };
                return Err(NonFiniteLoss { scale, iter, saved }.into());
            }
            (_, None) => unreachable!("a finished or interrupted scale has a finite iterate"),
        }
        nst_cpu::release_scratch();
    }

    let result = to_output(&image.expect("at least one scale"));
    save_atomic(&result, &cfg.output)?;
    progress.note(&format!("wrote {} ({out_w}×{out_h})", cfg.output.display()));
    let timing = Timing {
        ms_per_iter_median: median(&iter_ms),
        total_s: started.elapsed().as_secs_f64(),
    };
    let outcome = Outcome {
        output_size: (out_w, out_h),
        trace,
        timing,
        device: device_name,
    };
    if let Some(path) = &cfg.report {
        let report = Report {
            trace: &outcome.trace,
            timing: outcome.timing.clone(),
            device: outcome.device.clone(),
            output: [out_w, out_h],
            settings: cfg,
        };
        let json = serde_json::to_string_pretty(&report)?;
        write_atomic(path, |w| Ok(std::io::Write::write_all(w, json.as_bytes())?))
            .with_context(|| format!("writing report {}", path.display()))?;
    }
    Ok(outcome)
}

/// Called with (k, x_k, f(x_k), ms of the step that produced x_k) for every finite iterate.
pub type IterateCallback<'a> = dyn FnMut(u32, &Tensor, &Evaluation, Option<f64>) -> Result<()> + 'a;

/// How the optimisation of one scale ended.
#[derive(Debug, PartialEq, Eq)]
pub enum ScaleEnd {
    /// All iterations ran, or the optimizer converged.
    Finished,
    /// The interrupt flag was raised.
    Interrupted,
    /// The loss or its gradient became NaN or infinite at this iterate.
    NonFinite {
        /// The iterate number.
        iter: u32,
    },
}

/// Optimises one scale from `start` for up to `iters` iterations and returns the best
/// iterate (lowest finite loss; `None` if even the start was non-finite) and how it ended.
/// `on_iterate(k, x_k, f(x_k), ms of the step that produced x_k)` sees every finite iterate,
/// k = 0 (the start) to `iters`.
pub fn optimise_scale(
    start: Tensor,
    evaluate: &dyn Fn(&Tensor) -> Result<Evaluation>,
    optimizer: &mut Optimizer,
    iters: u32,
    interrupt: &AtomicBool,
    on_iterate: &mut IterateCallback<'_>,
) -> Result<(Option<Tensor>, ScaleEnd)> {
    let mut x = start;
    let mut eval = evaluate(&x)?;
    let mut best: Option<(f64, Tensor)> = None;
    let mut step_ms = None;
    let mut k = 0u32;
    let end = loop {
        if !eval.loss.is_finite() || !eval.grad.all_finite() {
            break ScaleEnd::NonFinite { iter: k };
        }
        if best.as_ref().is_none_or(|(l, _)| eval.loss < *l) {
            best = Some((eval.loss, x.clone()));
        }
        on_iterate(k, &x, &eval, step_ms)?;
        if k == iters {
            break ScaleEnd::Finished;
        }
        if interrupt.load(Ordering::Relaxed) {
            break ScaleEnd::Interrupted;
        }
        let t0 = Instant::now();
        match optimizer.step(&x, &eval, &mut |x: &Tensor| evaluate(x))? {
            Step::Moved {
                x: next,
                eval: known,
            } => {
                x = next;
                eval = match known {
                    Some(e) => e,
                    None => evaluate(&x)?,
                };
            }
            Step::Converged => break ScaleEnd::Finished,
        }
        step_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
        k += 1;
    };
    Ok((best.map(|(_, x)| x), end))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// f(x) = Σ x², which turns NaN once any |x| drops below 0.3: the run must stop there and
    /// return the last finite iterate, which is also the best one.
    #[test]
    fn non_finite_stops_and_keeps_the_best_finite_iterate() {
        let evaluate = |x: &Tensor| -> Result<Evaluation> {
            let v = x.to_vec();
            let loss: f64 = v.iter().map(|&a| (a as f64).powi(2)).sum();
            let loss = if v.iter().any(|a| a.abs() < 0.3) {
                f64::NAN
            } else {
                loss
            };
            Ok(Evaluation::new(loss, x.scale(2.0)?))
        };
        let mut opt = Optimizer::Adam(Adam::new(AdamConfig {
            lr: 0.25,
            ..Default::default()
        }));
        let start = Tensor::from_vec(vec![1.0, -1.5], &[2], &Device::Cpu).unwrap();
        let mut seen = Vec::new();
        let mut on_iterate = |k: u32, x: &Tensor, e: &Evaluation, _: Option<f64>| -> Result<()> {
            seen.push((k, x.to_vec(), e.loss));
            Ok(())
        };
        let (best, end) = optimise_scale(
            start,
            &evaluate,
            &mut opt,
            50,
            &AtomicBool::new(false),
            &mut on_iterate,
        )
        .unwrap();
        let ScaleEnd::NonFinite { iter } = end else {
            panic!("expected a non-finite stop, got {end:?}")
        };
        assert_eq!(
            iter as usize,
            seen.len(),
            "stops at the first non-finite iterate"
        );
        let (_, last_x, last_loss) = seen.last().unwrap();
        assert!(seen
            .iter()
            .all(|(_, _, l)| l.is_finite() && *l >= *last_loss));
        assert_eq!(&best.unwrap().to_vec(), last_x);
    }

    #[test]
    fn interrupt_stops_before_the_next_step() {
        let evaluate =
            |x: &Tensor| -> Result<Evaluation> { Ok(Evaluation::new(x.dot(x)?, x.scale(2.0)?)) };
        let mut opt = Optimizer::Lbfgs(Lbfgs::new(LbfgsConfig::default()));
        let start = Tensor::from_vec(vec![3.0], &[1], &Device::Cpu).unwrap();
        let mut count = 0;
        let (best, end) = optimise_scale(
            start,
            &evaluate,
            &mut opt,
            10,
            &AtomicBool::new(true),
            &mut |_, _, _, _| {
                count += 1;
                Ok(())
            },
        )
        .unwrap();
        assert_eq!((end, count), (ScaleEnd::Interrupted, 1));
        assert_eq!(best.unwrap().to_vec(), vec![3.0]);
    }
}
