//! Opt-in time per GPU operation: with `NST_CUDA_PROFILE=1`, every kernel launch, SGEMM and
//! cuDNN call that [`crate::Gpu`] makes is timed alone and added to a table by name, which
//! [`report`] prints. The device is synchronised before and after each operation, so the
//! times are the operations' own (plus a launch's latency, a few µs) and the iteration runs
//! slower than it otherwise would: this is for finding where the time goes, not for timing
//! the whole. It exists because a GPU session's device time is short: one run of
//! `scripts/device-check.sh` should say which operations to make faster.
//!
//! Names: a kernel's name; `sgemm M×K×N` (per shape, so the Gram matrices, their gradients
//! and the im2col products show apart); `cudnn forward` / `cudnn backward-data` with the
//! convolution's channels and input size; and the one-off costs: `conv algorithm search: …`
//! (cuDNN's `cudnnFind*`, once per shape that searches), `conv algorithm heuristics: …`
//! (its `cudnnGet*_v7`) and `conv algorithm remembered: …` (a choice from an earlier run,
//! taking no time; see [`crate::conv_choice`]), and the kernels' `… + module load` (once per
//! process: compiled by NVRTC, or from the cache; see [`crate::compiled_kernels`]).
//! The `nst` command prints the table at its end (with the one-off costs);
//! `xtask bench-worker` after its warm-up (without them). A line under the title sums the rows
//! by kind (cuDNN forward, cuDNN backward-data, SGEMM, nst's kernels, one-off costs), as
//! `xtask/peer/torch_nst.py --profile` sums PyTorch's kernels.

use crate::runtime::{GpuResult, Runtime};
use nst_params::Conv2dParams;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Calls and total time per operation name.
type Table = HashMap<String, (u64, Duration)>;

fn table() -> Option<&'static Mutex<Table>> {
    static TABLE: OnceLock<Option<Mutex<Table>>> = OnceLock::new();
    TABLE
        .get_or_init(|| {
            std::env::var("NST_CUDA_PROFILE")
                .is_ok_and(|v| v == "1")
                .then(|| Mutex::new(HashMap::new()))
        })
        .as_ref()
}

/// Whether `NST_CUDA_PROFILE=1` was set when the first operation ran.
pub fn enabled() -> bool {
    table().is_some()
}

/// Runs `op`, and when profiling, times it alone (synchronising before and after) under the
/// name `name()` (only formatted when profiling).
pub(crate) fn timed<T>(
    runtime: &dyn Runtime,
    name: impl FnOnce() -> String,
    op: impl FnOnce() -> GpuResult<T>,
) -> GpuResult<T> {
    if !enabled() {
        return op();
    }
    runtime.synchronize()?;
    let start = Instant::now();
    let out = op()?;
    runtime.synchronize()?;
    record(name, start.elapsed());
    Ok(out)
}

/// Adds `took` under `name()` when profiling: for what is timed outside [`timed`] (the
/// kernels' compilation, which happens before there is a runtime to synchronise).
pub(crate) fn record(name: impl FnOnce() -> String, took: Duration) {
    if let Some(table) = table() {
        let mut table = table.lock().unwrap_or_else(|e| e.into_inner());
        let entry = table.entry(name()).or_default();
        entry.0 += 1;
        entry.1 += took;
    }
}

/// Forgets what was timed so far (to leave out a warm-up).
pub fn reset() {
    if let Some(table) = table() {
        table.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// The table so far, slowest total first, one operation per line (calls, total ms, share of
/// the timed total), the first `rows` of them; `None` when not profiling.
pub fn report(rows: usize) -> Option<String> {
    let table = table()?.lock().unwrap_or_else(|e| e.into_inner());
    let total: Duration = table.values().map(|(_, t)| *t).sum();
    let mut lines: Vec<_> = table.iter().collect();
    lines.sort_by(|a, b| b.1 .1.cmp(&a.1 .1).then_with(|| a.0.cmp(b.0)));
    let calls: u64 = table.values().map(|(n, _)| n).sum();
    let mut out = format!(
        "GPU time per operation (NST_CUDA_PROFILE): {:.1} ms over {calls} call{}\n",
        total.as_secs_f64() * 1e3,
        if calls == 1 { "" } else { "s" }
    );
    out += &kinds_line(&table);
    for (name, (calls, took)) in lines.into_iter().take(rows) {
        let ms = took.as_secs_f64() * 1e3;
        let share = 100.0 * took.as_secs_f64() / total.as_secs_f64().max(1e-12);
        out += &format!("{ms:10.2} ms {share:5.1}% {calls:7} × {name}\n");
    }
    Some(out)
}

/// The kind of work a table row is: cuDNN's convolutions each way, cuBLAS's SGEMMs (Gram
/// matrices and their gradients; the im2col products without cuDNN), nst's own kernels, and
/// the one-off costs (algorithm choices, the kernels' compile or load).
fn kind(name: &str) -> &'static str {
    if name.starts_with("cudnn forward") {
        "convolution forward"
    } else if name.starts_with("cudnn backward-data") {
        "convolution backward-data"
    } else if name.starts_with("sgemm") {
        "SGEMM"
    } else if name.starts_with("conv algorithm") || name.contains("module load") {
        "one-off"
    } else {
        "nst's kernels"
    }
}

/// `by kind: 5.10 ms convolution forward, …`, the largest first: the sums to set beside
/// PyTorch's profile of the same iteration (`xtask/peer/torch_nst.py --profile`, which sums
/// its kernels by the same kinds).
fn kinds_line(table: &Table) -> String {
    let mut sums: HashMap<&str, Duration> = HashMap::new();
    for (name, (_, took)) in table {
        *sums.entry(kind(name)).or_default() += *took;
    }
    let mut kinds: Vec<_> = sums.into_iter().collect();
    kinds.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
    let parts: Vec<String> = kinds
        .iter()
        .map(|(k, t)| format!("{:.2} ms {k}", t.as_secs_f64() * 1e3))
        .collect();
    format!("by kind: {}\n", parts.join(", "))
}

/// A convolution for the profile table: `64→128 3×3 at 256×256` (batch when above 1).
pub(crate) fn conv_name(c: &Conv2dParams) -> String {
    let batch = if c.batch > 1 {
        format!(" ×{}", c.batch)
    } else {
        String::new()
    };
    format!(
        "{}→{} {}×{} at {}×{}{batch}{}",
        c.in_channels,
        c.out_channels,
        c.kernel_h,
        c.kernel_w,
        c.in_h,
        c.in_w,
        if c.stride > 1 {
            format!(" stride {}", c.stride)
        } else {
            String::new()
        }
    )
}
