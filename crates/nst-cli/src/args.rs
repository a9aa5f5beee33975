//! Command-line arguments and their validation.

use crate::config::{ColorMode, Config, DeviceChoice, Init, OptimizerKind, PrecisionChoice};
use crate::paths;
use anyhow::{bail, ensure, Result};
use clap::Parser;
use nst_image::OutputFormat;
use nst_tensor::{ConvAlgorithm, Layout};
use nst_vgg::{Layer, Pooling};
use std::ffi::OsString;
use std::path::{Path, PathBuf};

/// Defaults, chosen by comparing results on the shared photos and paintings (see README).
pub mod defaults {
    use nst_loss::defaults as loss;

    /// Longest side of the output.
    pub const SIZE: u32 = 512;
    /// Iterations per scale.
    pub const ITERS: u32 = 100;
    /// α.
    pub const CONTENT_WEIGHT: f32 = loss::CONTENT_WEIGHT;
    /// β.
    pub const STYLE_WEIGHT: f32 = loss::STYLE_WEIGHT;
    /// γ.
    pub const TV_WEIGHT: f32 = loss::TV_WEIGHT;
    /// Content layer (`nst_loss::defaults::CONTENT_LAYERS`, as clap's default).
    pub const CONTENT_LAYERS: &str = "relu4_2";
    /// Style layers (`nst_loss::defaults::STYLE_LAYERS`, as clap's default).
    pub const STYLE_LAYERS: &str = "relu1_1,relu2_1,relu3_1,relu4_1,relu5_1";
    /// w_l for the default style layers: the middle layers weigh most.
    pub const STYLE_LAYER_WEIGHTS: [f32; 5] = loss::STYLE_LAYER_WEIGHTS;
    /// Coarsest scale's longest side when `--scales` is not given.
    pub const COARSEST_SIDE: u32 = 128;
    /// Adam's step in pixel units (0..255).
    pub const ADAM_LR: f32 = nst_optim::AdamConfig::IMAGE_LR;
}

/// Largest output side accepted.
pub const MAX_SIZE: u32 = 16384;

/// Command-line arguments of `nst`.
#[derive(Parser, Debug)]
#[command(
    name = "nst",
    version,
    about = "Repaint a photo in the style of a painting (neural style transfer, Gatys et al.)",
    after_help = "Example: nst -c photo.jpg -s painting.jpg -o out.png\nCtrl-C (or SIGTERM) writes the best image so far and exits with code 130 (143).\nnst serve: a local web page to do the same (see nst serve --help).",
    max_term_width = 100,
    // `--seed -1` is a (bad) value, to be named as such, not an unknown option; so are the
    // weights' `-1e-3` and `-.5`, which clap's test does not take (see `join_negative_values`).
    allow_negative_numbers = true
)]
pub struct Args {
    /// Content photo (PNG, JPEG or WebP).
    #[arg(short = 'c', long, value_name = "FILE")]
    pub content: PathBuf,

    /// Style image; repeat to blend several styles (see --style-blend).
    #[arg(short = 's', long = "style", value_name = "FILE", required = true)]
    pub style: Vec<PathBuf>,

    /// Output image; the format follows the extension: .png, .jpg/.jpeg or .webp.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: PathBuf,

    /// Longest side of the output in pixels. An input whose longest side is already N is used
    /// without resampling.
    #[arg(long, value_name = "N", default_value_t = defaults::SIZE, value_parser = clap::value_parser!(u32).range(1..))]
    pub size: u32,

    /// Longest side of the style image(s) at the final scale [default: same as --size].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub style_size: Option<u32>,

    /// Iterations at each scale (the final scale included).
    #[arg(long, value_name = "N", default_value_t = defaults::ITERS, value_parser = clap::value_parser!(u32).range(1..))]
    pub iters: u32,

    /// Optimizer.
    #[arg(long, value_enum, default_value_t = OptimizerKind::Lbfgs)]
    pub optimizer: OptimizerKind,

    /// Learning rate: L-BFGS step multiplier [default: 1], Adam step in 0..255 pixel units
    /// [default: 4].
    #[arg(long, value_parser = number, value_name = "X")]
    pub lr: Option<f32>,

    /// Content weight α.
    #[arg(long, value_parser = number, value_name = "X", default_value_t = defaults::CONTENT_WEIGHT)]
    pub content_weight: f32,

    /// Style weight β: larger means more painterly.
    #[arg(long, value_parser = number, value_name = "X", default_value_t = defaults::STYLE_WEIGHT)]
    pub style_weight: f32,

