//! `nst`: neural style transfer from the command line (`nst --help`), and `nst serve`, a
//! local web page over the same pipeline (`nst serve --help`).

use clap::Parser;
use nst_cli::args::Args;
use nst_cli::pipeline::{self, Interrupted};
use nst_cli::progress::{Bar, Lines, Progress, Quiet};
use nst_cli::serve::{self, ServeArgs};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: nst_tensor::allocator::Allocator = nst_tensor::allocator::Allocator {};

fn main() -> ExitCode {
    nst_tensor::allocator::keep_freed_memory();
    // `nst help`, `nst help serve` and `nst serve help`, as users of git and cargo type them
    // (clap's --help prints the help and exits).
    let words: Vec<_> = std::env::args_os().skip(1).collect();
    match &words[..] {
        [help] if help == "help" => drop(Args::parse_from(["nst", "--help"])),
        [a, b] if (a == "help" && b == "serve") || (a == "serve" && b == "help") => {
            drop(ServeArgs::parse_from(["nst serve", "--help"]))
        }
        _ => {}
    }
    if std::env::args_os().nth(1).is_some_and(|a| a == "serve") {
        // `nst serve …`: its own arguments; the one-shot form needs -c/-s/-o, so a first
        // argument `serve` cannot mean anything else.
        let argv = std::iter::once("nst serve".into()).chain(std::env::args_os().skip(2));
        let args = ServeArgs::parse_from(argv);
        return match serve::run(&args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => fail(&e),
        };
    }
    let args = Args::parse_from(nst_cli::args::join_negative_values(std::env::args_os()));
    let quiet = args.quiet;
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let (interrupt, signal) = watch_signals();
    let (mut progress, say): (Box<dyn Progress>, Say) = if quiet {
        (Box::new(Quiet), Box::new(|_: &str| {}))
    } else if std::io::stderr().is_terminal() {
        let bar = Bar::new();
        let say = Box::new(bar.printer());
        (Box::new(bar), say)
    } else {
        let lines = Lines::new(Duration::from_secs(5));
        (Box::new(lines), Box::new(|msg: &str| eprintln!("{msg}")))
    };
    let acknowledgement = Acknowledgement::start(interrupt.clone(), say);
    let result = pipeline::run(&config, progress.as_mut(), &interrupt);
    if !acknowledgement.run_over() && !quiet && interrupt.load(Ordering::SeqCst) {
        // The run stopped before the watcher woke (within milliseconds where its ops are
        // small): say it here, before what it ended with.
        eprintln!("{STOPPING}");
    }
    let code = match result {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
            eprintln!("{e}");
            ExitCode::from(128 + signal.load(Ordering::SeqCst) as u8)
        }
        Err(e) => fail(&e),
    };
    // NST_CUDA_PROFILE=1: the GPU time per operation, one-off costs included, every row.
    if let Some(table) = nst_tensor::cuda_backend::profile::report(usize::MAX) {
        eprint!("{table}");
    }
    code
}

/// SIGINT (Ctrl-C) and SIGTERM: the first stops the run within one op (a convolution), writes
/// the best image and exits with 128 + the signal's number (130, 143), as shells report a
/// process killed by it; a second one ends the process at once. Returns the flag the pipeline polls
/// and the number of the signal that raised it.
fn watch_signals() -> (Arc<AtomicBool>, Arc<AtomicUsize>) {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let interrupt = Arc::new(AtomicBool::new(false));
    let signal = Arc::new(AtomicUsize::new(SIGINT as usize));
    for sig in [SIGINT, SIGTERM] {
        // Registered first, so it sees the flag as the previous signal left it.
        let _ = signal_hook::flag::register_conditional_shutdown(sig, 128 + sig, interrupt.clone());
        let _ = signal_hook::flag::register_usize(sig, signal.clone(), sig as usize);
        let _ = signal_hook::flag::register(sig, interrupt.clone());
    }
    (interrupt, signal)
}

/// Prints a line from another thread.
type Say = Box<dyn Fn(&str) + Send>;

const STOPPING: &str = "stopping: writing the best image so far (a second Ctrl-C quits at once)";

/// Says at once that the first signal was heard: the run stops at the next op, which at
/// large sizes on a CPU may take seconds (one convolution over a large image). A watcher
/// thread says it while the run goes on, through the progress display (above the bar). Once
/// the run is over it stays silent, and `main` says it instead: a line printed through the
/// bars after the last one finished would erase it.
struct Acknowledgement {
    state: Arc<Mutex<Spoken>>,
}

#[derive(Default)]
struct Spoken {
    run_over: bool,
    by_watcher: bool,
}

impl Acknowledgement {
    fn start(interrupt: Arc<AtomicBool>, say: Say) -> Self {
        let state = Arc::new(Mutex::new(Spoken::default()));
        let watched = state.clone();
        std::thread::spawn(move || {
            while !interrupt.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let mut spoken = watched.lock().unwrap_or_else(|e| e.into_inner());
            if !spoken.run_over {
                say(STOPPING);
                spoken.by_watcher = true;
            }
        });
        Self { state }
    }

    /// Marks the run over; whether the watcher had already spoken.
    fn run_over(&self) -> bool {
        let mut spoken = self.state.lock().unwrap_or_else(|e| e.into_inner());
        spoken.run_over = true;
        spoken.by_watcher
    }
}

/// Prints the error and its causes on one line (Display, never Debug: no backtraces).
fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}
