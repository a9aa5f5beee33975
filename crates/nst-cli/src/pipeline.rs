//! Style transfer end to end, as named stages: choose the device, load the inputs, plan the
//! scales, prepare colours, optimise each scale, write the result. Each stage is a small
//! function over the library crates; the maths lives in `nst-loss` (the objective),
//! `nst-optim` (the optimizers and the safeguarded loop), `nst-vgg` (the network and its
//! geometry) and `nst-image` (images and colour).
//!
//! Coarse-to-fine (Gatys et al. 2017; crowsonkb/style-transfer-pytorch): the image is first
//! optimised at a small size, then upsampled as the start of the next scale, √2 larger, up to
//! the output size. Large-scale structure settles cheaply at low resolution, so the final,
//! expensive scale needs fewer iterations.
//!
//! Nothing is lost: the best iterate (lowest finite loss) of the current scale is kept; on
//! interruption or a non-finite loss it is written to the output (atomically) before the run
//! stops with an error.

use crate::config::{ColorMode, Config, DeviceChoice, Init, OptimizerKind};
use crate::memory;
use crate::progress::{IterationInfo, Progress};
use crate::report::{median, Report, ScaleTiming, Timing, TracePoint};
use anyhow::{anyhow, bail, Context, Result};
use image::RgbImage;
use nst_image::color::{join_luminance, match_colors, match_luminance, split_luminance};
use nst_image::{fit_longest_side, load_rgb, save_atomic, write_atomic, Planes};
use nst_loss::{LossSpec, LossWeights, Objective, ObjectiveError};
use nst_optim::{
    minimize, Adam, AdamConfig, Evaluation, Lbfgs, LbfgsConfig, Optimizer, StopReason,
};
use nst_tensor::{interruptible, AlgorithmSearch, Device, Tensor, TensorError};
use nst_vgg::weights::ConvWeights;
use nst_vgg::{geometry, Layer, Vgg19, VggError};
use rand::{Rng, SeedableRng};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// L-BFGS history is capped so its (s, y) pairs stay within this many bytes.
const LBFGS_HISTORY_BYTES: usize = 2 << 30;
/// The most (s, y) pairs L-BFGS keeps (torch.optim.LBFGS's default `history_size`)...
const LBFGS_MOST_PAIRS: usize = 100;
/// ... and the fewest, at large sizes or where memory is short (see `memory::check`).
const LBFGS_FEWEST_PAIRS: usize = 5;

/// What a finished run produced.
#[derive(Debug)]
pub struct Outcome {
    /// Output width and height.
    pub output_size: (usize, usize),
    /// Loss at each iterate of the last scale that reached one: the final scale, or where
    /// the run was interrupted, the scale it stopped in (or the one before, if it stopped
    /// before its first iterate).
    pub trace: Vec<TracePoint>,
    /// Which scale `trace` is from (1 = the coarsest); `None` if no iterate was reached.
    pub trace_scale: Option<usize>,
    /// Timing.
    pub timing: Timing,
    /// The device used, in words.
    pub device: String,
    /// On a GPU: the most device memory allocated at once during the run.
    pub peak_device_bytes: Option<u64>,
    /// How the run spent memory (chosen by the preflight to fit what is available).
    pub memory_mode: memory::MemoryMode,
    /// The tile core side, where the network ran tile by tile to fit the memory.
    pub tile_side: Option<usize>,
    /// The most (s, y) pairs L-BFGS kept (`None` with Adam).
    pub lbfgs_history: Option<usize>,
    /// The memory preflight's estimate of the peak (device memory on a GPU).
    pub estimated_peak_bytes: Option<u64>,
}

/// The run was interrupted (Ctrl-C or SIGTERM); the best image so far was written.
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
        write!(f, " (try a smaller --lr, or smaller loss weights)")
    }
}

impl std::error::Error for NonFiniteLoss {}

/// A scale failed part-way (the GPU ran out of memory, a device error, an intermediate image
/// that could not be written); the best image so far was written first.
#[derive(Debug)]
pub struct FailedMidRun {
    /// 1-based scale.
    pub scale: usize,
    /// The last iteration reached within the scale.
    pub iter: u32,
    /// Why, in one line.
    pub reason: String,
    /// Where the best image so far went, if there was one.
    pub saved: Option<PathBuf>,
}

impl fmt::Display for FailedMidRun {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (scale {}, iteration {})",
            self.reason, self.scale, self.iter
        )?;
        match &self.saved {
            Some(p) => write!(f, "; wrote the best image so far to {}", p.display()),
            None => write!(f, "; no image was written"),
        }
    }
}

impl std::error::Error for FailedMidRun {}

