//! `cargo xtask bench [--quick] [--sizes 256,512,1024] [--iters N] [--device cpu,cuda]
//! [--peer]`: median milliseconds per style-transfer iteration (VGG-19 forward to relu5_1,
//! content + style losses, backward to the image, one L-BFGS update), the GFLOP/s that
//! implies, and the peak memory (resident memory on the CPU, the allocator's peak on a GPU),
//! per device and size. Prints a markdown table and writes JSON to
//! `target/bench/bench.json`. CUDA runs twice, with fp32 and with TF32 convolutions
//! (`--precision`); without a usable GPU its rows say `unavailable: <reason>`.
//!
//! Each size runs in its own child process (`xtask bench-worker`), so its peak RSS is that
//! size's alone. `--peer` also runs the same iterations in eager PyTorch
//! (`xtask/peer/torch_nst.py`: same weights, pixels, layers, losses, thread count) and prints
//! ours/PyTorch per size; the two starting losses are shown so a reader can see both sides
//! computed the same thing. On CUDA the peer runs with `torch.backends.cudnn.benchmark = True`
//! and TF32 off (against our fp32) or on (PyTorch's default for cuDNN convolutions; matmul
//! stays f32, as by default), against our tf32.
//!
//! `--layout nhwc` keeps our CUDA activations NHWC (cuDNN's channels-last convolutions; see
//! `nst_tensor::Layout`); the PyTorch peer stays NCHW, its default, so the ratio answers
//! whether NHWC makes ours faster than PyTorch as people run it.
//!
//! `--memory lean` runs ours in nst's lean memory mode (what `nst` picks where the fast one
//! does not fit: relu1_1 recomputed, freed memory returned at once); the default is the fast
//! one. `--tile N` runs our network tile by tile with cores of N px (what `nst` does where
//! not even the lean mode fits; `nst_loss::Objective::new_tiled`), to measure what tiles
//! cost in time and save in memory.
//!
//! The FLOP count is that of the convolutions: forward through conv5_1 plus the input
//! gradient back through them (the same count again), counted as direct convolution even
//! where Winograd does fewer multiplies, so GFLOP/s compares like with like.

use anyhow::{bail, Context, Result};
use nst_image::{load_rgb, Planes};
use nst_loss::{LossSpec, LossWeights, Objective};
use nst_optim::{Evaluation, Lbfgs, LbfgsConfig, Optimizer, Step};
use nst_tensor::{ConvAlgorithm, Device, Layout, Precision, Tensor};
use nst_vgg::{geometry, Layer, Pooling, Vgg19};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

/// The repository: where this was built, or (for a copy run on a GPU machine, see
/// `scripts/device-check.sh`) the working directory.
fn root() -> String {
    let built = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
    if Path::new(built).join("xtask/peer").is_dir() {
        built.to_string()
    } else {
        ".".to_string()
    }
}

/// One timed configuration, as a worker (ours) or the peer script (PyTorch) reports it.
#[derive(Clone, Debug)]
struct Measurement {
    ms_per_iter: f64,
    loss0: f64,
    peak_rss_bytes: f64,
    /// On a GPU: the most device memory allocated at once.
    peak_gpu_bytes: Option<f64>,
    /// Ours: the heap's peak and what the iteration was doing then.
    peak_heap: Option<(f64, String)>,
}

impl Measurement {
    /// The memory figure that matters on its device.
    fn peak_bytes(&self) -> f64 {
        self.peak_gpu_bytes.unwrap_or(self.peak_rss_bytes)
    }
}

struct Row {
    device: String,
    /// What it compares with: "cpu", "cuda fp32" or "cuda tf32".
    setting: &'static str,
    ours: bool,
    size: usize,
    result: Result<Measurement, String>,
}

/// The benchmark's loss layers (the `nst` defaults); relu5_1 is the deepest.
const STYLE_LAYERS: [&str; 5] = ["relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1"];
const CONTENT_LAYER: &str = "relu4_2";
const DEEPEST: &str = "relu5_1";

/// Convolution GFLOP of one iteration at `size`² (forward to [`DEEPEST`] and back).
fn gflop_per_iter(size: usize) -> f64 {
    let deepest: Layer = DEEPEST.parse().expect("a VGG-19 layer name");
    geometry::iteration_conv_flops(deepest, size, size) / 1e9
}

/// Median of a non-empty list.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    (v[(v.len() - 1) / 2] + v[v.len() / 2]) / 2.0
}

