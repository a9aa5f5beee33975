//! # nst-fuzz
//!
//! The fuzzing harnesses of nst: one function per input a user (or an upload) controls, each
//! doing with arbitrary bytes exactly what `nst` does with a file, and checking the contract
//! — an `Err` with a one-line message or a valid result, never a panic, a hang or an
//! unbounded allocation.
//!
//! - [`image`]: decoding (PNG, JPEG, WebP; grey, alpha, 16-bit) with the size and allocation
//!   guards, then the preparation steps of a run: resizing, luminance split and join, colour
//!   matching, back to 8-bit.
//! - [`weights`]: the safetensors VGG-19 loader with its name, shape, dtype, codebook and
//!   finiteness checks.
//! - [`args`]: the command line (layer names, `--style-layer-weights`, `--style-blend`, every
//!   number) through clap and `Args::into_config`.
//!
//! `fuzz/` (cargo-fuzz, outside the workspace) runs them under libFuzzer; `tests/replay.rs`
//! replays the committed corpus (`fuzz/corpus/<target>`) and the seeds on every `cargo test`.

use clap::Parser;
use nst_image::color::{join_luminance, match_colors, match_luminance, split_luminance};
use nst_image::{decode_rgb, fit_longest_side, Planes};

/// Panics unless `message` is one line (the error contract of every loader).
fn assert_one_line(message: &str) {
    assert!(
        !message.is_empty() && !message.contains('\n'),
        "not a one-line error: {message:?}"
    );
}

/// Decodes `data` as an input image and prepares it as a run would.
pub fn image(data: &[u8]) {
    match decode_rgb(data, "fuzz input") {
        Err(e) => assert_one_line(&format!("{e:#}")),
        Ok(rgb) => {
            let planes = Planes::from_rgb(&rgb);
            // A size from the input, so both down- and upsampling are exercised.
            let side = 1 + (data.len() % 97) as u32;
            let (w, h) = fit_longest_side(planes.width, planes.height, side);
            let small = planes.resized(w, h);
            assert_eq!(small.data.len(), 3 * w * h);
            assert!(
                small.data.iter().all(|v| v.is_finite()),
                "non-finite pixels"
            );
            let (y, iq) = split_luminance(&small);
            let joined = join_luminance(&match_luminance(&y, &y), &iq).to_rgb();
            assert_eq!((joined.width() as usize, joined.height() as usize), (w, h));
            let matched = match_colors(&small, &small);
            assert!(
                matched.data.iter().all(|v| v.is_finite()),
                "colour matching"
            );
        }
    }
}

/// Loads `data` as VGG-19 weights.
pub fn weights(data: &[u8]) {
    match nst_vgg::weights::load(data) {
        Err(e) => assert_one_line(&e.to_string()),
        Ok(convs) => {
            assert_eq!(convs.len(), 16);
            assert!(convs
                .iter()
                .all(|c| c.weight.iter().chain(&c.bias).all(|v| v.is_finite())));
        }
    }
}

/// Parses `data` (one argument per line) after a fixed `nst -c … -s … -o …` prefix, then
/// validates it into a run configuration.
pub fn args(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut argv = vec!["nst", "-c", "c.png", "-s", "s.png", "-o", "fuzz-out.png"];
    argv.extend(text.lines().take(64));
    match nst_cli::args::Args::try_parse_from(&argv) {
        // clap's own messages (usage errors, --help) are multi-line by design.
        Err(_) => {}
        Ok(args) => {
            if let Err(e) = args.into_config() {
                assert_one_line(&format!("{e:#}"));
            }
        }
    }
}