/// Runs style transfer as configured. Once `interrupt` is raised, the run stops within one op
/// (see [`nst_tensor::interruptible`]) and writes the best image so far.
pub fn run(cfg: &Config, progress: &mut dyn Progress, interrupt: &AtomicBool) -> Result<Outcome> {
    let started = Instant::now();
    let chosen = select_device(cfg)?;
    let images = Images::load(cfg)?;
    let weights = read_weights(cfg)?;
    let (device, plan) = plan_on(cfg, chosen, &images.sizes(), progress, available_memory)?;
    if plan.scales.len() < cfg.scale_sides.len() {
        progress.note(&format!(
            "{} scales: smaller ones would be under the {} px a side that {} needs",
            plan.scales.len(),
            plan.deepest.min_input_side(),
            plan.deepest
        ));
    }
    apply_memory_mode(&plan, progress);
    let vgg = load_vgg(cfg, weights, &device)?;
    let prepared = Prepared::new(cfg, &images, plan.output);
    let history = lbfgs_pairs(prepared.content.channels, &plan);
    if let Some(pairs) = plan.shortened_lbfgs_pairs() {
        let asked = lbfgs_history(prepared.content.channels, plan.output).min(cfg.iters as usize);
        progress.warning(&format!(
            "memory is tight for this size: L-BFGS keeps {pairs} (s, y) pairs instead of {asked} (slightly slower convergence)"
        ));
    }
    let setup_s = started.elapsed().as_secs_f64();
    let optimised = optimise(cfg, &vgg, &images, &plan, &prepared, progress, interrupt)?;
    save_atomic(&prepared.to_output(&optimised.image), &cfg.output)?;
    let (out_w, out_h) = plan.output;
    if !optimised.interrupted {
        progress.note(&format!("wrote {} ({out_w}×{out_h})", cfg.output.display()));
    }
    let outcome = Outcome {
        output_size: plan.output,
        trace: optimised.trace,
        trace_scale: optimised.trace_scale,
        timing: Timing {
            ms_per_iter_median: optimised
                .scales
                .last()
                .map_or(0.0, |s| s.ms_per_iter_median),
            total_s: started.elapsed().as_secs_f64(),
            setup_s,
            scales: optimised.scales,
        },
        device: device.to_string(),
        peak_device_bytes: device.peak_device_memory_bytes(),
        memory_mode: plan.memory_mode(),
        tile_side: plan.tile_side(),
        // A scale of `iters` iterations makes at most `iters` pairs.
        lbfgs_history: (cfg.optimizer == OptimizerKind::Lbfgs)
            .then_some(history.min(cfg.iters as usize)),
        estimated_peak_bytes: plan.memory.map(|fit| fit.estimated_peak_bytes),
    };
    if let Some(path) = &cfg.report {
        write_report(cfg, &outcome, optimised.interrupted, path)?;
    }
    if optimised.interrupted {
        return Err(Interrupted {
            saved: cfg.output.clone(),
        }
        .into());
    }
    Ok(outcome)
}

/// The checks [`run`] makes before it starts optimising — the device, the scale plan and
/// the memory preflight — from the images' headers, without decoding them or optimising:
/// what a front end that queues runs (`nst serve`, which has decoded each upload once
/// already) calls when a run is submitted, so that a run that cannot work is refused at once
/// instead of failing when its turn comes.
pub fn preflight(cfg: &Config) -> Result<()> {
    let chosen = select_device(cfg)?;
    let quiet = &mut crate::progress::Quiet;
    plan_on(
        cfg,
        chosen,
        &InputSizes::read(cfg)?,
        quiet,
        available_memory,
    )?;
    Ok(())
}

/// Stages 3 and 3b: the scale plan, and the memory preflight for it on the device chosen,
/// with `available(device)`'s memory; then, for `--device auto`, the device is named (once
/// the plan stands, so that an error before it is the only line). With `auto`, a GPU whose
/// memory cannot hold the size in any way gives way to the CPU where the host's memory can:
/// `auto` is a promise to run on what works, and a run on the CPU, however much slower, is
/// better than none. It says so (a warning), and `--device cuda` refuses instead.
fn plan_on(
    cfg: &Config,
    chosen: ChosenDevice,
    sizes: &InputSizes,
    progress: &mut dyn Progress,
    available: impl Fn(&Device) -> Result<Option<(f64, memory::Pool)>>,
) -> Result<(Device, ScalePlan)> {
    let ChosenDevice {
        device,
        why_not_cuda,
    } = chosen;
    let auto = cfg.device == DeviceChoice::Auto;
    let refusal = match checked_plan(cfg, sizes, available(&device)?) {
        Ok(plan) => {
            if auto {
                progress.device_chosen(&device.to_string(), why_not_cuda.as_deref());
            }
            return Ok((device, plan));
        }
        Err(e) => e,
    };
    if !auto || device.is_cpu() || !refusal.is::<memory::DoesNotFit>() {
        return Err(refusal);
    }
    // Where the host cannot hold it either, the GPU's refusal stands (auto chose the GPU).
    let Ok(plan) = checked_plan(cfg, sizes, available(&Device::Cpu)?) else {
        return Err(refusal);
    };
    progress.warning(&format!(
        "{refusal}; --device auto runs it on the CPU instead, which is much slower (--device cuda insists on the GPU)"
    ));
    progress.device_chosen(&Device::Cpu.to_string(), None);
    Ok((Device::Cpu, plan))
}

/// The memory a run on `device` may use, and which: the host's for the CPU, the GPU's
/// otherwise (`None` where it cannot be told).
fn available_memory(device: &Device) -> Result<Option<(f64, memory::Pool)>> {
    Ok(if device.is_cpu() {
        memory::available_bytes()?.map(|a| (a, memory::Pool::Host))
    } else {
        let cudnn = device.conv_library().is_some();
        memory::available_gpu_bytes(device.available_device_memory_bytes())?
            .map(|a| (a, memory::Pool::Gpu { cudnn }))
    })
}

/// The scale plan, and the memory preflight for it where the `available` memory is known.
fn checked_plan(
    cfg: &Config,
    sizes: &InputSizes,
    available: Option<(f64, memory::Pool)>,
) -> Result<ScalePlan> {
    let mut plan = ScalePlan::new(cfg, sizes)?;
    if let Some(available) = available {
        let (fit, whole_scales) = memory_preflight(cfg, sizes, &plan, available)?;
        (plan.memory, plan.whole_scales) = (Some(fit), whole_scales);
    }
    Ok(plan)
}

/// Sets the allocator for the run's memory mode (every run sets it, so a server's lean job
/// does not make the next one lean), and says when memory is tight.
fn apply_memory_mode(plan: &ScalePlan, progress: &mut dyn Progress) {
    let lean = plan.memory_mode() == memory::MemoryMode::Lean;
    nst_tensor::allocator::return_freed_memory_at_once(lean);
    nst_tensor::cpu_backend::keep_transformed_kernels(!lean);
    if let Some(side) = plan.tile_side() {
        let (w, h) = plan.output;
        let tiles = nst_vgg::tiles::tiles(plan.deepest, h, w, side).map_or(0, |t| t.len());
        let margin = nst_vgg::tiles::tile_halo(plan.deepest);
        let tiled_scales = match plan.scales.len() - plan.whole_scales {
            1 => "the final scale".to_string(),
            n => format!("the last {n} scales"),
        };
        progress.warning(&format!(
            "memory is tight for this size: the network runs tile by tile at {tiled_scales} ({tiles} tiles of up to {side} px a side at the final scale, each with a margin of {margin} px; the same result), about 3× the time per iteration"
        ));
    } else if lean {
        progress.warning(
            "memory is tight for this size: lean mode (relu1_1 recomputed, freed memory returned at once, convolution kernels transformed at every use), up to 1.8× the time per iteration",
        );
    }
}