/// The content and style images at `size`², as the benchmark uses them.
fn bench_images(size: usize) -> Result<(Planes, Planes)> {
    let load = |name: &str, what: &str| -> Result<Planes> {
        let rgb = load_rgb(format!("{}/examples/{name}", root()).as_ref(), what)?;
        Ok(Planes::from_rgb(&rgb).resized(size, size))
    };
    Ok((
        load("content_chelsea.png", "content")?,
        load("style_vangogh_starry_night.jpg", "style")?,
    ))
}

/// Times `iters` iterations on `dev` in this process (after one warm-up iteration).
fn time_on(
    dev: &Device,
    size: usize,
    iters: usize,
    dump: Option<&Path>,
    (lean, tile): (bool, Option<usize>),
) -> Result<Measurement> {
    nst_tensor::allocator::return_freed_memory_at_once(lean);
    nst_tensor::cpu_backend::keep_transformed_kernels(!lean);
    // Timing includes the device's work: every iteration reads its loss back to the host.
    let dev = dev.clone();
    let vgg = Vgg19::embedded(&dev, Pooling::Max)?.with_conv_algorithm(
        ConvAlgorithm::from_env_value(std::env::var(ConvAlgorithm::ENV_VAR).ok().as_deref())
            .map_err(anyhow::Error::msg)?,
    );
    let (content, style) = bench_images(size)?;
    if let Some(dir) = dump {
        // Raw f32 [3, S, S] pixels for the PyTorch peer, so both sides use the same input.
        for (planes, name) in [(&content, "content"), (&style, "style")] {
            let bytes: Vec<u8> = planes.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            std::fs::write(dir.join(format!("{name}_{size}.f32")), bytes)?;
        }
    }
    let spec = LossSpec {
        content_layers: vec![CONTENT_LAYER.parse()?],
        style_layers: STYLE_LAYERS
            .iter()
            .map(|s| s.parse())
            .collect::<Result<Vec<Layer>, _>>()?,
        weights: LossWeights {
            content: 1.0,
            style: 1e-3,
            tv: 0.0,
            style_layers: vec![0.1, 0.2, 0.4, 0.2, 0.1],
        },
    };
    let (content_t, styles) = (content.to_tensor(&dev)?, [style.to_tensor(&dev)?]);
    let objective = match tile {
        Some(side) => Objective::new_tiled(&vgg, &content_t, &styles, &[1.0], spec, side)?,
        None => Objective::new(&vgg, &content_t, &styles, &[1.0], spec)?,
    }
    .recomputing_first_layer(lean);
    let evaluate = |x: &Tensor| -> Result<Evaluation> {
        let v = objective.evaluate(x)?;
        Ok(Evaluation::new(v.total, v.grad))
    };
    let mut opt = Optimizer::Lbfgs(Lbfgs::new(LbfgsConfig::default()));
    let mut x = content.to_tensor(&dev)?;
    let mut eval = evaluate(&x)?;
    let loss0 = eval.loss;
    let mut times = Vec::new();
    for _ in 0..iters + 1 {
        let t = Instant::now();
        match opt.step(&x, &eval, &mut |x| evaluate(x))? {
            Step::Moved { x: nx, .. } => x = nx,
            Step::Converged => bail!("converged during the benchmark"),
        }
        eval = evaluate(&x)?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
        if times.len() == 1 {
            // The GPU profile (NST_CUDA_PROFILE=1) leaves out the warm-up too.
            nst_tensor::cuda_backend::profile::reset();
        }
    }
    times.remove(0); // warm-up: first-touch allocations
    Ok(Measurement {
        ms_per_iter: median(times),
        loss0,
        peak_rss_bytes: nst_tensor::allocator::resident_bytes()
            .context("cannot read this process's memory from /proc/self/status")?
            .1 as f64,
        peak_gpu_bytes: dev.peak_device_memory_bytes().map(|b| b as f64),
        peak_heap: nst_tensor::memory_trace::peak().map(|(b, at)| (b as f64, at)),
    })
}

fn measurement_json(m: &Measurement) -> serde_json::Value {
    serde_json::json!({"ms_per_iter": m.ms_per_iter, "loss0": m.loss0,
        "peak_rss_bytes": m.peak_rss_bytes, "peak_gpu_bytes": m.peak_gpu_bytes,
        "peak_heap_bytes": m.peak_heap.as_ref().map(|p| p.0),
        "peak_heap_at": m.peak_heap.as_ref().map(|p| p.1.clone())})
}

