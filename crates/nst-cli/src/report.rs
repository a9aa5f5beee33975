//! The JSON report written by `--report FILE`.
//!
//! ```json
//! {"interrupted": false,
//!  "trace": [{"iter": 0, "total": …, "content": …, "style": …, "tv": …}, …],
//!  "trace_scale": 5,
//!  "timing": {"ms_per_iter_median": …, "total_s": …, "setup_s": …,
//!             "scales": [{"width": …, "height": …, "iterations": …, "total_s": …,
//!                         "before_first_iter_s": …, "ms_per_iter_median": …}, …]},
//!  "device": "…", "output": [w, h], "peak_rss_bytes": …, "peak_device_bytes": …,
//!  "peak_heap_bytes": …, "peak_heap_at": "…", "memory_mode": "fast", "tile_side": null,
//!  "lbfgs_history": 100,
//!  "estimated_peak_bytes": …, "settings": {…}}
//! ```
//! `trace[k]` is the loss at the k-th iterate of the final scale (`trace[0]` at its start), or
//! of the scale an interrupted run stopped in (`trace_scale` says which);
//! `total = α·content + β·style + γ·tv`, where `style` is already `Σ w_l·J_s^l`.

use crate::config::Config;
use serde::Serialize;

/// One point of the loss trace.
#[derive(Clone, Debug, Serialize)]
pub struct TracePoint {
    /// Iterate number within the trace's scale.
    pub iter: u32,
    /// α·content + β·style + γ·tv.
    pub total: f64,
    /// Σ over content layers of J_c.
    pub content: f64,
    /// Σ_l w_l·J_s^l.
    pub style: f64,
    /// TV.
    pub tv: f64,
}

/// Timing figures.
#[derive(Clone, Debug, Serialize)]
pub struct Timing {
    /// Median wall time of one iteration at the final scale, in ms.
    pub ms_per_iter_median: f64,
    /// Wall time of the whole run, in s.
    pub total_s: f64,
    /// From the start to the first scale: opening the device (on a GPU, compiling the
    /// kernels), reading the images and loading the weights, in s.
    pub setup_s: f64,
    /// Each scale, coarse to fine.
    pub scales: Vec<ScaleTiming>,
}

/// Where one scale's time went.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleTiming {
    /// Image width and height at this scale.
    pub width: usize,
    /// See `width`.
    pub height: usize,
    /// Optimizer steps taken.
    pub iterations: usize,
    /// Wall time of the scale, from its style targets to its last iterate, in s.
    pub total_s: f64,
    /// Before its first step: the style and content targets and the first evaluation (on
    /// a GPU, with cuDNN's algorithm search for the scale's new shapes), in s.
    pub before_first_iter_s: f64,
    /// Median wall time of one step, in ms (0 when there was none).
    pub ms_per_iter_median: f64,
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    /// Whether the run was interrupted (Ctrl-C, SIGTERM): the trace and the timings then
    /// stop where it did, and the image written is the best one so far.
    pub interrupted: bool,
    /// The loss at each iterate of the final scale or, where the run was interrupted, of the
    /// scale it stopped in (of the one before, if it stopped before that scale's first
    /// iterate; empty if it stopped before any).
    pub trace: &'a [TracePoint],
    /// Which scale the trace is from, 1 to the number of scales (`null` with an empty trace).
    pub trace_scale: Option<usize>,
    /// Timing.
    pub timing: Timing,
    /// The device used.
    pub device: String,
    /// Output width and height.
    pub output: [usize; 2],
    /// The process's peak resident memory so far (Linux `VmHWM`), if it can be read.
    pub peak_rss_bytes: Option<u64>,
    /// On a GPU: the most device memory allocated at once (the allocator's high-water mark).
    pub peak_device_bytes: Option<u64>,
    /// The most heap memory in use at once (allocations counted by nst's allocator; below
    /// `peak_rss_bytes` by what the allocator keeps for reuse).
    pub peak_heap_bytes: Option<usize>,
    /// What the run was doing when the heap peaked, e.g. "backward of conv2d → [1, 64, 341,
    /// 512]" (the op whose gradient was being computed, and its output's shape).
    pub peak_heap_at: Option<String>,
    /// "fast", or "lean" where the preflight found that only the lean mode fits the memory
    /// available (see `memory::MemoryMode`).
    pub memory_mode: &'static str,
    /// The tile core side where the network ran tile by tile (absent otherwise): where the
    /// preflight found that the whole image's activations fit in no mode (see
    /// `memory::check`).
    pub tile_side: Option<usize>,
    /// The most (s, y) pairs L-BFGS kept (absent with Adam): 100, or `--iters` if fewer;
    /// fewer at sizes where 100 would pass 2 GiB (down to 5), and fewer still (down to 5)
    /// where the preflight found that only a shorter history fits the memory (see
    /// `memory::check`).
    pub lbfgs_history: Option<usize>,
    /// The memory preflight's estimate of the peak (device memory on a GPU, else resident
    /// memory), to set beside `peak_device_bytes` or `peak_rss_bytes`; absent where the
    /// memory available could not be read (the preflight did not run).
    pub estimated_peak_bytes: Option<u64>,
    /// The resolved settings.
    pub settings: &'a Config,
}

/// Median of a non-empty list (0 for an empty one).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(super::median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(super::median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert_eq!(super::median(&[]), 0.0);
    }
}
