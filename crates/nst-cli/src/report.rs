//! The JSON report written by `--report FILE`.
//!
//! ```json
//! {"trace": [{"iter": 0, "total": …, "content": …, "style": …, "tv": …}, …],
//!  "timing": {"ms_per_iter_median": …, "total_s": …},
//!  "device": "…", "output": [w, h], "peak_rss_bytes": …, "peak_device_bytes": …,
//!  "peak_heap_bytes": …, "peak_heap_at": "…", "settings": {…}}
//! ```
//! `trace[k]` is the loss at the k-th iterate of the final scale (`trace[0]` at its start);
//! `total = α·content + β·style + γ·tv`, where `style` is already `Σ w_l·J_s^l`.

use crate::config::Config;
use serde::Serialize;

/// One point of the loss trace.
#[derive(Clone, Debug, Serialize)]
pub struct TracePoint {
    /// Iterate number at the final scale.
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
}

/// The whole report.
#[derive(Debug, Serialize)]
pub struct Report<'a> {
    /// Final-scale loss trace.
    pub trace: &'a [TracePoint],
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