fn parse_measurement(stdout: &[u8]) -> Result<Measurement> {
    let text = String::from_utf8_lossy(stdout);
    let line = text.lines().last().context("no output")?;
    let v: serde_json::Value =
        serde_json::from_str(line).with_context(|| format!("bad output {line:?}"))?;
    let num = |k: &str| v[k].as_f64().with_context(|| format!("no {k} in {line:?}"));
    Ok(Measurement {
        ms_per_iter: num("ms_per_iter")?,
        loss0: num("loss0")?,
        peak_rss_bytes: num("peak_rss_bytes")?,
        peak_gpu_bytes: v["peak_gpu_bytes"].as_f64(),
        peak_heap: v["peak_heap_bytes"]
            .as_f64()
            .zip(v["peak_heap_at"].as_str().map(String::from)),
    })
}

/// Runs a measuring child process; its last stdout line is the JSON measurement.
fn run_child(cmd: &mut Command) -> Result<Measurement, String> {
    let out = cmd.output().map_err(|e| format!("cannot start: {e}"))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("");
        return Err(format!("failed ({}): {last}", out.status));
    }
    parse_measurement(&out.stdout).map_err(|e| e.to_string())
}

/// `xtask bench-worker --size N --iters K [--device cpu|cuda|cuda-emulated|cuda-emulated-library] [--precision fp32|tf32]
/// [--layout nchw|nhwc] [--memory fast|lean] [--tile N] [--dump DIR]`: one measurement as a JSON line; with
/// `NST_CUDA_PROFILE=1`, also the GPU time per operation of the timed iterations on stderr.
pub fn worker(args: &[String]) -> Result<()> {
    let (mut size, mut iters, mut dump, mut device) = (None, 5, None, Device::Cpu);
    let (mut lean, mut tile) = (false, None);
    let mut precision = Precision::Fp32;
    let mut layout = Layout::Nchw;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().with_context(|| format!("{a} needs a value"));
        match a.as_str() {
            "--size" => size = Some(value()?.parse()?),
            "--iters" => iters = value()?.parse()?,
            "--dump" => dump = Some(PathBuf::from(value()?)),
            "--device" => {
                device = match value()?.as_str() {
                    "cpu" => Device::Cpu,
                    "cuda" => Device::cuda(0)?,
                    // The CUDA path on the CPU (slow): to try this worker without a GPU.
                    "cuda-emulated" => Device::cuda_emulated()?,
                    // The same with nst-cpu standing in for cuDNN (NHWC needs a library).
                    "cuda-emulated-library" => Device::cuda_emulated_with_library()?,
                    other => bail!(
                        "unknown device {other} (expected cpu, cuda, cuda-emulated or \
                         cuda-emulated-library)"
                    ),
                }
            }
            "--precision" => {
                precision = match value()?.as_str() {
                    "fp32" => Precision::Fp32,
                    "tf32" => Precision::Tf32,
                    other => bail!("unknown precision {other} (expected fp32 or tf32)"),
                }
            }
            "--layout" => layout = value()?.parse().map_err(anyhow::Error::msg)?,
            "--memory" => lean = parse_memory_mode(value()?)?,
            "--tile" => tile = Some(value()?.parse()?),
            other => bail!("unknown bench-worker option {other}"),
        }
    }
    let device = device.with_precision(precision).with_layout(layout);
    if device.layout() != layout {
        bail!("{layout} activations need cuDNN, which {device} does not use");
    }
    let m = time_on(
        &device,
        size.context("--size is required")?,
        iters,
        dump.as_deref(),
        (lean, tile),
    )?;
    println!("{}", measurement_json(&m));
    if let Some(table) = nst_tensor::cuda_backend::profile::report(40) {
        eprint!("{table}");
    }
    Ok(())
}

/// `fast` or `lean` (nst's memory modes, see `nst_cli::memory::MemoryMode`) → whether lean.
fn parse_memory_mode(mode: &str) -> Result<bool> {
    match mode {
        "fast" => Ok(false),
        "lean" => Ok(true),
        other => bail!("unknown memory mode {other} (expected fast or lean)"),
    }
}