/// The device stage 1 chose, and for `--device auto`, why not CUDA where it is not.
struct ChosenDevice {
    device: Device,
    why_not_cuda: Option<String>,
}

/// Stage 1: the device, as asked (`auto` says what it chose and why, once the plan stands:
/// see [`plan_on`]).
fn select_device(cfg: &Config) -> Result<ChosenDevice> {
    let (device, why_not_cuda) = match cfg.device {
        DeviceChoice::Cpu => (Device::Cpu, None),
        DeviceChoice::Cuda => {
            let device = Device::cuda(0).map_err(|e| anyhow!("--device cuda: {e}"))?;
            (device, None)
        }
        DeviceChoice::CudaEmulated => {
            let device =
                Device::cuda_emulated().map_err(|e| anyhow!("--device cuda-emulated: {e}"))?;
            (device, None)
        }
        DeviceChoice::Auto => Device::best_available(),
    };
    Ok(ChosenDevice {
        device: device
            .with_precision(cfg.precision.precision())
            .with_layout(cfg.layout),
        why_not_cuda,
    })
}

/// Stage 2: the images as decoded (full resolution).
struct Images {
    content: Planes,
    styles: Vec<Planes>,
    init: Option<Planes>,
}

impl Images {
    fn load(cfg: &Config) -> Result<Self> {
        let content = Planes::from_rgb(&load_rgb(&cfg.content, "content image")?);
        let styles = cfg
            .styles
            .iter()
            .map(|p| load_rgb(p, "style image").map(|i| Planes::from_rgb(&i)))
            .collect::<Result<_, _>>()?;
        let init = match &cfg.init {
            Init::File(p) => Some(Planes::from_rgb(&load_rgb(p, "init image")?)),
            _ => None,
        };
        Ok(Self {
            content,
            styles,
            init,
        })
    }

    fn sizes(&self) -> InputSizes {
        InputSizes {
            content: (self.content.width, self.content.height),
            styles: self.styles.iter().map(|s| (s.width, s.height)).collect(),
        }
    }
}

/// The (width, height) of the input images: all that planning and the memory preflight need.
struct InputSizes {
    content: (usize, usize),
    styles: Vec<(usize, usize)>,
}

impl InputSizes {
    /// From the files' headers (nothing is decoded).
    fn read(cfg: &Config) -> Result<Self> {
        let size = |path: &Path, what: &str| -> Result<(usize, usize)> {
            let (w, h) = image::ImageReader::open(path)
                .and_then(|r| r.with_guessed_format())
                .map_err(anyhow::Error::from)
                .and_then(|r| Ok(r.into_dimensions()?))
                .with_context(|| format!("cannot read the size of {what} {}", path.display()))?;
            Ok((w as usize, h as usize))
        };
        Ok(Self {
            content: size(&cfg.content, "content image")?,
            styles: (cfg.styles.iter())
                .map(|p| size(p, "style image"))
                .collect::<Result<_>>()?,
        })
    }

    fn pixels(&self) -> usize {
        std::iter::once(&self.content)
            .chain(&self.styles)
            .map(|(w, h)| w * h)
            .sum()
    }
}

/// Stage 2b: other weights than the shipped ones (`--weights`), read and checked before the
/// plan so that a bad file is the only thing said.
fn read_weights(cfg: &Config) -> Result<Option<Vec<ConvWeights>>> {
    let Some(path) = &cfg.weights else {
        return Ok(None);
    };
    let bytes =
        std::fs::read(path).map_err(|e| anyhow!("cannot read weights {}: {e}", path.display()))?;
    let weights =
        nst_vgg::weights::load(&bytes).map_err(|e| anyhow!("--weights {}: {e}", path.display()))?;
    Ok(Some(weights))
}

/// Stage 2c: the network on the device, with the `weights` read in stage 2b, else the
/// shipped ones (what can fail here is the device: the file was checked in stage 2b).
fn load_vgg(cfg: &Config, weights: Option<Vec<ConvWeights>>, device: &Device) -> Result<Vgg19> {
    let vgg = match weights {
        Some(weights) => Vgg19::from_weights(weights, device, cfg.pooling),
        None => Vgg19::embedded(device, cfg.pooling),
    };
    Ok(vgg
        .map_err(|e| anyhow!("{e}"))?
        .with_conv_algorithm(cfg.conv_algorithm))
}

/// Stage 3: the output size and the coarse-to-fine scales, each big enough to survive the
/// poolings before the deepest loss layer, with the style images checked at every scale.
#[derive(Debug)]
struct ScalePlan {
    output: (usize, usize),
    /// (width, height) of each scale, coarse to fine.
    scales: Vec<(usize, usize)>,
    deepest: Layer,
    /// What the memory preflight settled on (`None` where the memory available cannot be
    /// read, and the preflight does not run).
    memory: Option<memory::Fit>,
    /// Where the final scale runs in tiles: how many scales, from the coarsest, the memory
    /// holds whole (they run whole, in one pass instead of two).
    whole_scales: usize,
}

impl ScalePlan {
    /// Fast unless the preflight found that only the lean mode fits.
    fn memory_mode(&self) -> memory::MemoryMode {
        self.memory.map_or(memory::MemoryMode::Fast, |fit| fit.mode)
    }

    /// The tile core side where the preflight found that only tiles fit the final scale
    /// (see `nst_loss::Objective::new_tiled`).
    fn tile_side(&self) -> Option<usize> {
        self.memory?.tile_side
    }