    /// Weights w_l of the style layers, comma-separated, one per style layer
    /// [default: 0.1,0.2,0.4,0.2,0.1 for the default layers, else all 1].
    #[arg(
        long,
        value_parser = number,
        value_name = "a,b,c,d,e",
        value_delimiter = ','
    )]
    pub style_layer_weights: Option<Vec<f32>>,

    /// Content layers, comma-separated VGG-19 layer names.
    #[arg(long, value_name = "L,..", value_delimiter = ',', default_value = defaults::CONTENT_LAYERS)]
    pub content_layers: Vec<String>,

    /// Style layers, comma-separated VGG-19 layer names.
    #[arg(long, value_name = "L,..", value_delimiter = ',', default_value = defaults::STYLE_LAYERS)]
    pub style_layers: Vec<String>,

    /// Total-variation weight γ (smooths high-frequency noise).
    #[arg(long, value_parser = number, value_name = "X", default_value_t = defaults::TV_WEIGHT)]
    pub tv_weight: f32,

    /// Initial image: content, noise, or an image file.
    #[arg(long, value_name = "content|noise|FILE", default_value = "content")]
    pub init: String,

    /// Random seed for --init noise.
    #[arg(long, value_name = "N", default_value_t = 0, value_parser = seed)]
    pub seed: u64,

    /// Compute device: auto uses CUDA when present and its memory holds the size, else the CPU.
    #[arg(long, value_enum, default_value_t = DeviceChoice::Auto)]
    pub device: DeviceChoice,

    /// GPU convolutions: tf32 (tensor cores, PyTorch's default) or fp32. The CPU always
    /// computes in fp32.
    #[arg(long, value_enum, default_value_t = PrecisionChoice::Tf32)]
    pub precision: PrecisionChoice,

    /// Pooling in VGG-19.
    #[arg(long, value_name = "max|avg", default_value = "max")]
    pub pooling: String,

    /// Number of scales, coarse to fine in steps of √2 (1 = a single scale)
    /// [default: from 128 px up to --size].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub scales: Option<u32>,

    /// Blend weights of the style images, comma-separated, one per --style [default: equal].
    #[arg(
        long,
        value_parser = number,
        value_name = "w1,w2,..",
        value_delimiter = ','
    )]
    pub style_blend: Option<Vec<f32>>,

    /// Keep the content's colours: luminance-only transfer, or match the style's colours to the
    /// content's first.
    #[arg(long, value_enum, default_value_t = ColorMode::None)]
    pub preserve_colors: ColorMode,

    /// Also write the image every N iterations, beside the output (out.png → out_s3_0050.png at
    /// scale 3, iteration 50).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub save_every: Option<u32>,

    /// Write a JSON report (loss trace, timing, settings) to FILE.
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,

    /// VGG-19 weights in safetensors [default: the original Caffe weights built into nst].
    #[arg(long, value_name = "FILE")]
    pub weights: Option<PathBuf>,

    /// Print nothing but errors.
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// The options whose values are real numbers or lists of them.
const NUMBER_OPTIONS: [&str; 6] = [
    "--lr",
    "--content-weight",
    "--style-weight",
    "--tv-weight",
    "--style-layer-weights",
    "--style-blend",
];

/// The command line with each negative value of an option that takes numbers (`--lr`, the
/// weights, `--style-blend`) joined to it (`--style-weight -1e-3` → `--style-weight=-1e-3`),
/// for clap to parse: it takes `-1e-3` and `-.5` for options, and would say "unexpected
/// argument '-1'" of a value the user typed; its way around that, letting these options take
/// any value that starts with a hyphen, would make `--style-weight --size 64` take `--size`
/// for the weight. The checks of [`Args::into_config`] then refuse the negative value by name.
pub fn join_negative_values(args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let negative_numbers =
        |v: &str| v.starts_with('-') && v.split(',').all(|n| n.trim().parse::<f64>().is_ok());
    let mut joined = Vec::new();
    let mut args = args.into_iter().peekable();
    while let Some(arg) = args.next() {
        let option = arg.to_str().filter(|a| NUMBER_OPTIONS.contains(a));
        match (option, args.peek().and_then(|v| v.to_str())) {
            (Some(option), Some(value)) if negative_numbers(value) => {
                joined.push(format!("{option}={value}").into());
                args.next();
            }
            _ => joined.push(arg),
        }
    }
    joined
}

/// A number as f32, refusing one too large for it: Rust reads `1e40` as infinity, and the
/// finite check that follows would then say "got inf" of a number nobody typed.
fn number(s: &str) -> std::result::Result<f32, String> {
    let v: f32 = s
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a number"))?;
    if v.is_infinite() && !s.to_ascii_lowercase().contains("inf") {
        return Err(format!(
            "{s} is too large (f32 holds up to {:.1e})",
            f32::MAX
        ));
    }
    Ok(v)
}

/// A seed: a whole number from 0 to 2⁶⁴ − 1 (clap's own message for `-1` is "invalid digit
/// found in string").
fn seed(s: &str) -> std::result::Result<u64, String> {
    s.trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a whole number from 0 to {}", u64::MAX))
}