/// The Python to run the peer with: `$NST_PYTHON`, else `python3`, if it can import torch.
fn peer_python() -> Result<String, String> {
    let python = std::env::var("NST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import torch, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ok {
        Ok(python)
    } else {
        Err(format!(
            "PyTorch not found ({python} cannot import torch and numpy): `pip install torch numpy` \
             (CPU-only wheels: `pip install torch --index-url https://download.pytorch.org/whl/cpu`), \
             or set NST_PYTHON to a Python that has them"
        ))
    }
}

pub fn run(args: &[String]) -> Result<()> {
    let mut quick = false;
    let mut peer = false;
    let mut sizes = vec![256, 512];
    let mut iters = 5;
    let (mut cpu, mut cuda) = (true, true);
    let mut memory = "fast".to_string();
    let mut tile: Option<String> = None;
    let mut layout = Layout::Nchw;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--peer" => peer = true,
            "--sizes" => {
                sizes = it
                    .next()
                    .context("--sizes needs a list")?
                    .split(',')
                    .map(|s| s.trim().parse())
                    .collect::<Result<_, _>>()?
            }
            "--iters" => iters = it.next().context("--iters needs a number")?.parse()?,
            "--device" => {
                let list = it.next().context("--device needs a list (cpu,cuda)")?;
                (cpu, cuda) = (false, false);
                for d in list.split(',') {
                    match d.trim() {
                        "cpu" => cpu = true,
                        "cuda" => cuda = true,
                        other => bail!("unknown device {other} (expected cpu, cuda or both)"),
                    }
                }
            }
            "--layout" => {
                let name = it.next().context("--layout needs nchw or nhwc")?;
                layout = name.parse().map_err(anyhow::Error::msg)?;
            }
            "--memory" => {
                memory = it.next().context("--memory needs fast or lean")?.clone();
                parse_memory_mode(&memory)?;
            }
            "--tile" => {
                let side: usize = it
                    .next()
                    .context("--tile needs a side in pixels")?
                    .parse()?;
                tile = Some(side.to_string());
            }
            other => bail!("unknown bench option {other}"),
        }
    }
    if quick {
        sizes = vec![128, 256];
        iters = 3;
    }
    let dir = PathBuf::from(format!("{}/target/bench", root()));
    std::fs::create_dir_all(&dir)?;
    let threads = cpu_threads();
    let python = if peer { Some(peer_python()) } else { None };
    let exe = std::env::current_exe()?;
    let cuda_missing = if cuda {
        Device::cuda_unavailable_reason()
    } else {
        None
    };
    let mut rows = Vec::new();
    for &size in &sizes {
        // The peer reads the exact pixels ours used; the first of our runs writes them.
        let mut dumped = false;
        let worker = |device: &str, precision: &str, dump: bool| {
            eprintln!("{device} {precision} {size}²: {iters} iterations…");
            let mut cmd = Command::new(&exe);
            cmd.args(["bench-worker", "--device", device, "--precision", precision])
                .args(["--layout", &layout.to_string()])
                .args(["--size", &size.to_string(), "--iters", &iters.to_string()])
                .args(["--memory", &memory]);
            if let Some(side) = &tile {
                cmd.args(["--tile", side]);
            }
            if dump {
                cmd.arg("--dump").arg(&dir);
            }
            run_child(&mut cmd)
        };
        let peer_row = |device: &str, tf32: Option<bool>| -> Result<Measurement, String> {
            let python = match python.as_ref().expect("only with --peer") {
                Err(why) => return Err(why.clone()),
                Ok(p) => p,
            };
            eprintln!("pytorch {device} {size}²: {iters} iterations…");
            let file = |name: &str| dir.join(format!("{name}_{size}.f32"));
            let mut cmd = Command::new(python);
            cmd.arg(format!("{}/xtask/peer/torch_nst.py", root()))
                .arg("--weights")
                .arg(format!("{}/weights/vgg19.safetensors", root()))
                .arg("--content")
                .arg(file("content"))
                .arg("--style")
                .arg(file("style"))
                .args(["--size", &size.to_string(), "--iters", &iters.to_string()])
                .args(["--threads", &threads.to_string(), "--device", device]);
            if let Some(tf32) = tf32 {
                cmd.args(["--tf32", if tf32 { "on" } else { "off" }]);
            }
            run_child(&mut cmd)
        };
        if cpu {
            rows.push(Row {
                device: format!("nst cpu ({threads} threads)"),
                setting: "cpu",
                ours: true,
                size,
                result: worker("cpu", "fp32", peer),
            });
            dumped = peer;
            if peer {
                rows.push(Row {
                    device: format!("pytorch cpu ({threads} threads)"),
                    setting: "cpu",
                    ours: false,
                    size,
                    result: peer_row("cpu", None),
                });
            }
        }
        if cuda {
            for (setting, precision, tf32) in
                [("cuda fp32", "fp32", false), ("cuda tf32", "tf32", true)]
            {
                let result = match &cuda_missing {
                    Some(why) => Err(format!("unavailable: {why}")),
                    None => worker("cuda", precision, peer && !dumped),
                };
                dumped |= peer && result.is_ok();
                let nhwc = if layout == Layout::Nhwc { " nhwc" } else { "" };
                rows.push(Row {
                    device: format!("nst {setting}{nhwc}"),
                    setting,
                    ours: true,
                    size,
                    result,
                });
                if peer {
                    let result = match &cuda_missing {
                        Some(why) => Err(format!("unavailable: {why}")),
                        None => peer_row("cuda", Some(tf32)),
                    };
                    let label = if tf32 {
                        "TF32 on, its default"
                    } else {
                        "TF32 off"
                    };
                    rows.push(Row {
                        device: format!("pytorch {setting} ({label})"),
                        setting,
                        ours: false,
                        size,
                        result,
                    });
                }
            }
        }
    }
    println!("nst memory mode: {memory}\n");
    print_tables(&rows, &sizes, peer);
    let json: Vec<_> = rows
        .iter()
        .map(|r| {
            let mut v = match &r.result {
                Ok(m) => {
                    let mut v = measurement_json(m);
                    v["gflops"] = gflops(r.size, m.ms_per_iter).into();
                    v
                }
                Err(why) => serde_json::json!({"error": why}),
            };
            v["device"] = r.device.clone().into();
            v["size"] = r.size.into();
            v
        })
        .collect();
    let path = dir.join("bench.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    eprintln!("wrote {}", path.display());
    Ok(())
}

