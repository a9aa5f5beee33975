//! Memory preflight: before optimising, estimate the peak memory the requested size needs
//! and stop with a clear error — naming the estimate, what is available and the largest
//! `--size` that fits — instead of being killed by the out-of-memory killer halfway through.
//!
//! The estimate (CPU): `BASE + PER_ACTIVATION · A + optimizer state`, where A is the bytes of
//! all activations of a forward pass to the deepest loss layer at the final scale
//! (`nst_vgg::geometry::activation_elems`; 1280 bytes a pixel to relu5_1), and the optimizer
//! state is L-BFGS's (s, y) history (or Adam's two moments) plus a few image-sized vectors;
//! the input images at full resolution come on top (12 bytes a pixel, twice). The backward
//! pass keeps no activation but one-bit masks and the loss layers' features (see
//! nst-tensor), yet these, a gradient or two of the largest layers and what the allocator
//! holds on to still grow in proportion to A.
//!
//! **Two modes** ([`MemoryMode`]): the preflight picks the fast one where it fits, else the lean
//! one, else the lean one with a shorter L-BFGS history (as many pairs as fit, down to the fewest;
//! see [`check`]), else the lean one with the network run tile by tile
//! ([`estimate_tiled_peak_bytes`]), else stops. Fast: the allocator keeps freed memory (no page faults in steady
//! state), and the Winograd-transformed kernels of the convolutions small enough to profit are kept
//! from one iteration to the next (to relu5_1: 406 MB at 512², 340 MB at 1024², 76 MB at 2048²,
//! none at 4096²: `kernel_cache_bytes`). Lean: freed memory goes back to the OS at once, kernels
//! are transformed at every use, and relu1_1's style term is recomputed in the backward pass. At
//! 2048² (`cargo xtask bench --sizes 2048 --iters 1 --peer [--memory lean]`, one run each, before
//! the kernel cache) lean peaked at 2875 MiB against 5114 MiB and took 30.8 s an iteration against
//! 19.0 s (PyTorch: 10408 MiB, 56 s). The constants come from `cargo xtask bench-worker [--memory
//! lean]` peaks (default layers, 1–5 iterations, so little history), with blocks of 32 MiB or more
//! kept only within their live high-water mark (`nst_tensor::allocator`): fast 844 MiB at 512²,
//! 1335 MiB at 1024², 3331 MiB at 2048² (`BASE` 280 MiB and `PER_ACTIVATION` 0.6: +9 … +20%); lean
//! 846 MiB at 1024², 2858 MiB at 2048² (0.45: +15 … +10%), where the peak is the first layers of a
//! forward pass (relu1_1 and conv1_2's output, 0.4·A). Earlier, with every block in mimalloc, the
//! fast mode peaked at 909, 1664 and 4196 MiB (`PER_ACTIVATION` 0.8); before the kernel cache was
//! limited to small convolutions at 899–913, 1711–1743 and 4441–4461 MiB; before a loss layer's
//! Gram gradient took its features' buffer at 700, 1684 and 5636 MiB; with four-byte pooling
//! winners at 702–758, 1944 and 6052 MiB; and before the one-bit masks at 1016–1060, 3088 and 11716
//! MiB.
//!
//! `NST_MEMORY_LIMIT` (bytes, or with a K/M/G suffix) replaces the available memory, to test
//! the check or to override it.
//!
//! **On a GPU** the same check runs against the device's free memory (plus what its pool
//! holds unused; `NST_GPU_MEMORY_LIMIT` overrides it) with its own estimate,
//! [`estimate_gpu_peak_bytes`]: `GPU_BASE + im2col band + GPU_PER_ACTIVATION · A + optimizer
//! state`, or with cuDNN `GPU_BASE + cuDNN's workspace limit + the weights' KRSC copies +
//! relu1_1's Gram scratch + GPU_CUDNN_PER_ACTIVATION · A + optimizer state`. The input images
//! stay on the host.
//! The constants come from the emulator's allocator, which counts exactly the device
//! allocations of the CUDA path (one iteration, `--device cuda-emulated --scales 1 --iters
//! 1`): with im2col 218 MiB at 256×170, 443 MiB at 512×341, 871 MiB at 1024×681, which the
//! constants reproduce within +3% … +14%; with the stand-in for cuDNN
//! (`NST_EMULATOR_CONV_LIBRARY=1`) 118, 236 and 603 MiB, reproduced within +13% … +14%
//! (without the workspace, which the stand-in does not take). On the H200, one 4096×2725
//! iteration with cuDNN (`--scales 1 --iters 1`) peaked at "9.2 GB" (an older build, whose
//! Gram scratch was the same at that size; recorded without its unit, so 8.6–9.2 GiB); the
//! estimate for it is 9.7 GiB. `device-check.sh` prints the two side by side for the next
//! GPU run. The CUDA context
//! and cuDNN's own allocations are not counted (the free memory the driver reports already
//! excludes the context).

use anyhow::{bail, Result};
use nst_tensor::cpu_backend::transformed_kernel_bytes;
use nst_tensor::cuda_backend::gram_scratch_bytes;
use nst_tensor::ConvAlgorithm;
use nst_vgg::{geometry, Layer};