    /// The tile core side at scale `scale` (1 = the coarsest): the final scale's, except at
    /// the scales the memory holds whole.
    fn tile_side_at(&self, scale: usize) -> Option<usize> {
        self.tile_side().filter(|_| scale > self.whole_scales)
    }

    /// Fewer L-BFGS pairs than the size allows, where the preflight found that only that
    /// fits.
    fn shortened_lbfgs_pairs(&self) -> Option<usize> {
        self.memory?.shortened_history_vectors.map(|v| v / 2)
    }

    fn new(cfg: &Config, sizes: &InputSizes) -> Result<Self> {
        let (content_w, content_h) = sizes.content;
        let all_layers = [&cfg.content_layers[..], &cfg.style_layers[..]].concat();
        let deepest = geometry::deepest(&all_layers).context("no loss layers")?;
        let min_side = deepest.min_input_side();
        let fit = |side| fit_longest_side(content_w, content_h, side);
        let output = fit(cfg.size);
        if output.0.min(output.1) < min_side {
            bail!(
                "--size {} gives a {}×{} image, too small for layer {deepest} (needs at least {min_side} px on the shorter side)",
                cfg.size,
                output.0,
                output.1
            );
        }
        let mut scales: Vec<(usize, usize)> = cfg
            .scale_sides
            .iter()
            .map(|&s| fit(s))
            .filter(|&(w, h)| w.min(h) >= min_side)
            .collect();
        scales.dedup();
        let plan = Self {
            output,
            scales,
            deepest,
            memory: None,
            whole_scales: 0,
        };
        for (si, &(w, h)) in plan.scales.iter().enumerate() {
            for (&style, path) in sizes.styles.iter().zip(&cfg.styles) {
                let (sw, sh) = plan.style_size(cfg, style, w.max(h));
                if sw.min(sh) < min_side {
                    bail!(
                        "style image {} becomes {sw}×{sh} at scale {}, too small for layer {deepest} (needs {min_side} px); raise --style-size",
                        path.display(),
                        si + 1,
                    );
                }
            }
        }
        Ok(plan)
    }

    /// The size of `style` at a scale of longest side `side`.
    fn style_size(
        &self,
        cfg: &Config,
        (style_w, style_h): (usize, usize),
        side: usize,
    ) -> (usize, usize) {
        let out_side = self.output.0.max(self.output.1) as f64;
        let style_side = match cfg.style_size {
            Some(s) => ((s as f64 * side as f64 / out_side).round() as u32).max(1),
            None => side as u32,
        };
        fit_longest_side(style_w, style_h, style_side)
    }
}

/// Stage 4: colour preservation, done once at full resolution. The working images are what
/// the optimisation sees (luminance only, or the style recoloured); `to_output` turns a
/// working image back into the output picture.
struct Prepared {
    content: Planes,
    styles: Vec<Planes>,
    /// The content's I and Q channels at the output size (luminance-only transfer).
    content_iq: Option<Planes>,
    output: (usize, usize),
}

impl Prepared {
    fn new(cfg: &Config, inputs: &Images, output: (usize, usize)) -> Self {
        let luminance = cfg.preserve_colors == ColorMode::Luminance;
        let (content, content_iq) = if luminance {
            let (y, iq) = split_luminance(&inputs.content);
            (y, Some(iq.resized(output.0, output.1)))
        } else {
            (inputs.content.clone(), None)
        };
        let styles = inputs
            .styles
            .iter()
            .map(|s| match cfg.preserve_colors {
                ColorMode::None => s.clone(),
                ColorMode::Match => match_colors(s, &inputs.content),
                ColorMode::Luminance => match_luminance(&split_luminance(s).0, &content),
            })
            .collect();
        Self {
            content,
            styles,
            content_iq,
            output,
        }
    }

    fn luminance_only(&self) -> bool {
        self.content_iq.is_some()
    }

    /// The picture to write for working image `x` (any scale).
    fn to_output(&self, x: &Planes) -> RgbImage {
        let x = x.resized(self.output.0, self.output.1);
        match &self.content_iq {
            Some(iq) => join_luminance(&x, iq).to_rgb(),
            None => x.to_rgb(),
        }
    }

    /// The first scale's starting image; `content` is the working content at that scale.
    fn start(&self, cfg: &Config, init: Option<&Planes>, content: &Planes) -> Planes {
        let (w, h) = (content.width, content.height);
        match (&cfg.init, init) {
            (Init::File(_), Some(img)) => {
                let img = if self.luminance_only() {
                    split_luminance(img).0
                } else {
                    img.clone()
                };
                img.resized(w, h)
            }
            (Init::Noise, _) => {
                let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
                let channels = self.content.channels;
                Planes {
                    channels,
                    height: h,
                    width: w,
                    data: (0..channels * w * h)
                        .map(|_| rng.random_range(0.0..255.0))
                        .collect(),
                }
            }
            _ => content.clone(),
        }
    }
}

/// What stage 5 produced: the final working image, the last trace and the step times.
struct Optimised {
    /// The result, or where the run was interrupted, the best image so far.
    image: Planes,
    /// The losses of the last scale that reached an iterate (see [`Outcome::trace`]).
    trace: Vec<TracePoint>,
    trace_scale: Option<usize>,
    scales: Vec<ScaleTiming>,
    /// Stopped by Ctrl-C, SIGTERM or a cancelled job: the image, trace and timings are what
    /// there was by then (the report is written all the same).
    interrupted: bool,
}

/// Writes `best` as the output and returns the error that reports it (or the write's
/// failure, if even that failed).
fn keep_best_and_fail(
    cfg: &Config,
    prepared: &Prepared,
    best: &Planes,
    scale: usize,
    iter: u32,
    reason: String,
) -> anyhow::Error {
    if let Err(e) = save_atomic(&prepared.to_output(best), &cfg.output) {
        return anyhow::Error::new(e).context(format!(
            "{reason}; and the best image so far could not be written"
        ));
    }
    FailedMidRun {
        scale,
        iter,
        reason,
        saved: Some(cfg.output.clone()),
    }
    .into()
}