/// The thread count rayon (and so our kernels) uses by default, given to PyTorch too.
fn cpu_threads() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn gflops(size: usize, ms: f64) -> f64 {
    gflop_per_iter(size) / (ms / 1e3)
}

fn mib(bytes: f64) -> String {
    format!("{:.0} MiB", bytes / (1 << 20) as f64)
}

fn print_tables(rows: &[Row], sizes: &[usize], peer: bool) {
    println!("| device | size | ms/iter (median) | GFLOP/s | peak memory | loss at start |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        match &r.result {
            Ok(m) => println!(
                "| {} | {}² | {:.1} | {:.0} | {} {} | {:.6e} |",
                r.device,
                r.size,
                m.ms_per_iter,
                gflops(r.size, m.ms_per_iter),
                mib(m.peak_bytes()),
                if m.peak_gpu_bytes.is_some() {
                    "GPU"
                } else {
                    "RSS"
                },
                m.loss0
            ),
            Err(why) => println!("| {} | {}² | {why} | | | |", r.device, r.size),
        }
    }
    for r in rows {
        if let Ok(Measurement {
            peak_heap: Some((bytes, at)),
            ..
        }) = &r.result
        {
            println!(
                "{} {}²: heap peak {} during {at}",
                r.device,
                r.size,
                mib(*bytes)
            );
        }
    }
    if !peer {
        return;
    }
    println!("\n| setting | size | nst ms/iter | PyTorch ms/iter | nst / PyTorch time | nst memory | PyTorch memory | nst / PyTorch memory |");
    println!("|---|---|---|---|---|---|---|---|");
    for setting in ["cpu", "cuda fp32", "cuda tf32"] {
        for &size in sizes {
            let find = |ours: bool| {
                rows.iter()
                    .find(|r| r.size == size && r.setting == setting && r.ours == ours)
                    .map(|r| r.result.as_ref())
            };
            match (find(true), find(false)) {
                (Some(Ok(a)), Some(Ok(b))) => println!(
                    "| {setting} | {size}² | {:.1} | {:.1} | {:.2} | {} | {} | {:.2} |",
                    a.ms_per_iter,
                    b.ms_per_iter,
                    a.ms_per_iter / b.ms_per_iter,
                    mib(a.peak_bytes()),
                    mib(b.peak_bytes()),
                    a.peak_bytes() / b.peak_bytes()
                ),
                (None, _) | (_, None) => {}
                _ => println!("| {setting} | {size}² | see above | | | | | |"),
            }
        }
    }
}