/// The binary, the weights (f32, 80 MB), allocator overhead; the fast mode's kernel cache
/// comes on top (`kernel_cache_bytes`).
const BASE_BYTES: f64 = 280.0 * MIB;
/// Peak bytes per byte of forward activations (see the module docs).
const PER_ACTIVATION: f64 = 0.6;
/// The lean mode's base: as the fast mode's.
const LEAN_BASE_BYTES: f64 = 250.0 * MIB;
/// The lean mode's peak per byte of forward activations: two full-resolution 64-channel
/// tensors (relu1_1 and conv1_2's output, 0.4·A) at the forward pass's first layers, plus a
/// margin.
const LEAN_PER_ACTIVATION: f64 = 0.45;
/// GPU: the weights (80 MB) and small buffers.
const GPU_BASE_BYTES: f64 = 90.0 * MIB;
/// GPU, im2col: peak device bytes per byte of forward activations (fit 0.67 to the
/// emulator's peaks, plus 10%).
const GPU_PER_ACTIVATION: f64 = 0.74;
/// GPU, cuDNN: the same, relu1_1's Gram scratch aside (fit 0.46 to the emulator's peaks with
/// its stand-in library, plus 20%: with 10%, the estimate for the one real GPU figure, a
/// 4096×2725 iteration on the H200, came out at or just above it). Less than im2col's: no
/// patch matrices, and the backward pass's peak is where it starts, with the loss layers'
/// features and that scratch alive.
const GPU_CUDNN_PER_ACTIVATION: f64 = 0.55;
/// GPU: the im2col patch matrix of conv1_2 (576 values a pixel), up to the band limit
/// (`nst_cuda::gpu::COLS_BUDGET` values).
const GPU_COLS_BYTES_PER_PIXEL: f64 = 4.0 * 576.0;
const GPU_COLS_MAX_BYTES: f64 = 256.0 * MIB;
/// GPU: the most workspace cuDNN's chosen algorithms may use (`nst_cuda::cudnn`).
const GPU_CUDNN_WORKSPACE_BYTES: f64 = 1024.0 * MIB;
/// GPU with cuDNN: the KRSC copies of the weights that NHWC activations (`NST_CUDA_LAYOUT`)
/// convolve with, 12,940,992 values to relu5_1; counted whatever the layout, a small margin
/// for NCHW runs.
const GPU_NHWC_WEIGHT_BYTES: f64 = 4.0 * 12_940_992.0;
/// Image-sized vectors an optimizer step holds besides its history (x, g, d, the step).
const OPTIMIZER_VECTORS: f64 = 6.0;
/// Full-resolution f32 RGB copies of each input image held through a run.
const INPUT_COPIES: f64 = 2.0;
const MIB: f64 = 1024.0 * 1024.0;

/// What the optimisation at the final scale needs to keep.
#[derive(Clone, Copy, Debug)]
pub struct Workload {
    /// The deepest loss layer.
    pub deepest: Layer,
    /// Final-scale width and height.
    pub size: (usize, usize),
    /// Channels of the optimised image (3, or 1 for luminance-only transfer).
    pub channels: usize,
    /// Image-sized vectors of optimizer history (2 per L-BFGS pair, 2 for Adam's moments).
    pub history_vectors: usize,
    /// The fewest the optimizer can make do with where memory is short (2 per L-BFGS pair
    /// down to its fewest pairs; Adam's two moments cannot shrink).
    pub fewest_history_vectors: usize,
    /// Pixels of the input images at full resolution (content and styles), kept as f32 RGB
    /// twice for the whole run (as decoded, and colour-prepared).
    pub input_pixels: usize,
    /// Values of the content layers' features at the final size: the content targets, which
    /// a run in tiles keeps whole while each tile's activations come and go.
    pub content_target_elems: usize,
}

/// What the preflight settled on: the memory mode, and a shorter optimizer history where
/// only that fits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fit {
    /// The fastest mode that holds the history asked for, or the leanest where none does.
    pub mode: MemoryMode,
    /// `Some(vectors)` when the history asked for does not fit in any mode but this many
    /// image-sized vectors of it do, in the leanest mode (L-BFGS: two a pair).
    pub shortened_history_vectors: Option<usize>,
    /// The estimated peak of the run so planned, in bytes (for `--report`, to set beside
    /// the measured peak).
    pub estimated_peak_bytes: u64,
    /// `Some(side)` when the network runs tile by tile, each tile a core of at most `side`
    /// pixels a side plus a margin (`nst_loss::Objective::new_tiled`): where the whole image's
    /// activations do not fit in any mode.
    pub tile_side: Option<usize>,
}

/// How a CPU run trades memory for time. The preflight picks the fast mode where its
/// estimate fits the memory available, else the lean one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MemoryMode {
    /// The allocator keeps what is freed for reuse (no page faults in steady state), the
    /// convolutions keep their transformed kernels, and the backward pass reads relu1_1's
    /// features kept from the forward pass.
    #[default]
    Fast,
    /// Freed memory goes back to the OS at once, kernels are transformed at every use, and
    /// relu1_1's style term is recomputed in the backward pass
    /// (`Objective::recomputing_first_layer`): measured 2858 instead of 3331 MiB at 2048²,
    /// for 1.2–1.7× the time per iteration (19.6 against 15.0 s; 24.8 against 14.7 s the
    /// build before; see the module docs).
    Lean,
}