fn finite_non_negative(name: &str, v: f32) -> Result<f32> {
    ensure!(
        v.is_finite() && v >= 0.0,
        "{name} must be a finite number ≥ 0 (got {v})"
    );
    Ok(v)
}

fn parse_layers(flag: &str, names: &[String]) -> Result<Vec<Layer>> {
    ensure!(
        !names.is_empty() && names.iter().all(|n| !n.trim().is_empty()),
        "{flag} needs at least one layer name"
    );
    let layers: Vec<Layer> = names
        .iter()
        .map(|n| {
            n.parse::<Layer>()
                .map_err(|e| anyhow::anyhow!("{flag}: {e}"))
        })
        .collect::<Result<_>>()?;
    // A layer twice would count twice: more likely a slip than a way to weigh it.
    if let Some(twice) = layers
        .iter()
        .enumerate()
        .find_map(|(i, l)| layers[..i].contains(l).then_some(l))
    {
        bail!("{flag}: {twice} is listed twice");
    }
    Ok(layers)
}

/// Longest sides of the scales, coarse to fine, ending at `size`; √2 apart.
pub fn scale_sides(size: u32, scales: Option<u32>) -> Vec<u32> {
    let n = scales.unwrap_or_else(|| {
        let steps = (2.0 * (size as f64 / defaults::COARSEST_SIDE as f64).log2()).floor();
        1 + steps.max(0.0) as u32
    });
    let mut sides: Vec<u32> = (0..n)
        .map(|i| (size as f64 / 2f64.sqrt().powi((n - 1 - i) as i32)).round() as u32)
        .collect();
    sides.dedup();
    sides
}

impl Args {
    /// The files the run writes can be written, and none is an input or another of them
    /// (see [`crate::paths`]).
    fn check_paths(&self) -> Result<()> {
        paths::check_writable("-o", &self.output)?;
        let mut outputs = vec![("-o", self.output.as_path())];
        if let Some(report) = &self.report {
            paths::check_writable("--report", report)?;
            outputs.push(("--report", report));
        }
        let mut inputs = vec![("content image", self.content.as_path())];
        inputs.extend(self.style.iter().map(|s| ("style image", s.as_path())));
        if !matches!(self.init.as_str(), "content" | "noise") {
            inputs.push(("--init image", Path::new(&self.init)));
        }
        if let Some(weights) = &self.weights {
            inputs.push(("--weights file", weights));
        }
        let snapshots = self.save_every.map(|every| paths::Snapshots {
            every,
            iters: self.iters,
            scales: scale_sides(self.size, self.scales).len(),
        });
        paths::check_no_overwrite(&outputs, snapshots, &inputs)
    }

