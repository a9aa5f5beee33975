//! Memory preflight: before optimising, estimate the peak memory the requested size needs
//! and stop with a clear error — naming the estimate, what is available and the largest
//! `--size` that fits — instead of being killed by the out-of-memory killer halfway through.
//!
//! The estimate (CPU): `BASE + PER_ACTIVATION · A + optimizer state`, where A is the bytes of
//! all activations of a forward pass to the deepest loss layer at the final scale
//! (`nst_vgg::geometry::activation_elems`), and the optimizer state is L-BFGS's (s, y)
//! history (or Adam's two moments) plus a few image-sized vectors; the input images at full
//! resolution come on top (12 bytes a pixel, twice). The backward pass no longer keeps every
//! activation (frozen layers keep one-bit masks; see nst-tensor), but what it does keep — the
//! loss layers' features, then a gradient or two of the largest layers — and what the
//! allocator holds on to still grow in proportion to A for the default layers.
//! The constants come from `cargo xtask bench-worker` peaks (default layers, 1–4
//! iterations, so little history): 700 MiB at 512², 1684 MiB at 1024², 5636 MiB at 2048²
//! (with one-byte max-pooling winners), which `BASE` = 400 MiB and `PER_ACTIVATION` = 1.0
//! reproduce within +8% … +11% (an overestimate, on purpose). With four-byte winners the
//! same runs peaked at 702–758, 1944 and 6052 MiB (`PER_ACTIVATION` 1.22), and before the
//! masks at 1016–1060, 3088 and 11716 MiB (2.4).
//!
//! `NST_MEMORY_LIMIT` (bytes, or with a K/M/G suffix) replaces the available memory, to test
//! the check or to override it.
//!
//! **On a GPU** the same check runs against the device's free memory (plus what its pool
//! holds unused; `NST_GPU_MEMORY_LIMIT` overrides it) with its own estimate,
//! [`estimate_gpu_peak_bytes`]: `GPU_BASE + im2col band + GPU_PER_ACTIVATION · A + optimizer
//! state (+ cuDNN's workspace limit where cuDNN is used)`. The input images stay on the host.
//! The constants come from the emulator's allocator, which counts exactly the device
//! allocations of the CUDA path (im2col, one iteration, `--device cuda-emulated --scales 1
//! --iters 1`): 218 MiB at 256×170, 443 MiB at 512×341, 871 MiB at 1024×681, which the
//! constants reproduce within +3% … +14%. Not yet checked on a GPU, where the CUDA context and
//! cuDNN's own allocations come on top (the free memory the driver reports already excludes
//! the context).

use anyhow::{bail, Result};
use nst_vgg::{geometry, Layer};

/// The binary, the weights (f32, 80 MB), the images at full size, allocator overhead.
const BASE_BYTES: f64 = 400.0 * MIB;
/// Peak bytes per byte of forward activations (see the module docs).
const PER_ACTIVATION: f64 = 1.0;
/// GPU: the weights (80 MB) and small buffers.
const GPU_BASE_BYTES: f64 = 90.0 * MIB;
/// GPU: peak device bytes per byte of forward activations (fit 0.67 to the emulator's peaks,
/// plus 10%).
const GPU_PER_ACTIVATION: f64 = 0.74;
/// GPU: the im2col patch matrix of conv1_2 (576 values a pixel), up to the band limit
/// (`nst_cuda::gpu::COLS_BUDGET` values).
const GPU_COLS_BYTES_PER_PIXEL: f64 = 4.0 * 576.0;
const GPU_COLS_MAX_BYTES: f64 = 256.0 * MIB;
/// GPU: the most workspace cuDNN's chosen algorithms may use (`nst_cuda::cudnn`).
const GPU_CUDNN_WORKSPACE_BYTES: f64 = 1024.0 * MIB;
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
    /// Pixels of the input images at full resolution (content and styles), kept as f32 RGB
    /// twice for the whole run (as decoded, and colour-prepared).
    pub input_pixels: usize,
}

/// Estimated peak resident memory, in bytes.
pub fn estimate_peak_bytes(w: &Workload) -> f64 {
    let (width, height) = w.size;
    let activations = 4.0 * geometry::activation_elems(w.deepest, height, width) as f64;
    let image = 4.0 * (w.channels * width * height) as f64;
    BASE_BYTES
        + PER_ACTIVATION * activations
        + (w.history_vectors as f64 + OPTIMIZER_VECTORS) * image
        + INPUT_COPIES * 12.0 * w.input_pixels as f64
}

/// Estimated peak device memory on a GPU, in bytes; `cudnn` when convolutions go to cuDNN.
pub fn estimate_gpu_peak_bytes(w: &Workload, cudnn: bool) -> f64 {
    let (width, height) = w.size;
    let activations = 4.0 * geometry::activation_elems(w.deepest, height, width) as f64;
    let image = 4.0 * (w.channels * width * height) as f64;
    let pixels = (width * height) as f64;
    let convolutions = if cudnn {
        GPU_CUDNN_WORKSPACE_BYTES
    } else {
        (GPU_COLS_BYTES_PER_PIXEL * pixels).min(GPU_COLS_MAX_BYTES)
    };
    GPU_BASE_BYTES
        + convolutions
        + GPU_PER_ACTIVATION * activations
        + (w.history_vectors as f64 + OPTIMIZER_VECTORS) * image
}