impl MemoryMode {
    /// The word `--report` and the progress line use.
    pub fn name(self) -> &'static str {
        match self {
            MemoryMode::Fast => "fast",
            MemoryMode::Lean => "lean",
        }
    }
}

/// Estimated peak resident memory of the fast mode, in bytes.
pub fn estimate_peak_bytes(w: &Workload) -> f64 {
    estimate_host_peak_bytes(w, MemoryMode::Fast)
}

/// Estimated peak resident memory in `mode`, in bytes.
pub fn estimate_host_peak_bytes(w: &Workload, mode: MemoryMode) -> f64 {
    let (width, height) = w.size;
    let activations = 4.0 * geometry::activation_elems(w.deepest, height, width) as f64;
    let image = 4.0 * (w.channels * width * height) as f64;
    let (base, per_activation) = match mode {
        MemoryMode::Fast => (BASE_BYTES + kernel_cache_bytes(w), PER_ACTIVATION),
        MemoryMode::Lean => (LEAN_BASE_BYTES, LEAN_PER_ACTIVATION),
    };
    base + per_activation * activations
        + (w.history_vectors as f64 + OPTIMIZER_VECTORS) * image
        + INPUT_COPIES * 12.0 * w.input_pixels as f64
}

/// The fast mode's transformed convolution kernels, kept from one iteration to the next
/// (`nst_tensor::cpu_backend::keep_transformed_kernels`) by the convolutions of at most
/// `nst_cpu::kernel_cache::KEEP_MAX_TILES` tiles at the final scale (to relu5_1: 406 MB at
/// 512², 76 MB, conv5_1's, at 2048²).
fn kernel_cache_bytes(w: &Workload) -> f64 {
    let (width, height) = w.size;
    geometry::conv_shapes(w.deepest, height, width)
        .iter()
        .map(|(_, p)| transformed_kernel_bytes(p, ConvAlgorithm::Fastest) as f64)
        .sum()
}

/// Estimated peak device memory on a GPU, in bytes; `cudnn` when convolutions go to cuDNN.
pub fn estimate_gpu_peak_bytes(w: &Workload, cudnn: bool) -> f64 {
    let (width, height) = w.size;
    let activations = 4.0 * geometry::activation_elems(w.deepest, height, width) as f64;
    let image = 4.0 * (w.channels * width * height) as f64;
    let pixels = (width * height) as f64;
    let (convolutions, per_activation) = if cudnn {
        // relu1_1's Gram gradient, formed over its features a band at a time, when the
        // backward pass starts (the peak with cuDNN).
        let gram_scratch = gram_scratch_bytes(64, width * height) as f64;
        let extra = GPU_CUDNN_WORKSPACE_BYTES + GPU_NHWC_WEIGHT_BYTES + gram_scratch;
        (extra, GPU_CUDNN_PER_ACTIVATION)
    } else {
        let cols = (GPU_COLS_BYTES_PER_PIXEL * pixels).min(GPU_COLS_MAX_BYTES);
        (cols, GPU_PER_ACTIVATION)
    };
    GPU_BASE_BYTES
        + convolutions
        + per_activation * activations
        + (w.history_vectors as f64 + OPTIMIZER_VECTORS) * image
}

/// The smallest tile core the preflight plans: below it, the margins (80 px a side to
/// relu5_1) would more than double the pixels each tile runs the network on (256 + 160 =
/// 416: 2.6× its core's pixels).
pub const MIN_TILE_SIDE: usize = 256;

/// Image-sized vectors a run in tiles holds besides the optimizer's: the gradient gathered
/// over the tiles, the scale's start (kept to fall back on) and the previous scale's result
/// (a quarter to a half of an image), with a margin. The whole image's estimates need no
/// such term: their constants were fitted to peaks that include these.
const TILED_IMAGE_VECTORS: f64 = 3.0;

/// Estimated peak of a run whose network runs tile by tile with cores of `side` pixels (in
/// the leanest mode: tiles are the last resort): one tile's pass, and what the whole image
/// keeps meanwhile: the optimizer's vectors, the gradient gathered over the tiles, the
/// content targets and the input images (on the host).
///
/// A tile's pass is that of an image the tile's size, margins included. On the host it keeps
/// what the fast mode's pass keeps (`PER_ACTIVATION`: relu1_1 is not recomputed in tiles),
/// over the lean mode's base (no kernel cache); on a GPU, the GPU's estimate.
pub fn estimate_tiled_peak_bytes(w: &Workload, pool: Pool, side: usize) -> f64 {
    let (width, height) = w.size;
    let input_side = side + 2 * nst_vgg::tiles::tile_halo(w.deepest);
    let tile = Workload {
        size: (input_side.min(width), input_side.min(height)),
        history_vectors: 0,
        input_pixels: 0,
        ..*w
    };
    let image = 4.0 * (w.channels * width * height) as f64;
    let (tile_pass, inputs) = match pool {
        Pool::Host => {
            let (tile_w, tile_h) = tile.size;
            let activations = 4.0 * geometry::activation_elems(w.deepest, tile_h, tile_w) as f64;
            let tile_image = 4.0 * (w.channels * tile_w * tile_h) as f64;
            let pass =
                LEAN_BASE_BYTES + PER_ACTIVATION * activations + OPTIMIZER_VECTORS * tile_image;
            (pass, INPUT_COPIES * 12.0 * w.input_pixels as f64)
        }
        Pool::Gpu { cudnn } => (estimate_gpu_peak_bytes(&tile, cudnn), 0.0),
    };
    tile_pass
        + (w.history_vectors as f64 + OPTIMIZER_VECTORS + TILED_IMAGE_VECTORS) * image
        + 4.0 * w.content_target_elems as f64
        + inputs
}

