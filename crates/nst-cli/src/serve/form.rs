//! A submitted job: the `multipart/form-data` body of `POST /jobs` checked and turned into
//! the same [`Config`] the command line makes.
//!
//! The text fields are named like the CLI's long options (`size`, `style_weight` or
//! `style-weight`, …) and are validated by the CLI's own parser: they become `--name value`
//! arguments for [`Args`], so every default, range and message is the command line's. Only
//! the options in [`OPTIONS`] are accepted: nothing that names a file on the server
//! (`--weights`, `--report`, `--init FILE`, `--output`) can be given.

use crate::args::Args;
use crate::config::Config;
use anyhow::{anyhow, bail, ensure, Result};
use clap::Parser;
use std::path::Path;

/// The options a job may set, as the CLI spells them.
pub const OPTIONS: &[&str] = &[
    "size",
    "style-size",
    "iters",
    "scales",
    "optimizer",
    "lr",
    "content-weight",
    "style-weight",
    "tv-weight",
    "style-layer-weights",
    "content-layers",
    "style-layers",
    "init",
    "seed",
    "device",
    "precision",
    "pooling",
    "style-blend",
    "preserve-colors",
];

/// At most this many style images per job.
pub const MAX_STYLES: usize = 8;
/// Longest text field value accepted.
const MAX_TEXT_FIELD: usize = 1000;
/// Longest upload name kept (it is only shown).
const MAX_NAME: usize = 120;

/// One uploaded image.
pub struct Upload {
    /// The name the browser gave it, cleaned for display.
    pub name: String,
    /// The file's bytes (as received: not copied).
    pub bytes: axum::body::Bytes,
}

impl Upload {
    /// The upload cleaned for display: control characters dropped, length capped, and the
    /// directory part (some browsers send one) removed.
    pub fn new(name: Option<&str>, bytes: impl Into<axum::body::Bytes>) -> Self {
        let base = name.unwrap_or("").rsplit(['/', '\\']).next().unwrap_or("");
        let name: String = base
            .chars()
            .filter(|c| !c.is_control())
            .take(MAX_NAME)
            .collect();
        Self {
            name,
            bytes: bytes.into(),
        }
    }

    /// The file extension nst stores this image under, from its content (not its name).
    pub fn extension(&self) -> Option<&'static str> {
        match image::guess_format(&self.bytes).ok()? {
            image::ImageFormat::Png => Some("png"),
            image::ImageFormat::Jpeg => Some("jpg"),
            image::ImageFormat::WebP => Some("webp"),
            _ => None,
        }
    }
}

/// A job as submitted, before it is checked against the images.
#[derive(Default)]
pub struct Form {
    /// The content photo.
    pub content: Option<Upload>,
    /// The style images, in order.
    pub styles: Vec<Upload>,
    /// The options given (CLI spelling, non-empty values), in order.
    pub options: Vec<(String, String)>,
}

impl Form {
    /// Adds a text field; an unknown name, a repeated one or an overlong value is an error.
    pub fn add_option(&mut self, field: &str, value: &str) -> Result<()> {
        let name = field.replace('_', "-");
        ensure!(
            OPTIONS.contains(&name.as_str()),
            "unknown field '{}' (options: {})",
            printable(field),
            OPTIONS.join(", ")
        );
        ensure!(
            value.len() <= MAX_TEXT_FIELD,
            "field '{name}' is longer than {MAX_TEXT_FIELD} bytes"
        );
        ensure!(
            !self.options.iter().any(|(n, _)| *n == name),
            "field '{name}' is given twice"
        );
        if name == "init" {
            // A file name here would read the server's files.
            ensure!(
                matches!(value, "" | "content" | "noise"),
                "field 'init' must be content or noise"
            );
        }
        let value = value.trim();
        if !value.is_empty() {
            self.options.push((name, value.to_string()));
        }
        Ok(())
    }

    /// Adds an uploaded file field (`content` once, `style` up to [`MAX_STYLES`] times).
    pub fn add_file(&mut self, field: &str, upload: Upload) -> Result<()> {
        match field {
            "content" => {
                ensure!(self.content.is_none(), "only one content image is allowed");
                self.content = Some(upload);
            }
            "style" => {
                ensure!(
                    self.styles.len() < MAX_STYLES,
                    "at most {MAX_STYLES} style images are allowed"
                );
                self.styles.push(upload);
            }
            other => bail!(
                "unknown file field '{}' (expected content or style)",
                printable(other)
            ),
        }
        Ok(())
    }

    /// Checks that each image decodes (the CLI's limits: size, pixel count, decompression
    /// bombs) and that the options parse, before anything is written.
    pub fn validate(&self) -> Result<()> {
        let content = self
            .content
            .as_ref()
            .ok_or_else(|| anyhow!("no content image: add a photo"))?;
        ensure!(!self.styles.is_empty(), "no style image: add a painting");
        check_image(content, "content image")?;
        for style in &self.styles {
            check_image(style, "style image")?;
        }
        self.config(Path::new("."))?;
        Ok(())
    }