/// Stage 5: coarse to fine, each scale starting from the previous one's best image.
fn optimise(
    cfg: &Config,
    vgg: &Vgg19,
    images: &Images,
    plan: &ScalePlan,
    prepared: &Prepared,
    progress: &mut dyn Progress,
    interrupt: &AtomicBool,
) -> Result<Optimised> {
    let device = vgg.device();
    let mut optimizer = new_optimizer(cfg, prepared.content.channels, plan);
    let spec = LossSpec {
        content_layers: cfg.content_layers.clone(),
        style_layers: cfg.style_layers.clone(),
        weights: LossWeights {
            content: cfg.content_weight,
            style: cfg.style_weight,
            tv: cfg.tv_weight,
            style_layers: cfg.style_layer_weights.clone(),
        },
    };
    let mut image: Option<Planes> = None;
    let (mut trace, mut scale_timings) = (Vec::new(), Vec::new());
    let mut trace_scale = None;
    for (si, &(w, h)) in plan.scales.iter().enumerate() {
        let (scale, final_scale) = (si + 1, si + 1 == plan.scales.len());
        let scale_setup = Instant::now();
        let previous = image.take();
        // An error setting up a later scale (the GPU out of memory at the larger size) keeps
        // the previous scale's result as the output.
        let keep_previous = |e: anyhow::Error| match &previous {
            Some(prev) => keep_best_and_fail(cfg, prepared, prev, scale, 0, format!("{e:#}")),
            None => e,
        };
        // The targets' features are computed once: by default they take heuristic picks.
        let (targets_device, image_device) = algorithm_search(cfg, device, final_scale);
        let styles = styles_at_scale(cfg, plan, prepared, w.max(h), &targets_device)
            .map_err(keep_previous)?;
        let content_planes = prepared.content.resized(w, h);
        let content = content_planes
            .to_tensor(&targets_device)
            .map_err(|e| keep_previous(e.into()))?;
        let start = match &previous {
            Some(prev) => prev.resized(w, h),
            None => prepared.start(cfg, images.init.as_ref(), &content_planes),
        };
        // Interrupted while the scale is set up (its targets take seconds to minutes at large
        // sizes, and stop within one op): stop before the first evaluation, which takes as
        // long again. The best so far is the previous scale's result, or, at the first
        // scale, the start (what evaluating it first would have kept).
        let objective = interruptible(interrupt, || match plan.tile_side_at(scale) {
            Some(side) => {
                Objective::new_tiled(vgg, &content, &styles, &cfg.style_blend, spec.clone(), side)
            }
            None => Objective::new(vgg, &content, &styles, &cfg.style_blend, spec.clone()),
        })
        .map_err(anyhow::Error::from);
        let objective = match objective {
            Ok(objective) if !interrupt.load(Ordering::Relaxed) => {
                objective.recomputing_first_layer(plan.memory_mode() == memory::MemoryMode::Lean)
            }
            Err(e) if !is_interruption(&e) => return Err(keep_previous(e)),
            // Interrupted: set up in full just before the flag, or refused an op after it.
            _ => {
                return Ok(Optimised {
                    image: previous.clone().unwrap_or(start),
                    trace,
                    trace_scale,
                    scales: scale_timings,
                    interrupted: true,
                });
            }
        };
        // This scale's inputs live on in the targets: free them before optimising (a run in
        // tiles has room for one tile's activations, not for spare images).
        drop((content, styles, content_planes));
        optimizer.reset();
        progress.scale_started(scale, plan.scales.len(), w, h, cfg.iters);
        let scale_started = Instant::now();
        let (mut steps_ms, mut before_first_iter_s) = (Vec::new(), 0.0);
        let mut on_iterate = |k: u32, x: &Tensor, eval: &Evaluation, step_ms: Option<f64>| {
            if k == 0 {
                before_first_iter_s = scale_setup.elapsed().as_secs_f64();
            }
            steps_ms.extend(step_ms);
            if k == 0 {
                // Each scale's trace replaces the last one's: the report keeps the final
                // scale's or, where the run is interrupted, that of the scale it stopped in.
                trace.clear();
                trace_scale = Some(scale);
            }
            trace.push(trace_point(k, eval));
            if k > 0 {
                let info = IterationInfo {
                    scale,
                    scales: plan.scales.len(),
                    iter: k,
                    iters: cfg.iters,
                    total: eval.loss,
                    it_per_s: k as f64 / scale_started.elapsed().as_secs_f64(),
                };
                progress.iteration(&info);
                let preview = progress.wants_preview(&info);
                let save = cfg.save_every.is_some_and(|n| k.is_multiple_of(n));
                if preview || save {
                    // One copy from the device and one resize for both.
                    let picture = prepared.to_output(&Planes::from_tensor(x)?);
                    if preview {
                        progress.preview(&info, &picture);
                    }
                    if save {
                        let path = crate::paths::snapshot_path(&cfg.output, scale, k);
                        save_atomic(&picture, &path)?;
                    }
                }
            }
            Ok(())
        };
        let evaluate = |x: &Tensor| -> Result<Evaluation> { evaluation(&objective, x) };
        let start_tensor = start
            .to_tensor(&image_device)
            .map_err(|e| keep_previous(e.into()))?;
        let run = minimize(
            start_tensor,
            &evaluate,
            &mut optimizer,
            cfg.iters,
            interrupt,
            &mut on_iterate,
        )
        .map_err(keep_previous)?;
        progress.scale_finished();
        if run.stop == StopReason::Finished && steps_ms.len() < cfg.iters as usize {
            // L-BFGS found nothing more to gain: say so, or a quick finish looks like a fault.
            progress.note(&format!(
                "scale {scale}: converged after {} of {} iterations",
                steps_ms.len(),
                cfg.iters
            ));
        }
        scale_timings.push(ScaleTiming {
            width: w,
            height: h,
            iterations: steps_ms.len(),
            total_s: scale_setup.elapsed().as_secs_f64(),
            before_first_iter_s,
            ms_per_iter_median: median(&steps_ms),
        });
        let stop = match (run.stop, &run.error) {
            // Something other than the flag failed as it was raised (the GPU out of memory
            // at that moment): report that, keeping the best image as for any failure.
            (StopReason::Interrupted, Some(e)) if !is_interruption(e) => StopReason::Failed {
                iter: steps_ms.len() as u32,
            },
            (stop, _) => stop,
        };
        if let StopReason::Failed { iter } = stop {
            // This scale's best iterate, else the previous scale's result: the work done so
            // far, as the output, before the error is reported.
            let reason = run
                .error
                .map_or_else(|| "unknown error".into(), |e| format!("{e:#}"));
            let best = run.best.as_ref().map(Planes::from_tensor).transpose();
            return Err(match (best, &previous) {
                (Ok(Some(b)), _) => keep_best_and_fail(cfg, prepared, &b, scale, iter, reason),
                (_, Some(prev)) => keep_best_and_fail(cfg, prepared, prev, scale, iter, reason),
                (_, None) => FailedMidRun {
                    scale,
                    iter,
                    reason,
                    saved: None,
                }
                .into(),
            });
        }
        let best = run.best.as_ref().map(Planes::from_tensor).transpose()?;
        match (stop, best) {
            (StopReason::Finished, Some(best)) => image = Some(best),
            (StopReason::Interrupted, best) => {
                // Interrupted during the start's evaluation, the scale has no iterate: the
                // best so far is its start, as above.
                return Ok(Optimised {
                    image: best.or(previous).unwrap_or(start),
                    trace,
                    trace_scale,
                    scales: scale_timings,
                    interrupted: true,
                });
            }
            (StopReason::NonFinite { iter }, best) => {
                let saved = match best {
                    Some(b) => {
                        save_atomic(&prepared.to_output(&b), &cfg.output)?;
                        Some(cfg.output.clone())
                    }
                    None => None,
                };
                return Err(NonFiniteLoss { scale, iter, saved }.into());
            }
            (StopReason::Failed { .. }, _) => unreachable!("handled above"),
            (StopReason::Finished, None) => unreachable!("a finished run has a finite iterate"),
        }
        // The next scale has other shapes: let go of this scale's tensors (its targets, the
        // last iterates, the optimizer's history: up to 2 GiB), then of the memory they leave
        // cached. Trimmed with them alive, as it was, the cache kept them all through the
        // next scale, in sizes that scale's larger tensors cannot reuse.
        drop((run, objective));
        optimizer.reset();
        device.release_cached_memory();
    }
    Ok(Optimised {
        image: image.context("no scale to optimise")?,
        trace,
        trace_scale,
        scales: scale_timings,
        interrupted: false,
    })
}

