//! `nst`: neural style transfer from the command line. See `nst --help`.

use clap::Parser;
use nst_cli::args::Args;
use nst_cli::pipeline::{self, Interrupted};
use nst_cli::progress::{Bar, Lines, Progress, Quiet};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[global_allocator]
static ALLOCATOR: nst_tensor::allocator::Allocator = nst_tensor::allocator::Allocator {};

fn main() -> ExitCode {
    nst_tensor::allocator::keep_freed_memory();
    let args = Args::parse();
    let quiet = args.quiet;
    let config = match args.into_config() {
        Ok(c) => c,
        Err(e) => return fail(&e),
    };
    let interrupt = Arc::new(AtomicBool::new(false));
    let flag = interrupt.clone();
    // First Ctrl-C: finish the current iteration, write the best image, exit 130.
    // Second Ctrl-C: exit at once.
    let _ = ctrlc::set_handler(move || {
        if flag.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
    });
    let mut progress: Box<dyn Progress> = if quiet {
        Box::new(Quiet)
    } else if std::io::stderr().is_terminal() {
        Box::new(Bar::new())
    } else {
        Box::new(Lines::new(Duration::from_secs(5)))
    };
    match pipeline::run(&config, progress.as_mut(), &interrupt) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) if e.downcast_ref::<Interrupted>().is_some() => {
            eprintln!("{e}");
            ExitCode::from(130)
        }
        Err(e) => fail(&e),
    }
}

/// Prints the error and its causes on one line (Display, never Debug: no backtraces).
fn fail(e: &anyhow::Error) -> ExitCode {
    eprintln!("error: {e:#}");
    ExitCode::FAILURE
}