    /// The stored names of the uploads: `content.<ext>`, `style-<n>.<ext>`.
    pub fn file_names(&self) -> (String, Vec<String>) {
        let ext = |u: &Upload| u.extension().unwrap_or("png");
        let content = format!("content.{}", self.content.as_ref().map_or("png", ext));
        let styles = (self.styles.iter().enumerate())
            .map(|(i, s)| format!("style-{}.{}", i + 1, ext(s)))
            .collect();
        (content, styles)
    }

    /// The run's configuration with the uploads stored in `dir` (see [`Form::file_names`]) and
    /// the result written to `dir/result.png`.
    pub fn config(&self, dir: &Path) -> Result<Config> {
        let (content, styles) = self.file_names();
        let argv = self.command_line(
            &dir.join(content),
            &styles.iter().map(|s| dir.join(s)).collect::<Vec<_>>(),
            &dir.join(super::gallery::RESULT_FILE),
        );
        let args = Args::try_parse_from(argv).map_err(|e| anyhow!("{}", clap_message(&e)))?;
        args.into_config()
    }

    /// The `nst` command line that makes the same picture from the given files.
    pub fn command_line(
        &self,
        content: &Path,
        styles: &[std::path::PathBuf],
        output: &Path,
    ) -> Vec<String> {
        let mut argv = vec![
            "nst".to_string(),
            "-c".into(),
            content.display().to_string(),
        ];
        for s in styles {
            argv.extend(["-s".to_string(), s.display().to_string()]);
        }
        argv.extend(["-o".to_string(), output.display().to_string()]);
        for (name, value) in &self.options {
            argv.push(format!("--{name}={value}"));
        }
        argv
    }
}

fn check_image(upload: &Upload, role: &str) -> Result<()> {
    let name = if upload.name.is_empty() {
        role.to_string()
    } else {
        format!("{role} '{}'", upload.name)
    };
    nst_image::decode_rgb(&upload.bytes, &name)?;
    Ok(())
}

/// clap's message without its "error: " prefix and usage hints, as one line.
fn clap_message(e: &clap::Error) -> String {
    let text = e.to_string();
    let message: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    message.join(" ").trim_start_matches("error: ").to_string()
}

/// A field name as it may be shown: printable ASCII, at most 40 characters.
fn printable(s: &str) -> String {
    s.chars()
        .take(40)
        .map(|c| if c.is_ascii_graphic() { c } else { '?' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A form with one (unchecked) style image.
    fn form() -> Form {
        Form {
            styles: vec![Upload::new(Some("s.jpg"), Vec::new())],
            ..Form::default()
        }
    }

    #[test]
    fn options_use_the_cli_parser_and_defaults() {
        let mut form = form();
        form.add_option("style_weight", "0.001").unwrap();
        form.add_option("size", "96").unwrap();
        form.add_option("preserve-colors", "luminance").unwrap();
        form.add_option("iters", "").unwrap(); // empty: the default
        let dir = std::env::temp_dir();
        let cfg = form.config(&dir).unwrap();
        assert_eq!(cfg.size, 96);
        assert_eq!(cfg.style_weight, 0.001);
        assert_eq!(cfg.iters, crate::args::defaults::ITERS);
        assert_eq!(cfg.content, dir.join("content.png"));
        assert_eq!(cfg.styles, vec![dir.join("style-1.png")]);
        assert_eq!(cfg.output, dir.join("result.png"));
    }

    #[test]
    fn server_files_cannot_be_named() {
        let mut form = Form::default();
        for field in ["weights", "report", "output", "o", "save_every", "content"] {
            let e = form.add_option(field, "/etc/passwd").unwrap_err();
            assert!(e.to_string().contains("unknown field"), "{e}");
        }
        let e = form.add_option("init", "/etc/passwd").unwrap_err();
        assert!(e.to_string().contains("content or noise"), "{e}");
        form.add_option("size", "64").unwrap();
        assert!(form.add_option("size", "64").is_err(), "repeated");
    }

    #[test]
    fn bad_values_are_one_line_errors_naming_the_option() {
        for (field, value, needle) in [
            ("size", "abc", "--size"),
            ("size", "0", "--size"),
            ("style_weight", "nan", "--style-weight"),
            ("optimizer", "sgd", "--optimizer"),
            ("style_layers", "relu9_9", "--style-layers"),
        ] {
            let mut form = form();
            form.add_option(field, value).unwrap();
            let e = form.config(Path::new(".")).unwrap_err().to_string();
            assert!(e.contains(needle), "{field}={value}: {e}");
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        let e = Form::default()
            .config(Path::new("."))
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "the following required arguments were not provided: --style <FILE>"
        );
    }

    #[test]
    fn upload_names_are_cleaned() {
        let u = Upload::new(Some("C:\\photos\\cat\u{1b}[31m.jpg"), Vec::new());
        assert_eq!(u.name, "cat[31m.jpg");
        assert_eq!(Upload::new(Some("../../a.png"), Vec::new()).name, "a.png");
    }
}