/// The devices for a scale's targets (the content's and styles' features, computed once) and
/// for its image (forward and backward every iteration): on a GPU, the image's convolutions
/// search for their fastest algorithms at the final scale only, and everything else takes
/// cuDNN's heuristic pick (see `nst_cuda::conv_choice`). A search runs every candidate
/// algorithm of each new shape once; the final scale's iterations pay for it, an early
/// scale's far fewer and smaller ones may not. With `search_every_scale`, every shape
/// searches, the targets' too (as before this rule, and as PyTorch's `cudnn.benchmark` does).
fn algorithm_search(cfg: &Config, device: &Device, final_scale: bool) -> (Device, Device) {
    let measured = device.with_algorithm_search(AlgorithmSearch::Measured);
    if cfg.search_every_scale {
        return (measured.clone(), measured);
    }
    let heuristic = device.with_algorithm_search(AlgorithmSearch::Heuristic);
    let image = if final_scale {
        measured
    } else {
        heuristic.clone()
    };
    (heuristic, image)
}

/// Stage 3b: stop before optimising when the final scale cannot fit in memory, the host's or
/// the GPU's (see [`crate::memory`]). Where the final scale needs tiles, also how many scales
/// from the coarsest fit whole, in the mode and with the history chosen.
fn memory_preflight(
    cfg: &Config,
    sizes: &InputSizes,
    plan: &ScalePlan,
    (available, pool): (f64, memory::Pool),
) -> Result<(memory::Fit, usize)> {
    let (content_w, content_h) = sizes.content;
    let input_pixels = sizes.pixels();
    let channels = if cfg.preserve_colors == ColorMode::Luminance {
        1
    } else {
        3
    };
    let workload_at = |size: (usize, usize)| {
        let (history_vectors, fewest_history_vectors) = match cfg.optimizer {
            OptimizerKind::Lbfgs => {
                let pairs = lbfgs_history(channels, size).min(cfg.iters as usize);
                (2 * pairs, 2 * pairs.min(LBFGS_FEWEST_PAIRS))
            }
            OptimizerKind::Adam => (2, 2),
        };
        let content_target_elems = cfg
            .content_layers
            .iter()
            .map(|&l| geometry::feature_elems(l, size.1, size.0))
            .sum();
        memory::Workload {
            deepest: plan.deepest,
            size,
            channels,
            history_vectors,
            fewest_history_vectors,
            input_pixels,
            content_target_elems,
        }
    };
    let workload = |side: u32| workload_at(fit_longest_side(content_w, content_h, side));
    let fit = memory::check(cfg.size, available, pool, workload)?;
    let whole_scales = match fit.tile_side {
        None => plan.scales.len(),
        Some(_) => {
            // The optimizer keeps the final scale's history at every scale.
            let history_vectors = fit
                .shortened_history_vectors
                .unwrap_or(workload(cfg.size).history_vectors);
            let fits_whole = |&&size: &&(usize, usize)| {
                let w = memory::Workload {
                    history_vectors,
                    ..workload_at(size)
                };
                pool.estimate(&w, fit.mode) <= available
            };
            plan.scales.iter().take_while(fits_whole).count()
        }
    };
    Ok((fit, whole_scales))
}

