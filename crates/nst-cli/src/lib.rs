//! # nst-cli
//!
//! The `nst` command and the style-transfer pipeline behind it, usable as a library:
//!
//! ```no_run
//! use clap::Parser;
//! use nst_cli::{args::Args, pipeline, progress::Quiet};
//! let args = Args::parse_from(["nst", "-c", "photo.jpg", "-s", "painting.jpg", "-o", "out.png", "--size", "256"]);
//! let config = args.into_config().expect("valid arguments");
//! let outcome = pipeline::run(&config, &mut Quiet, &Default::default()).expect("style transfer");
//! println!("{:?}", outcome.output_size);
//! ```
//!
//! The crate only orchestrates; the work is done by the library crates:
//! `nst-image` (decoding, colour preservation, atomic writing), `nst-vgg` (the network and
//! its layer geometry), `nst-loss` (the total objective), `nst-optim` (the optimizers and the
//! safeguarded optimisation loop) and `nst-tensor` (devices).
//!
//! - [`args`]: command-line arguments (clap) and their validation into a [`config::Config`].
//! - [`pipeline`]: the run as named stages (device, inputs, scale plan, colours, optimisation,
//!   output), writing the best image on interruption or a non-finite loss.
//! - [`memory`]: the memory preflight (estimated peak against what is available).
//! - [`paths`]: the files a run writes, checked before it starts.
//! - [`progress`], [`report`]: what the user sees while it runs and the JSON report.
//! - [`serve`]: `nst serve`, the web page and HTTP API over the same pipeline.

pub mod args;
pub mod config;
pub mod memory;
pub mod paths;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod serve;