    /// Checks every argument and resolves defaults into a [`Config`]; errors are one line and
    /// name the flag. Also reads `NST_CONV` (`fastest`, the default, or `im2col`/`direct`: the
    /// reference convolution, for comparisons); an unknown value is an error, not ignored.
    pub fn into_config(self) -> Result<Config> {
        OutputFormat::from_path(&self.output)?;
        self.check_paths()?;
        ensure!(
            self.size <= MAX_SIZE,
            "--size {} is too large (at most {MAX_SIZE})",
            self.size
        );
        if let Some(s) = self.style_size {
            ensure!(
                s <= MAX_SIZE,
                "--style-size {s} is too large (at most {MAX_SIZE})"
            );
        }
        let content_weight = finite_non_negative("--content-weight", self.content_weight)?;
        let style_weight = finite_non_negative("--style-weight", self.style_weight)?;
        let tv_weight = finite_non_negative("--tv-weight", self.tv_weight)?;
        ensure!(
            content_weight + style_weight + tv_weight > 0.0,
            "all loss weights are zero: nothing to optimise"
        );
        let lr = match self.lr {
            Some(lr) => {
                ensure!(
                    lr.is_finite() && lr > 0.0,
                    "--lr must be a finite number > 0 (got {lr})"
                );
                lr
            }
            None if self.optimizer == OptimizerKind::Adam => defaults::ADAM_LR,
            None => 1.0,
        };
        let content_layers = parse_layers("--content-layers", &self.content_layers)?;
        let style_layers = parse_layers("--style-layers", &self.style_layers)?;
        let style_layer_weights = match self.style_layer_weights {
            Some(w) => {
                ensure!(
                    w.len() == style_layers.len(),
                    "--style-layer-weights has {} values but there are {} style layers",
                    w.len(),
                    style_layers.len()
                );
                w.iter()
                    .map(|&v| finite_non_negative("--style-layer-weights", v))
                    .collect::<Result<_>>()?
            }
            None if self.style_layers.join(",") == defaults::STYLE_LAYERS => {
                defaults::STYLE_LAYER_WEIGHTS.to_vec()
            }
            None => vec![1.0; style_layers.len()],
        };
        let style_blend = match self.style_blend {
            Some(b) => {
                ensure!(
                    b.len() == self.style.len(),
                    "--style-blend has {} weights but {} --style {} given",
                    b.len(),
                    self.style.len(),
                    if self.style.len() == 1 {
                        "image was"
                    } else {
                        "images were"
                    }
                );
                let b: Vec<f32> = b
                    .iter()
                    .map(|&v| finite_non_negative("--style-blend", v))
                    .collect::<Result<_>>()?;
                let sum: f32 = b.iter().sum();
                ensure!(sum > 0.0, "--style-blend weights must not all be zero");
                b.iter().map(|v| v / sum).collect()
            }
            None => vec![1.0 / self.style.len() as f32; self.style.len()],
        };
        let init = match self.init.as_str() {
            "content" => Init::Content,
            "noise" => Init::Noise,
            path => Init::File(PathBuf::from(path)),
        };
        let pooling: Pooling = self
            .pooling
            .parse()
            .map_err(|e: String| anyhow::anyhow!("--pooling: {e}"))?;
        if self.optimizer == OptimizerKind::Lbfgs && lr > 10.0 {
            bail!("--lr {lr} is too large for L-BFGS, whose step is already scaled (use 0.1–2)");
        }
        Ok(Config {
            content: self.content,
            styles: self.style,
            style_blend,
            output: self.output,
            size: self.size,
            style_size: self.style_size,
            iters: self.iters,
            scale_sides: scale_sides(self.size, self.scales),
            optimizer: self.optimizer,
            lr,
            content_weight,
            style_weight,
            tv_weight,
            content_layers,
            style_layers,
            style_layer_weights,
            init,
            seed: self.seed,
            device: self.device,
            precision: self.precision,
            pooling,
            preserve_colors: self.preserve_colors,
            save_every: self.save_every,
            report: self.report,
            weights: self.weights,
            conv_algorithm: ConvAlgorithm::from_env_value(
                std::env::var(ConvAlgorithm::ENV_VAR).ok().as_deref(),
            )
            .map_err(anyhow::Error::msg)?,
            search_every_scale: std::env::var("NST_SEARCH_EVERY_SCALE").is_ok_and(|v| v == "1"),
            layout: Layout::from_env_value(std::env::var(Layout::ENV_VAR).ok().as_deref())
                .map_err(anyhow::Error::msg)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_values_are_joined_to_their_options() {
        let joined = |args: &[&str]| -> Vec<String> {
            let args = args.iter().map(OsString::from);
            let joined = join_negative_values(args);
            joined
                .iter()
                .map(|a| a.to_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            joined(&[
                "nst",
                "--style-weight",
                "-1e-3",
                "--tv-weight",
                "-.5",
                "--size",
                "64"
            ]),
            [
                "nst",
                "--style-weight=-1e-3",
                "--tv-weight=-.5",
                "--size",
                "64"
            ]
        );
        assert_eq!(
            joined(&["--style-layer-weights", "-1,2,3", "--lr", "-inf"]),
            ["--style-layer-weights=-1,2,3", "--lr=-inf"]
        );
        // Not values: another option, a name; and options that take no number.
        for args in [
            &["--style-weight", "--size", "64"][..],
            &["--lr", "-q"],
            &["--seed", "-1"],
            &["-o", "-1.png"],
        ] {
            assert_eq!(joined(args), args);
        }
    }

    #[test]
    fn the_defaults_are_the_loss_crates() {
        assert_eq!(
            defaults::CONTENT_LAYERS,
            nst_loss::defaults::CONTENT_LAYERS.join(",")
        );
        assert_eq!(
            defaults::STYLE_LAYERS,
            nst_loss::defaults::STYLE_LAYERS.join(",")
        );
        let args = ["nst", "-c", "c.png", "-s", "s.png", "-o", "o.png"];
        let cfg = Args::try_parse_from(args).unwrap().into_config().unwrap();
        let spec = nst_loss::LossSpec::default();
        assert_eq!(cfg.content_layers, spec.content_layers);
        assert_eq!(cfg.style_layers, spec.style_layers);
        assert_eq!(cfg.style_layer_weights, spec.weights.style_layers);
        let weights = (cfg.content_weight, cfg.style_weight, cfg.tv_weight);
        assert_eq!(
            weights,
            (spec.weights.content, spec.weights.style, spec.weights.tv)
        );
    }

    #[test]
    fn scales_step_by_root_two_from_128() {
        assert_eq!(scale_sides(512, None), vec![128, 181, 256, 362, 512]);
        assert_eq!(scale_sides(64, None), vec![64]);
        assert_eq!(scale_sides(300, Some(1)), vec![300]);
        assert_eq!(scale_sides(256, Some(3)), vec![128, 181, 256]);
    }
}