/// Device memory a run on a GPU may use: `NST_GPU_MEMORY_LIMIT` if set, else what the device
/// reports (`None` when it does not).
pub fn available_gpu_bytes(reported: Option<u64>) -> Result<Option<f64>> {
    if let Some(v) = limit_variable("NST_GPU_MEMORY_LIMIT") {
        return parse_bytes("NST_GPU_MEMORY_LIMIT", &v).map(Some);
    }
    Ok(reported.map(|b| b as f64))
}

/// Which memory a check is about: the host's (the CPU backend) or a GPU's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pool {
    /// System memory.
    Host,
    /// Device memory; `cudnn` when convolutions go to cuDNN.
    Gpu {
        /// Whether cuDNN's workspace comes on top.
        cudnn: bool,
    },
}

impl Pool {
    /// The modes this memory can run in, cheapest in time first.
    fn modes(self) -> &'static [MemoryMode] {
        match self {
            Pool::Host => &[MemoryMode::Fast, MemoryMode::Lean],
            Pool::Gpu { .. } => &[MemoryMode::Fast],
        }
    }

    /// The estimated peak of `w` on the whole image in `mode`.
    pub fn estimate(self, w: &Workload, mode: MemoryMode) -> f64 {
        match self {
            Pool::Host => estimate_host_peak_bytes(w, mode),
            Pool::Gpu { cudnn } => estimate_gpu_peak_bytes(w, cudnn),
        }
    }
}

/// Memory this process may use: `NST_MEMORY_LIMIT` if set, else the smaller of the kernel's
/// `MemAvailable` and the cgroup limit minus current use, plus what this process already
/// holds beyond `BASE_BYTES` (the allocator keeps freed memory for reuse, and a server's
/// running job ends before the next starts, so that memory will serve the run being checked).
/// `None` when neither can be read.
pub fn available_bytes() -> Result<Option<f64>> {
    if let Some(v) = limit_variable("NST_MEMORY_LIMIT") {
        return parse_bytes("NST_MEMORY_LIMIT", &v).map(Some);
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let available = meminfo.as_deref().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map(|kib| kib * 1024.0)
    });
    let read = |f: &str| std::fs::read_to_string(format!("/sys/fs/cgroup/{f}")).ok();
    let cgroup = match (read("memory.max"), read("memory.current")) {
        (Some(max), Some(cur)) => match (max.trim().parse::<f64>(), cur.trim().parse::<f64>()) {
            (Ok(max), Ok(cur)) => Some((max - cur).max(0.0)),
            _ => None, // "max": no limit
        },
        _ => None,
    };
    let held = nst_tensor::allocator::resident_bytes().map_or(0.0, |(rss, _)| rss as f64);
    let reusable = (held - BASE_BYTES).max(0.0);
    Ok(match (available, cgroup) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    }
    .map(|free| free + reusable))
}

/// The value of a memory limit variable, if set to something (set but empty is unset, as
/// `NST_MEMORY_LIMIT= nst …` is meant).
fn limit_variable(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Bytes for a message, in the binary units `NST_MEMORY_LIMIT` reads ("8G" is 8 GiB): "0.6 GiB"
/// from 0.5 GiB up, "95 MiB" below, so that two small amounts do not both read "0.1 GiB".
fn readable(bytes: f64) -> String {
    let gib = bytes / (MIB * 1024.0);
    if gib >= 0.5 {
        format!("{gib:.1} GiB")
    } else {
        format!("{:.0} MiB", bytes / MIB)
    }
}

/// `"512M"`, `"2G"`, `"1.5G"`, `"8GB"`, `"8GiB"`, `"300000000"` → bytes, in binary units
/// whichever way they are written (K, M, G, T, with or without `B` or `iB`, any case);
/// errors name `variable`.
fn parse_bytes(variable: &str, s: &str) -> Result<f64> {
    let t = s.trim().to_ascii_uppercase();
    let unit = |power: i32| 1024f64.powi(power);
    let (number, scale) = [
        ("T", unit(4)),
        ("G", unit(3)),
        ("M", unit(2)),
        ("K", unit(1)),
    ]
    .iter()
    .flat_map(|&(letter, scale)| {
        ["IB", "B", ""].map(move |tail| (format!("{letter}{tail}"), scale))
    })
    .chain([("B".to_string(), 1.0)])
    .find_map(|(suffix, scale)| t.strip_suffix(suffix.as_str()).map(|n| (n, scale)))
    .unwrap_or((&t, 1.0));
    match number.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v * scale),
        Ok(_) => bail!("{variable}: {s:?} is not a positive size (e.g. 8G)"),
        Err(_) => bail!("{variable}: {s:?} is not a size (e.g. 8G, 512M, 300000000)"),
    }
}

