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
//! - [`args`]: command-line arguments (clap) and their validation into a [`config::Config`].
//! - [`pipeline`]: coarse-to-fine optimisation of the image, best-image tracking, interruption.
//! - [`objective`]: the total loss `α·J_c + β·Σ w_l·J_s^l + γ·TV` and its gradient.
//! - [`color`]: colour preservation (luminance-only transfer, colour matching).
//! - [`image_io`]: decoding with limits, resampling, atomic encoding.
//! - [`progress`], [`report`]: what the user sees while it runs and the JSON report.

pub mod allocator;
pub mod args;
pub mod color;
pub mod config;
pub mod image_io;
pub mod objective;
pub mod pipeline;
pub mod progress;
pub mod report;
