//! Soak test: many consecutive small style-transfer runs in one process through the library
//! API (`Args` → `Config` → `pipeline::run`), printing the resident memory after each, to
//! show that nothing accumulates from run to run (a leak would grow it steadily).
//!
//! `cargo run --release -p nst-cli --example soak -- [RUNS] [SIZE]` (defaults 50 and 64).
//! Uses the `nst` binary's allocator (mimalloc keeping freed memory), so the figures are
//! those a long-lived process such as a server would see.

use clap::Parser;
use nst_cli::{args::Args, pipeline, progress::Quiet};
use std::sync::atomic::AtomicBool;

#[global_allocator]
static ALLOCATOR: nst_tensor::allocator::Allocator = nst_tensor::allocator::Allocator {};

const EXAMPLES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");

/// This process's resident set and its peak, in MiB.
fn rss_mib() -> (f64, f64) {
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    nst_tensor::allocator::resident_bytes()
        .map_or((f64::NAN, f64::NAN), |(now, peak)| (mib(now), mib(peak)))
}

fn main() -> anyhow::Result<()> {
    nst_tensor::allocator::keep_freed_memory();
    let mut cli = std::env::args().skip(1);
    let runs: usize = cli.next().map_or(Ok(50), |v| v.parse())?;
    let size = cli.next().unwrap_or_else(|| "64".into());
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("soak.png");
    let mut rss = Vec::new();
    for run in 1..=runs {
        // Alternate settings so that every path (colour modes, optimizers, TV) is exercised.
        let (colors, optimizer) =
            [("none", "lbfgs"), ("luminance", "adam"), ("match", "lbfgs")][run % 3];
        let args = Args::try_parse_from([
            "nst",
            "-c",
            &format!("{EXAMPLES}/content_chelsea.png"),
            "-s",
            &format!("{EXAMPLES}/style_vangogh_starry_night.jpg"),
            "-o",
            out.to_str().unwrap(),
            "--size",
            &size,
            "--iters",
            "6",
            "--preserve-colors",
            colors,
            "--optimizer",
            optimizer,
            "--tv-weight",
            "0.1",
        ])?;
        pipeline::run(&args.into_config()?, &mut Quiet, &AtomicBool::new(false))?;
        let (now, peak) = rss_mib();
        println!("run {run:3}: RSS {now:7.1} MiB (peak {peak:7.1} MiB)");
        rss.push(now);
    }
    if runs > 10 {
        let after_warm_up = rss[4];
        let last = rss[runs - 1];
        println!(
            "RSS after run 5: {after_warm_up:.1} MiB, after run {runs}: {last:.1} MiB, growth {:.1} MiB ({:+.2}%)",
            last - after_warm_up,
            100.0 * (last - after_warm_up) / after_warm_up
        );
    }
    Ok(())
}