/// Device memory a run on a GPU may use: `NST_GPU_MEMORY_LIMIT` if set, else what the device
/// reports (`None` when it does not).
pub fn available_gpu_bytes(reported: Option<u64>) -> Result<Option<f64>> {
    if let Ok(v) = std::env::var("NST_GPU_MEMORY_LIMIT") {
        return parse_bytes(&v).map(Some);
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
    fn estimate(self, w: &Workload) -> f64 {
        match self {
            Pool::Host => estimate_peak_bytes(w),
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
    if let Ok(v) = std::env::var("NST_MEMORY_LIMIT") {
        return parse_bytes(&v).map(Some);
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

/// Bytes for a message: "0.6 GB" from 0.5 GB up (as before), "95 MB" below, so that two
/// small amounts do not both read "0.1 GB".
fn readable(bytes: f64) -> String {
    let gib = bytes / (MIB * 1024.0);
    if gib >= 0.5 {
        format!("{gib:.1} GB")
    } else {
        format!("{:.0} MB", bytes / MIB)
    }
}

/// `"512M"`, `"2G"`, `"1.5G"`, `"300000000"` → bytes.
fn parse_bytes(s: &str) -> Result<f64> {
    let t = s.trim();
    let (number, unit) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&t[..i], c.to_ascii_uppercase()),
        _ => (t, 'B'),
    };
    let scale = match unit {
        'B' => 1.0,
        'K' => 1024.0,
        'M' => MIB,
        'G' => MIB * 1024.0,
        _ => bail!("NST_MEMORY_LIMIT: unknown unit in {s:?} (use K, M or G)"),
    };
    match number.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v * scale),
        _ => bail!("NST_MEMORY_LIMIT: {s:?} is not a positive size (e.g. 8G)"),
    }
}

/// Fails when the workload of `--size requested_side` does not fit `available` bytes;
/// `size_of(side)` gives the workload of `--size side` (also used to find the largest that
/// fits).
pub fn check(
    requested_side: u32,
    available: f64,
    pool: Pool,
    size_of: impl Fn(u32) -> Workload,
) -> Result<()> {
    let estimate_peak_bytes = |w: &Workload| pool.estimate(w);
    let need = estimate_peak_bytes(&size_of(requested_side));
    if need <= available {
        return Ok(());
    }
    // Largest side that fits (the estimate grows with the side).
    let (mut lo, mut hi) = (0u32, requested_side);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if estimate_peak_bytes(&size_of(mid)) <= available {
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
    bail!(
        "--size {requested_side} needs about {} of {memory} (estimated peak) but {} is available: {hint} ({variable} overrides the available amount)",
        readable(need),
        readable(available)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn square_with_history(side: u32, history_vectors: usize) -> Workload {
        Workload {
            deepest: "relu5_1".parse().unwrap(),
            size: (side as usize, side as usize),
            channels: 3,
            history_vectors,
            // The bench's content and style images at the bench size.
            input_pixels: 2 * side as usize * side as usize,
        }
    }

    fn square(side: u32) -> Workload {
        square_with_history(side, 10)
    }

    #[test]
    fn estimates_bracket_the_measured_peaks() {
        // Measured (`xtask bench-worker --size N --iters K`: up to 2K history vectors): the
        // estimate is above each and at most 25% above.
        for (side, iters, measured_mib) in [(512, 4, 700.0), (1024, 2, 1684.0), (2048, 1, 5636.0)] {
            let est = estimate_peak_bytes(&square_with_history(side, 2 * iters)) / MIB;
            assert!(
                est >= measured_mib && est <= 1.25 * measured_mib,
                "{side}²: estimate {est:.0} MiB vs measured {measured_mib}"
            );
        }
    }

    #[test]
    fn suggests_the_largest_size_that_fits() {
        let available = estimate_peak_bytes(&square(1000)) + 1.0;
        let err = check(2048, available, Pool::Host, square)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("the largest --size that fits is about 1000"),
            "{err}"
        );
        assert!(check(1000, available, Pool::Host, square).is_ok());
        let gpu = Pool::Gpu { cudnn: true };
        let available = estimate_gpu_peak_bytes(&square(1500), true) + 1.0;
        let err = check(4096, available, gpu, square).unwrap_err().to_string();
        assert!(
            err.contains("of GPU memory") && err.contains("about 1500"),
            "{err}"
        );
    }

    #[test]
    fn gpu_estimates_bracket_the_emulators_peaks() {
        // `nst --device cuda-emulated --size S --scales 1 --iters 1` (the example images,
        // content 512×341 scaled): the emulator's peak device allocation.
        for (w, h, measured_mib) in [(256, 170, 218.4), (512, 341, 442.6), (1024, 681, 871.4)] {
            let workload = Workload {
                deepest: "relu5_1".parse().unwrap(),
                size: (w, h),
                channels: 3,
                history_vectors: 2,
                input_pixels: 0,
            };
            let est = estimate_gpu_peak_bytes(&workload, false) / MIB;
            assert!(
                est >= measured_mib && est <= 1.25 * measured_mib,
                "{w}×{h}: estimate {est:.0} MiB vs measured {measured_mib}"
            );
        }
    }

    #[test]
    fn limits_parse_with_units() {
        assert_eq!(parse_bytes("512M").unwrap(), 512.0 * MIB);
        assert_eq!(parse_bytes("1.5g").unwrap(), 1.5 * 1024.0 * MIB);
        assert_eq!(parse_bytes("4096").unwrap(), 4096.0);
        assert!(parse_bytes("-1G").is_err() && parse_bytes("lots").is_err());
    }
}