/// L-BFGS keeps as many (s, y) pairs as fit [`LBFGS_HISTORY_BYTES`] at this size
/// ([`LBFGS_FEWEST_PAIRS`] to [`LBFGS_MOST_PAIRS`]).
fn lbfgs_history(channels: usize, (w, h): (usize, usize)) -> usize {
    let pair_bytes = (2 * 4 * channels * w * h).max(1);
    (LBFGS_HISTORY_BYTES / pair_bytes).clamp(LBFGS_FEWEST_PAIRS, LBFGS_MOST_PAIRS)
}

/// The (s, y) pairs L-BFGS keeps at most in this run: as many as its output size allows,
/// or fewer where the preflight found that only fewer fit the memory.
fn lbfgs_pairs(channels: usize, plan: &ScalePlan) -> usize {
    let history = lbfgs_history(channels, plan.output);
    plan.shortened_lbfgs_pairs()
        .map_or(history, |pairs| pairs.min(history))
}

/// The optimizer as configured, for the plan's output size (and its memory).
fn new_optimizer(cfg: &Config, channels: usize, plan: &ScalePlan) -> Optimizer {
    match cfg.optimizer {
        OptimizerKind::Lbfgs => Optimizer::Lbfgs(Lbfgs::new(LbfgsConfig {
            lr: cfg.lr,
            history: lbfgs_pairs(channels, plan),
            ..Default::default()
        })),
        OptimizerKind::Adam => Optimizer::Adam(Adam::new(AdamConfig {
            lr: cfg.lr,
            ..Default::default()
        })),
    }
}

/// The style images resized for a scale of longest side `side`, as tensors (their sizes were
/// checked by [`ScalePlan::new`]).
fn styles_at_scale(
    cfg: &Config,
    plan: &ScalePlan,
    prepared: &Prepared,
    side: usize,
    device: &Device,
) -> Result<Vec<Tensor>> {
    prepared
        .styles
        .iter()
        .map(|s| {
            let (sw, sh) = plan.style_size(cfg, (s.width, s.height), side);
            Ok(s.resized(sw, sh).to_tensor(device)?)
        })
        .collect()
}

/// Whether `e` is an op refusing to run because the interrupt flag was raised
/// ([`TensorError::Interrupted`], as it comes through the losses and the network).
fn is_interruption(e: &anyhow::Error) -> bool {
    let interrupted = |t: &TensorError| *t == TensorError::Interrupted;
    e.chain().any(|cause| {
        let vgg = |v: &VggError| matches!(v, VggError::Tensor(t) if interrupted(t));
        cause.downcast_ref::<TensorError>().is_some_and(interrupted)
            || cause.downcast_ref::<VggError>().is_some_and(vgg)
            || match cause.downcast_ref::<ObjectiveError>() {
                Some(ObjectiveError::Tensor(t)) => interrupted(t),
                Some(ObjectiveError::Vgg(v)) => vgg(v),
                _ => false,
            }
    })
}

/// The objective's value as the optimizers see it, with its terms for the report.
fn evaluation(objective: &Objective, x: &Tensor) -> Result<Evaluation> {
    let v = objective.evaluate(x)?;
    Ok(Evaluation {
        loss: v.total,
        grad: v.grad,
        parts: vec![v.content, v.style, v.tv],
    })
}

fn trace_point(iter: u32, eval: &Evaluation) -> TracePoint {
    let p = &eval.parts;
    TracePoint {
        iter,
        total: eval.loss,
        content: p[0],
        style: p[1],
        tv: p[2],
    }
}