/// How the workload of `--size requested_side` fits `available` bytes, trying what costs
/// only time before what costs convergence, and the whole image before tiles:
///
/// 1. the whole image in the fastest mode that holds it;
/// 2. the whole image in the leanest mode with the longest optimizer history that fits (down
///    to the fewest vectors it can do with);
/// 3. the network run tile by tile in the leanest mode, with the history asked for and then
///    shorter ones, each with the largest tile core that fits (at least [`MIN_TILE_SIDE`]):
///    the same result as the whole image, in more time;
/// 4. else an error naming the estimate and the largest size that fits.
///
/// `size_of(side)` gives the workload of `--size side`.
///
/// A shorter L-BFGS history costs some convergence, not time: at 256 px (the
/// README example, 100 iterations a scale) the final loss was 0.7% higher with 20 pairs
/// instead of 100, 1.5% with 10 and 2.6% with 5, and the pictures look alike. So it comes
/// after the lean mode, which costs only time, and before refusing the size. Tiles come last
/// though they too cost only time: they are for sizes whose activations are far beyond the
/// memory, where a few pairs fewer would not help, and they cost much more time than either
/// (two forward passes and the margins' share: about 3× the time per iteration at 1024²).
pub fn check(
    requested_side: u32,
    available: f64,
    pool: Pool,
    size_of: impl Fn(u32) -> Workload,
) -> Result<Fit> {
    let requested = size_of(requested_side);
    let leanest = *pool.modes().last().expect("every pool has a mode");
    let with_history = |history_vectors| Workload {
        history_vectors,
        ..requested
    };
    let fit = |mode, vectors: usize, tile_side, estimate: f64| Fit {
        mode,
        shortened_history_vectors: (vectors < requested.history_vectors).then_some(vectors),
        estimated_peak_bytes: estimate as u64,
        tile_side,
    };
    if let Some((mode, estimate)) = pool
        .modes()
        .iter()
        .map(|&mode| (mode, pool.estimate(&requested, mode)))
        .find(|&(_, estimate)| estimate <= available)
    {
        return Ok(fit(mode, requested.history_vectors, None, estimate));
    }
    // L-BFGS's vectors come in pairs: from the longest history down, a pair at a time.
    let shorter: Vec<usize> = (shortest(&requested).history_vectors..requested.history_vectors)
        .rev()
        .skip(1)
        .step_by(2)
        .collect();
    for &vectors in &shorter {
        let estimate = pool.estimate(&with_history(vectors), leanest);
        if estimate <= available {
            return Ok(fit(leanest, vectors, None, estimate));
        }
    }
    for vectors in std::iter::once(requested.history_vectors).chain(shorter) {
        let w = with_history(vectors);
        if let Some((side, estimate)) = largest_tile(&w, pool, available) {
            return Ok(fit(leanest, vectors, Some(side), estimate));
        }
    }
    let least = |w: &Workload| least_memory(w, pool);
    let need = least(&requested);
    // Largest side that fits (the estimate grows with the side).
    let (mut lo, mut hi) = (0u32, requested_side);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if least(&size_of(mid)) <= available {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let hint = if lo >= 16 {
        format!("the largest --size that fits is about {lo}")
    } else {
        "no useful size fits".to_string()
    };
    let (memory, variable) = match pool {
        Pool::Host => ("memory", "NST_MEMORY_LIMIT"),
        Pool::Gpu { .. } => ("GPU memory", "NST_GPU_MEMORY_LIMIT"),
    };
    // Both figures are for the shortest history, which is what a size that fits would get.
    let shortest_history = match shortest(&requested).history_vectors {
        v if v < requested.history_vectors => format!(", with {} L-BFGS pairs", v / 2),
        _ => String::new(),
    };
    Err(DoesNotFit(format!(
        "--size {requested_side} needs about {} of {memory} (estimated peak{shortest_history}) but {} is available: {hint} ({variable} overrides the available amount)",
        readable(need),
        readable(available)
    ))
    .into())
}

/// The workload with the fewest history vectors the optimizer can do with.
fn shortest(w: &Workload) -> Workload {
    Workload {
        history_vectors: w.fewest_history_vectors.min(w.history_vectors),
        ..*w
    }
}

/// The least memory any plan for `w` needs: the leanest mode with the shortest history, on
/// the whole image or in the smallest tiles.
fn least_memory(w: &Workload, pool: Pool) -> f64 {
    let leanest = *pool.modes().last().expect("every pool has a mode");
    let w = shortest(w);
    let whole = pool.estimate(&w, leanest);
    whole.min(estimate_tiled_peak_bytes(&w, pool, MIN_TILE_SIDE))
}

/// The largest tile core (a multiple of the deepest layer's stride, from [`MIN_TILE_SIDE`] to
/// just under the image's longer side: one tile is the whole image) whose run fits
/// `available`, with its estimate.
fn largest_tile(w: &Workload, pool: Pool, available: f64) -> Option<(usize, f64)> {
    let stride = w.deepest.min_input_side();
    let estimate = |k: usize| estimate_tiled_peak_bytes(w, pool, k * stride);
    let (lo, hi) = (
        MIN_TILE_SIDE.div_ceil(stride),
        (w.size.0.max(w.size.1) - 1) / stride,
    );
    if lo > hi || estimate(lo) > available {
        return None;
    }
    // The estimate grows with the side: the last k whose estimate fits.
    let (mut fits, mut too_big) = (lo, hi + 1);
    while too_big - fits > 1 {
        let mid = fits + (too_big - fits) / 2;
        if estimate(mid) <= available {
            fits = mid;
        } else {
            too_big = mid;
        }
    }
    Some((fits * stride, estimate(fits)))
}

/// [`check`]'s refusal: the size cannot fit the memory in any mode, with the estimate, the
/// amount available and the largest size that fits, in one line. A type of its own so that
/// `--device auto` can tell it from other errors and try the CPU instead of a GPU.
#[derive(Debug)]
pub struct DoesNotFit(String);

impl std::fmt::Display for DoesNotFit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DoesNotFit {}

#[cfg(test)]
mod tests {
    use super::*;

    /// By hand: VGG-19's 3×3 weights to relu5_1 are 12,940,992 values: conv1_1 1,728,
    /// conv1_2 36,864, conv2_1 73,728, conv2_2 147,456, conv5_1 2,359,296. Each layer keeps
    /// 36/9 = 4 values per weight for its input gradient, and as many for its forward pass
    /// except conv1_1 (3 input channels: im2col) — while it has at most 2048 output tiles of
    /// 4×4. At 512² that excludes conv1_x (128² tiles) and conv2_x (64²); at 2048² all but
    /// conv5_1 (32² tiles); at 4096² conv5_1 too (64²).
    #[test]
    fn the_kernel_cache_holds_eight_times_the_weights_of_the_small_convolutions() {
        let to = |deepest: &str, side| {
            kernel_cache_bytes(&Workload {
                deepest: deepest.parse().unwrap(),
                ..square(side)
            })
        };
        let conv1_2_to_2_2 = 36_864 + 73_728 + 147_456;
        assert_eq!(
            to("relu5_1", 512),
            (4 * 4 * 2 * (12_940_992 - 1_728 - conv1_2_to_2_2)) as f64
        );
        assert_eq!(to("relu5_1", 2048), (4 * 4 * 2 * 2_359_296) as f64);
        assert_eq!(to("relu5_1", 4096), 0.0);
        assert_eq!(to("relu1_1", 512), 0.0, "conv1_1 at 512²: 128² tiles");
        assert_eq!(to("relu1_1", 128), (4 * 4 * 1_728) as f64, "32² tiles");
    }

    fn square_with_history(side: u32, history_vectors: usize) -> Workload {
        Workload {
            deepest: "relu5_1".parse().unwrap(),
            size: (side as usize, side as usize),
            channels: 3,
            history_vectors,
            fewest_history_vectors: history_vectors,
            // The bench's content and style images at the bench size.
            input_pixels: 2 * side as usize * side as usize,
            // relu4_2: 512 channels at an eighth of the side.
            content_target_elems: 512 * (side as usize / 8).pow(2),
        }
    }

    fn square(side: u32) -> Workload {
        square_with_history(side, 10)
    }

    #[test]
    fn estimates_bracket_the_measured_peaks() {
        // Measured (`xtask bench-worker --size N --iters K [--memory lean]`: up to 2K history
        // vectors): the estimate is above each and at most 25% above.
        for (mode, side, iters, measured_mib) in [
            (MemoryMode::Fast, 512, 5, 844.0),
            (MemoryMode::Fast, 1024, 2, 1335.0),
            (MemoryMode::Fast, 2048, 1, 3331.0),
            (MemoryMode::Lean, 1024, 1, 846.0),
            (MemoryMode::Lean, 2048, 1, 2858.0),
        ] {
            let est = estimate_host_peak_bytes(&square_with_history(side, 2 * iters), mode) / MIB;
            assert!(
                est >= measured_mib && est <= 1.25 * measured_mib,
                "{mode:?} {side}²: estimate {est:.0} MiB vs measured {measured_mib}"
            );
        }
    }

    #[test]
    fn picks_the_lean_mode_only_where_the_fast_one_does_not_fit() {
        let fast = estimate_peak_bytes(&square(2048));
        let lean = estimate_host_peak_bytes(&square(2048), MemoryMode::Lean);
        // Measured, lean is 0.86 of fast at 2048² (2858 against 3331 MiB).
        assert!(lean < 0.9 * fast, "lean {lean} vs fast {fast}");
        assert_eq!(
            check(2048, fast, Pool::Host, square).unwrap().mode,
            MemoryMode::Fast
        );
        assert_eq!(
            check(2048, fast - 1.0, Pool::Host, square).unwrap().mode,
            MemoryMode::Lean
        );
        assert_eq!(
            check(2048, lean, Pool::Host, square).unwrap().mode,
            MemoryMode::Lean
        );
        // Less: the lean mode in tiles (this history cannot shrink).
        let tiled = check(2048, lean - 1.0, Pool::Host, square).unwrap();
        assert_eq!(
            (tiled.mode, tiled.shortened_history_vectors),
            (MemoryMode::Lean, None)
        );
        assert!(tiled.tile_side.is_some());
        // A GPU has no lean mode: the fast one, whole or in tiles.
        let gpu = Pool::Gpu { cudnn: false };
        let need = estimate_gpu_peak_bytes(&square(2048), false);
        let whole = check(2048, need, gpu, square).unwrap();
        assert_eq!((whole.mode, whole.tile_side), (MemoryMode::Fast, None));
        let tiled = check(2048, need - 1.0, gpu, square).unwrap();
        assert_eq!(tiled.mode, MemoryMode::Fast);
        assert!(tiled.tile_side.is_some());
    }

    /// The smallest tiles' estimate at `side`² (the least any plan of that size needs from
    /// 416² up, where a tile is smaller than the image).
    fn smallest_tiles(side: u32, pool: Pool) -> f64 {
        estimate_tiled_peak_bytes(&square(side), pool, MIN_TILE_SIDE)
    }

    #[test]
    fn suggests_the_largest_size_that_fits() {
        // In the leanest mode, in the smallest tiles.
        let available = smallest_tiles(3000, Pool::Host) + 1.0;
        let err = check(4096, available, Pool::Host, square)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the largest --size that fits is about 3000"),
            "{err}"
        );
        assert!(err.contains(&readable(smallest_tiles(4096, Pool::Host))));
        let fit = check(3000, available, Pool::Host, square).unwrap();
        assert_eq!(fit.tile_side, Some(MIN_TILE_SIDE));
        let gpu = Pool::Gpu { cudnn: true };
        let available = smallest_tiles(5000, gpu) + 1.0;
        let err = check(8192, available, gpu, square).unwrap_err().to_string();
        assert!(
            err.contains("of GPU memory") && err.contains("about 5000"),
            "{err}"
        );
        // Below 416², where one tile is the whole image, the whole image's estimate.
        let available = estimate_host_peak_bytes(&square(300), MemoryMode::Lean) + 1.0;
        let err = check(2048, available, Pool::Host, square)
            .unwrap_err()
            .to_string();
        assert!(err.contains("about 300"), "{err}");
    }

    /// Tiles fit where the whole image does not, with the largest core that fits: a
    /// multiple of the deepest layer's stride; their estimate counts the whole image's
    /// optimizer state and content targets besides one tile's pass.
    #[test]
    fn tiles_take_the_largest_core_that_fits() {
        let w = square(8192);
        let lean = |side| estimate_tiled_peak_bytes(&w, Pool::Host, side);
        // By hand: the whole image's part at 8192², 10 history vectors, 6 the optimizer's,
        // 3 the tiles'; the content targets (relu4_2); the inputs, twice.
        let image = 4.0 * 3.0 * 8192.0 * 8192.0;
        let kept = (10.0 + 6.0 + 3.0) * image
            + 4.0 * 512.0 * 1024.0 * 1024.0
            + 2.0 * 12.0 * 2.0 * 8192.0 * 8192.0;
        // One 1184² tile: the lean base, the fast mode's share of its activations, six
        // tile-sized vectors.
        let tile = LEAN_BASE_BYTES
            + PER_ACTIVATION * 4.0 * geometry::activation_elems(w.deepest, 1184, 1184) as f64
            + 6.0 * 4.0 * 3.0 * 1184.0 * 1184.0;
        assert_eq!(lean(1024), tile + kept);
        let fit = check(8192, lean(1024) + 1.0, Pool::Host, square).unwrap();
        assert_eq!(
            (fit.tile_side, fit.estimated_peak_bytes),
            (Some(1024), lean(1024) as u64)
        );
        let fit = check(8192, lean(1024) - 1.0, Pool::Host, square).unwrap();
        assert_eq!(fit.tile_side, Some(1008));
        assert!(check(8192, lean(MIN_TILE_SIDE) - 1.0, Pool::Host, square).is_err());
    }

    /// `nst --scales 1 --iters 1` at w×h on a GPU: a pair of history vectors at most, and no
    /// input images (they stay on the host).
    fn one_iteration_on_a_gpu(w: usize, h: usize) -> Workload {
        Workload {
            deepest: "relu5_1".parse().unwrap(),
            size: (w, h),
            channels: 3,
            history_vectors: 2,
            fewest_history_vectors: 2,
            input_pixels: 0,
            content_target_elems: 512 * (w / 8) * (h / 8),
        }
    }

    #[test]
    fn gpu_estimates_bracket_the_emulators_peaks() {
        // `nst --device cuda-emulated --size S --scales 1 --iters 1` (the example images,
        // content 512×341 scaled): the emulator's peak device allocation.
        for (w, h, measured_mib) in [(256, 170, 218.4), (512, 341, 442.6), (1024, 681, 871.4)] {
            let workload = one_iteration_on_a_gpu(w, h);
            let est = estimate_gpu_peak_bytes(&workload, false) / MIB;
            assert!(
                est >= measured_mib && est <= 1.25 * measured_mib,
                "{w}×{h}: estimate {est:.0} MiB vs measured {measured_mib}"
            );
        }
    }

    #[test]
    fn gpu_estimates_with_cudnn_bracket_the_emulators_peaks() {
        // `NST_EMULATOR_CONV_LIBRARY=1 nst --device cuda-emulated --size S --scales 1
        // --iters 1`: the stand-in library takes no workspace and the layout is NCHW, so
        // those two terms are left out.
        for (w, h, measured_mib) in [(256, 170, 118.0), (512, 341, 236.3), (1024, 681, 602.9)] {
            let workload = one_iteration_on_a_gpu(w, h);
            let est = (estimate_gpu_peak_bytes(&workload, true)
                - GPU_CUDNN_WORKSPACE_BYTES
                - GPU_NHWC_WEIGHT_BYTES)
                / MIB;
            assert!(
                est >= measured_mib && est <= 1.15 * measured_mib,
                "{w}×{h}: estimate {est:.0} MiB vs measured {measured_mib}"
            );
        }
    }

    /// Where no mode holds the history asked for, the leanest mode with the longest history
    /// that fits, a pair (two vectors) at a time; below the fewest pairs, tiles.
    #[test]
    fn shortens_the_history_only_where_no_mode_holds_it() {
        // 100 L-BFGS pairs asked for, 5 the fewest.
        let asked = |side| Workload {
            fewest_history_vectors: 10,
            ..square_with_history(side, 200)
        };
        let with = |vectors| Workload {
            history_vectors: vectors,
            ..asked(2048)
        };
        let lean = |vectors| estimate_host_peak_bytes(&with(vectors), MemoryMode::Lean);
        let fit = |available| check(2048, available, Pool::Host, asked);
        let full = Fit {
            mode: MemoryMode::Lean,
            shortened_history_vectors: None,
            estimated_peak_bytes: lean(200) as u64,
            tile_side: None,
        };
        assert_eq!(fit(lean(200)).unwrap(), full);
        // Memory for 37.5 pairs: 37 of them.
        let shorter = Fit {
            mode: MemoryMode::Lean,
            shortened_history_vectors: Some(74),
            estimated_peak_bytes: lean(74) as u64,
            tile_side: None,
        };
        assert_eq!(fit(lean(75)).unwrap(), shorter);
        assert_eq!(fit(lean(74)).unwrap(), shorter);
        assert_eq!(fit(lean(10)).unwrap().shortened_history_vectors, Some(10));
        // Below that, tiles, which leave room for more of the history than the whole
        // image's 5 pairs.
        let tiled = fit(lean(10) - 1.0).unwrap();
        assert!(tiled.tile_side.is_some());
        assert!(
            tiled.shortened_history_vectors.is_some_and(|v| v > 10),
            "{tiled:?}"
        );
        let smallest =
            |vectors| estimate_tiled_peak_bytes(&with(vectors), Pool::Host, MIN_TILE_SIDE);
        // The longest history that fits in tiles: a pair more fits no tile.
        let v = tiled.shortened_history_vectors.unwrap();
        assert!(smallest(v) <= lean(10) - 1.0 && smallest(v + 2) > lean(10) - 1.0);
        let err = fit(smallest(10) - 1.0).unwrap_err().to_string();
        // The need named is the least any plan needs: the smallest tiles, the fewest pairs.
        assert!(err.contains(&readable(smallest(10))), "{err}");
        // On a GPU, the fast mode (its only one) with fewer pairs.
        let gpu = Pool::Gpu { cudnn: true };
        let need = estimate_gpu_peak_bytes(&with(50), true);
        let fit = check(2048, need, gpu, asked).unwrap();
        assert_eq!(
            (fit.mode, fit.shortened_history_vectors),
            (MemoryMode::Fast, Some(50))
        );
        // Adam's moments cannot shrink: no shorter history to try.
        let adam = |side| Workload {
            fewest_history_vectors: 2,
            ..square_with_history(side, 2)
        };
        let need = estimate_tiled_peak_bytes(&adam(2048), Pool::Host, MIN_TILE_SIDE);
        assert!(check(2048, need - 1.0, Pool::Host, adam).is_err());
    }

    #[test]
    fn limits_parse_with_units() {
        let parse = |s| parse_bytes("NST_GPU_MEMORY_LIMIT", s);
        assert_eq!(parse("512M").unwrap(), 512.0 * MIB);
        assert_eq!(parse("1.5g").unwrap(), 1.5 * 1024.0 * MIB);
        assert_eq!(parse("4096").unwrap(), 4096.0);
        assert_eq!(parse("4096 B").unwrap(), 4096.0);
        for eight_gib in ["8G", "8GB", "8 GiB", "8gib"] {
            assert_eq!(parse(eight_gib).unwrap(), 8.0 * 1024.0 * MIB, "{eight_gib}");
        }
        assert_eq!(parse("1T").unwrap(), 1024.0 * 1024.0 * MIB);
        assert_eq!(parse("2kb").unwrap(), 2048.0);
        let err = parse("-1G").unwrap_err().to_string();
        assert!(err.contains("is not a positive size"), "{err}");
        for bad in ["lots", "8X", "G", "8GG"] {
            let err = parse(bad).unwrap_err().to_string();
            let want = format!("NST_GPU_MEMORY_LIMIT: {bad:?} is not a size");
            assert!(err.starts_with(&want), "{err}");
        }
    }
}
