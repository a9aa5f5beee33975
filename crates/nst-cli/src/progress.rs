//! What the user sees while a run goes on.

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::time::{Duration, Instant};

/// One iteration's figures.
#[derive(Clone, Debug)]
pub struct IterationInfo {
    /// 1-based scale number.
    pub scale: usize,
    /// Number of scales.
    pub scales: usize,
    /// Iterations done at this scale.
    pub iter: u32,
    /// Iterations planned at this scale.
    pub iters: u32,
    /// Total loss at the current iterate.
    pub total: f64,
    /// Iterations per second at this scale so far.
    pub it_per_s: f64,
}

/// Receives progress events from the pipeline.
pub trait Progress {
    /// A scale begins.
    fn scale_started(
        &mut self,
        scale: usize,
        scales: usize,
        width: usize,
        height: usize,
        iters: u32,
    );
    /// An iteration finished.
    fn iteration(&mut self, info: &IterationInfo);
    /// A scale ended.
    fn scale_finished(&mut self);
    /// A one-line note (device in use, files written).
    fn note(&mut self, msg: &str);
    /// How the run departs from what was asked so as to fit the memory available (the lean
    /// mode, a shorter L-BFGS history), in one line. By default a note (so `--quiet` drops
    /// it, as it drops notes); `nst serve`'s jobs show these and drop the other notes.
    fn warning(&mut self, msg: &str) {
        self.note(msg);
    }
    /// `--device auto` chose `device` (in words); `why_not_cuda` says why it is not CUDA.
    /// By default a note: `device: DEVICE; WHY` (without `; WHY` when it is CUDA).
    fn device_chosen(&mut self, device: &str, why_not_cuda: Option<&str>) {
        match why_not_cuda {
            Some(why) => self.note(&format!("device: {device}; {why}")),
            None => self.note(&format!("device: {device}")),
        }
    }
    /// Whether [`Progress::preview`] should get the current image after this iteration.
    /// Making the picture costs a copy from the device and a resize, so only a front end
    /// that shows it says yes.
    fn wants_preview(&mut self, _info: &IterationInfo) -> bool {
        false
    }
    /// The current iterate as the output picture would show it (output size, colours
    /// restored), after an iteration for which [`Progress::wants_preview`] said yes.
    fn preview(&mut self, _info: &IterationInfo, _image: &image::RgbImage) {}
}

/// Prints nothing.
pub struct Quiet;

impl Progress for Quiet {
    fn scale_started(&mut self, _: usize, _: usize, _: usize, _: usize, _: u32) {}
    fn iteration(&mut self, _: &IterationInfo) {}
    fn scale_finished(&mut self) {}
    fn note(&mut self, _: &str) {}
}

/// An indicatif bar on a terminal: scale, iteration, loss, it/s, ETA.
pub struct Bar {
    bar: Option<ProgressBar>,
    /// Where the bars are drawn: lines printed through it go above them, from any thread.
    lines: MultiProgress,
}

impl Bar {
    /// A bar drawn on stderr.
    pub fn new() -> Self {
        Self {
            bar: None,
            lines: MultiProgress::new(),
        }
    }

    /// Prints a line above the bar from another thread (a plain `eprintln!` there lands on
    /// the bar's own line, and the next redraw garbles it).
    pub fn printer(&self) -> impl Fn(&str) + Send + 'static {
        let lines = self.lines.clone();
        move |msg| {
            let _ = lines.println(msg);
        }
    }
}

impl Default for Bar {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress for Bar {
    fn scale_started(
        &mut self,
        scale: usize,
        scales: usize,
        width: usize,
        height: usize,
        iters: u32,
    ) {
        let bar = self.lines.add(ProgressBar::new(iters as u64));
        let style = ProgressStyle::with_template(
            "scale {prefix} {bar:30.cyan/blue} {pos}/{len} {msg} [{elapsed_precise}<{eta_precise}]",
        )
        .expect("valid template")
        .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(format!("{scale}/{scales} {width}×{height}"));
        // Redrawn every second, not only at each iteration: at 4096² on a CPU one takes a
        // minute, and a clock that stands still for that long looks like a hang.
        bar.enable_steady_tick(Duration::from_secs(1));
        self.bar = Some(bar);
    }
    fn iteration(&mut self, info: &IterationInfo) {
        if let Some(bar) = &self.bar {
            bar.set_position(info.iter as u64);
            bar.set_message(format!("loss {:.4e} {:.2} it/s", info.total, info.it_per_s));
        }
    }
    fn scale_finished(&mut self) {
        // Left where it stopped: `finish` would fill it, as if an interrupted or converged
        // scale had run all its iterations.
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
    fn note(&mut self, msg: &str) {
        match &self.bar {
            Some(bar) => bar.println(msg),
            None => eprintln!("{msg}"),
        }
    }
}

/// Plain lines on stderr (for logs and pipes): the start of each scale, then at most one
/// line every few seconds and the last iteration.
pub struct Lines {
    last: Option<Instant>,
    every: Duration,
}

impl Lines {
    /// Lines at most every `every`.
    pub fn new(every: Duration) -> Self {
        Self { last: None, every }
    }
}

impl Progress for Lines {
    fn scale_started(
        &mut self,
        scale: usize,
        scales: usize,
        width: usize,
        height: usize,
        iters: u32,
    ) {
        let plural = if iters == 1 { "" } else { "s" };
        eprintln!("scale {scale}/{scales}: {width}×{height}, {iters} iteration{plural}");
        self.last = Some(Instant::now());
    }
    fn iteration(&mut self, info: &IterationInfo) {
        let due = self.last.is_none_or(|t| t.elapsed() >= self.every);
        if due || info.iter == info.iters {
            eprintln!(
                "scale {}/{} iter {}/{} loss {:.4e} ({:.2} it/s)",
                info.scale, info.scales, info.iter, info.iters, info.total, info.it_per_s
            );
            self.last = Some(Instant::now());
        }
    }
    fn scale_finished(&mut self) {}
    fn note(&mut self, msg: &str) {
        eprintln!("{msg}");
    }
}