/// Stage 6 (optional): the JSON report, written atomically.
fn write_report(cfg: &Config, outcome: &Outcome, interrupted: bool, path: &Path) -> Result<()> {
    let heap_peak = nst_tensor::memory_trace::peak();
    let report = Report {
        interrupted,
        trace: &outcome.trace,
        trace_scale: outcome.trace_scale,
        timing: outcome.timing.clone(),
        device: outcome.device.clone(),
        output: [outcome.output_size.0, outcome.output_size.1],
        peak_rss_bytes: nst_tensor::allocator::resident_bytes().map(|(_, peak)| peak),
        peak_device_bytes: outcome.peak_device_bytes,
        peak_heap_bytes: heap_peak.as_ref().map(|(bytes, _)| *bytes),
        peak_heap_at: heap_peak.map(|(_, at)| at),
        memory_mode: outcome.memory_mode.name(),
        tile_side: outcome.tile_side,
        lbfgs_history: outcome.lbfgs_history,
        estimated_peak_bytes: outcome.estimated_peak_bytes,
        settings: cfg,
    };
    let json = serde_json::to_string_pretty(&report)?;
    Ok(write_atomic(path, |w| {
        std::io::Write::write_all(w, json.as_bytes())
    })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::args::Args;
    use clap::Parser;

    const GIB: f64 = (1u64 << 30) as f64;

    /// The flag's refusal is recognised however the losses and the network wrapped it, and
    /// with context added; other failures are not.
    #[test]
    fn interruptions_are_told_from_other_failures() {
        let interrupted = TensorError::Interrupted;
        let wrapped = [
            anyhow::Error::from(interrupted.clone()),
            ObjectiveError::Tensor(interrupted.clone()).into(),
            ObjectiveError::Vgg(VggError::Tensor(interrupted.clone())).into(),
            VggError::Tensor(interrupted).into(),
        ];
        for e in wrapped {
            assert!(is_interruption(&e.context("scale 2")));
        }
        let oom = TensorError::CudaFailed {
            message: "out of memory".into(),
        };
        assert!(!is_interruption(&ObjectiveError::Tensor(oom).into()));
        assert!(!is_interruption(&anyhow!("interrupted")));
    }

    /// Records what a run says.
    #[derive(Default)]
    struct Said(Vec<String>);

    impl Progress for Said {
        fn scale_started(&mut self, _: usize, _: usize, _: usize, _: usize, _: u32) {}
        fn iteration(&mut self, _: &IterationInfo) {}
        fn scale_finished(&mut self) {}
        fn note(&mut self, msg: &str) {
            self.0.push(msg.to_string());
        }
    }

    fn config(device: &str, size: &str) -> Config {
        let args = ["nst", "-c", "c.png", "-s", "s.png", "-o", "o.png"];
        Args::try_parse_from(args.iter().chain(&["--device", device, "--size", size]))
            .unwrap()
            .into_config()
            .unwrap()
    }

    /// `gpu`, as `--device auto` or `cuda` would have chosen it.
    fn chosen(gpu: &Device) -> ChosenDevice {
        ChosenDevice {
            device: gpu.clone(),
            why_not_cuda: None,
        }
    }

    /// A GPU with `gpu` bytes free (im2col path) beside a host with `host` bytes available.
    fn memory(gpu: f64, host: f64) -> impl Fn(&Device) -> Result<Option<(f64, memory::Pool)>> {
        move |device: &Device| {
            Ok(Some(if device.is_cpu() {
                (host, memory::Pool::Host)
            } else {
                (gpu, memory::Pool::Gpu { cudnn: false })
            }))
        }
    }

    /// Where the final scale runs in tiles, the coarse scales that fit whole run whole: more
    /// of them with more memory, never the final one.
    #[test]
    fn tiles_only_at_the_scales_that_do_not_fit_whole() {
        let sizes = InputSizes {
            content: (3000, 1995),
            styles: vec![(1024, 800)],
        };
        let cfg = config("cpu", "2048");
        let plan = |gib: f64| checked_plan(&cfg, &sizes, Some((gib * GIB, memory::Pool::Host)));
        let (tight, roomier) = (plan(1.4).unwrap(), plan(2.2).unwrap());
        for p in [&tight, &roomier] {
            let last = p.scales.len();
            assert!(p.tile_side().is_some(), "{:?}", p.memory);
            assert_eq!(
                (p.tile_side_at(1), p.tile_side_at(last)),
                (None, p.tile_side())
            );
            assert!((1..last).contains(&p.whole_scales), "{}", p.whole_scales);
        }
        assert!(roomier.whole_scales > tight.whole_scales);
        // With room for the whole image, every scale runs whole.
        let ample = plan(64.0).unwrap();
        assert_eq!(
            (ample.tile_side(), ample.whole_scales),
            (None, ample.scales.len())
        );
    }

    #[test]
    fn auto_runs_on_the_cpu_where_only_the_hosts_memory_holds_the_size() {
        let test =
            "pipeline::tests::auto_runs_on_the_cpu_where_only_the_hosts_memory_holds_the_size";
        let Some(gpu) = nst_tensor::test_utils::emulator_or_skip(test) else {
            return;
        };
        // A 2048×1362 output: about 3.3 GiB on the GPU (im2col) even with 5 L-BFGS pairs,
        // 4.7 GiB on the host in the fast mode, and over 1 GiB either way in the smallest
        // tiles (the whole image's optimizer state and content targets).
        let sizes = InputSizes {
            content: (3000, 1995),
            styles: vec![(1024, 800)],
        };
        let (small_gpu, big_gpu) = (
            memory(0.75 * GIB, 16.0 * GIB),
            memory(16.0 * GIB, 16.0 * GIB),
        );
        let small_both = memory(0.75 * GIB, 0.75 * GIB);

        let auto = config("auto", "2048");
        let mut said = Said::default();
        let (device, plan) = plan_on(&auto, chosen(&gpu), &sizes, &mut said, &small_gpu).unwrap();
        assert!(device.is_cpu());
        assert_eq!(plan.output, (2048, 1362));
        assert_eq!(plan.memory_mode(), memory::MemoryMode::Fast);
        let [warning, device_line] = &said.0[..] else {
            panic!("{:?}", said.0)
        };
        assert!(
            warning.starts_with("--size 2048 needs about")
                && warning.contains("of GPU memory")
                && warning.contains("but 0.8 GiB is available")
                && warning.contains("--device auto runs it on the CPU instead"),
            "{warning}"
        );
        assert!(device_line.starts_with("device: cpu"), "{device_line}");

        // Where the GPU holds it, it stays there, and nothing is said.
        let mut said = Said::default();
        let (device, _) = plan_on(&auto, chosen(&gpu), &sizes, &mut said, &big_gpu).unwrap();
        assert!(!device.is_cpu(), "{:?}", said.0);
        assert!(
            matches!(&said.0[..], [d] if d.starts_with("device: cuda")),
            "{:?}",
            said.0
        );
        said.0.clear();

        // Where the GPU holds it in tiles, it stays there too.
        let tiles_on_the_gpu = memory(2.0 * GIB, 16.0 * GIB);
        let (device, plan) =
            plan_on(&auto, chosen(&gpu), &sizes, &mut said, &tiles_on_the_gpu).unwrap();
        assert!(!device.is_cpu(), "{:?}", said.0);
        assert!(plan
            .tile_side()
            .is_some_and(|side| side >= memory::MIN_TILE_SIDE));
        said.0.clear();

        // Where neither holds it, the GPU's refusal stands.
        let err = plan_on(&auto, chosen(&gpu), &sizes, &mut said, &small_both).unwrap_err();
        assert!(err.is::<memory::DoesNotFit>(), "{err}");
        assert!(err.to_string().contains("of GPU memory"), "{err}");

        // --device cuda insists on the GPU.
        let cuda = config("cuda", "2048");
        let err = plan_on(&cuda, chosen(&gpu), &sizes, &mut said, &small_gpu).unwrap_err();
        assert!(err.to_string().contains("of GPU memory"), "{err}");
        assert!(said.0.is_empty(), "{:?}", said.0);

        // Other errors are not memory's, and stand.
        let unreadable = |_: &Device| Err(anyhow!("NST_GPU_MEMORY_LIMIT: \"lots\""));
        let err = plan_on(&auto, chosen(&gpu), &sizes, &mut said, unreadable).unwrap_err();
        assert!(err.to_string().starts_with("NST_GPU_MEMORY_LIMIT"), "{err}");
    }
}
