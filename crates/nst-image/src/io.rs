//! Reading, resampling and writing images.
//!
//! Images travel through the pipeline as planar f32 RGB in 0..255 ("planes": `[C, H, W]`
//! row-major, the layout of a `[1, C, H, W]` tensor).

use crate::ImageError;
use image::{ImageFormat, ImageReader, Limits, RgbImage};
use nst_tensor::{Device, Tensor, TensorError};
use std::fs::File;
use std::io::{BufWriter, Cursor};
use std::path::{Path, PathBuf};

/// Largest width or height accepted from an input file.
pub const MAX_INPUT_SIDE: u32 = 20_000;
/// Largest decoded allocation accepted (guards against decompression bombs).
pub const MAX_INPUT_BYTES: u64 = 1 << 30;
/// Most pixels accepted from an input file (100 MP, e.g. 12,288 × 8,192; larger photos can be
/// downscaled first). Checked from the header before decoding: preparing an image costs about
/// 30 bytes per input pixel (8-bit RGB, f32 planes, resampling), 3 GB at this limit.
pub const MAX_INPUT_PIXELS: u64 = 100_000_000;
/// A baseline or progressive (Huffman-coded) JPEG spends at least one bit on the DC term of
/// every 8×8 block of its first component, so it holds at most 512 pixels per byte. A
/// header promising more is a bomb: the decoder would fill in the missing data (a 717-byte
/// file claiming 10752 × 18761 pixels took 21 s and 5.5 GB, found by fuzzing).
const MAX_JPEG_PIXELS_PER_BYTE: u64 = 512;

/// An image as planar f32.
#[derive(Clone, Debug, PartialEq)]
pub struct Planes {
    /// Channels (1 or 3).
    pub channels: usize,
    /// Height.
    pub height: usize,
    /// Width.
    pub width: usize,
    /// `[C, H, W]` values, nominally 0..255.
    pub data: Vec<f32>,
}

impl Planes {
    /// The `[1, C, H, W]` tensor of these planes on `device`.
    pub fn to_tensor(&self, device: &Device) -> Result<Tensor, TensorError> {
        let shape = [1, self.channels, self.height, self.width];
        Tensor::from_vec(self.data.clone(), &shape, device)
    }

    /// The planes of a `[1, C, H, W]` tensor (copied to the host).
    pub fn from_tensor(t: &Tensor) -> Result<Self, TensorError> {
        let [1, channels, height, width] = *t.dims() else {
            return Err(TensorError::Invalid {
                op: "Planes::from_tensor",
                reason: format!("expects a [1, C, H, W] tensor, got {:?}", t.dims()),
            });
        };
        Ok(Planes {
            channels,
            height,
            width,
            data: t.to_vec()?,
        })
    }

    /// From an 8-bit RGB image.
    pub fn from_rgb(img: &RgbImage) -> Self {
        let (w, h) = (img.width() as usize, img.height() as usize);
        let mut data = vec![0.0; 3 * w * h];
        for (i, p) in img.pixels().enumerate() {
            for c in 0..3 {
                data[c * w * h + i] = p.0[c] as f32;
            }
        }
        Self {
            channels: 3,
            height: h,
            width: w,
            data,
        }
    }

    /// To an 8-bit RGB image (values clamped and rounded; one channel is shown as gray).
    pub fn to_rgb(&self) -> RgbImage {
        let (w, h, plane) = (self.width, self.height, self.width * self.height);
        let px = |c: usize, i: usize| {
            self.data[c.min(self.channels - 1) * plane + i]
                .clamp(0.0, 255.0)
                .round() as u8
        };
        RgbImage::from_fn(w as u32, h as u32, |x, y| {
            let i = y as usize * w + x as usize;
            image::Rgb([px(0, i), px(1, i), px(2, i)])
        })
    }

    /// One channel plane.
    pub fn plane(&self, c: usize) -> &[f32] {
        &self.data[c * self.width * self.height..(c + 1) * self.width * self.height]
    }

    /// Resampled to `width × height` with a separable Lanczos-3 filter (widened when
    /// shrinking, so it also antialiases). Values are neither rounded nor clamped: the
    /// optimised image may leave 0..255 between scales. A copy when the size is unchanged.
    pub fn resized(&self, width: usize, height: usize) -> Self {
        if (width, height) == (self.width, self.height) {
            return self.clone();
        }
        let (horizontal, vertical) = (Taps::new(self.width, width), Taps::new(self.height, height));
        let mut data = Vec::with_capacity(self.channels * width * height);
        for c in 0..self.channels {
            let src = self.plane(c);
            let mut rows = vec![0.0f32; self.height * width];
            for y in 0..self.height {
                horizontal.apply(
                    &src[y * self.width..(y + 1) * self.width],
                    1,
                    &mut rows[y * width..(y + 1) * width],
                    1,
                );
            }
            let mut out = vec![0.0f32; height * width];
            for x in 0..width {
                vertical.apply(&rows[x..], width, &mut out[x..], width);
            }
            data.extend_from_slice(&out);
        }
        Self {
            channels: self.channels,
            height,
            width,
            data,
        }
    }
}

/// Lanczos-3 weights for resampling a line of `n_in` samples to `n_out`.
struct Taps {
    /// For each output sample: first input index and the normalised weights from there.
    taps: Vec<(usize, Vec<f32>)>,
}

impl Taps {
    fn new(n_in: usize, n_out: usize) -> Self {
        let lanczos3 = |x: f64| {
            if x.abs() < 1e-9 {
                1.0
            } else if x.abs() >= 3.0 {
                0.0
            } else {
                let px = std::f64::consts::PI * x;
                3.0 * px.sin() * (px / 3.0).sin() / (px * px)
            }
        };
        let scale = n_in as f64 / n_out as f64;
        let widen = scale.max(1.0);
        let taps = (0..n_out)
            .map(|o| {
                let center = (o as f64 + 0.5) * scale;
                let lo = ((center - 3.0 * widen).floor().max(0.0)) as usize;
                let hi = ((center + 3.0 * widen).ceil() as usize).min(n_in);
                let w: Vec<f64> = (lo..hi)
                    .map(|i| lanczos3((i as f64 + 0.5 - center) / widen))
                    .collect();
                let sum: f64 = w.iter().sum();
                (lo, w.iter().map(|v| (v / sum) as f32).collect())
            })
            .collect();
        Self { taps }
    }

    /// `dst[o·dst_stride] = Σ w·src[(lo + i)·src_stride]`.
    fn apply(&self, src: &[f32], src_stride: usize, dst: &mut [f32], dst_stride: usize) {
        for (o, (lo, w)) in self.taps.iter().enumerate() {
            dst[o * dst_stride] = w
                .iter()
                .enumerate()
                .map(|(i, &w)| w * src[(lo + i) * src_stride])
                .sum();
        }
    }
}

/// `(width, height)` with the longest side equal to `side`, keeping the aspect ratio.
pub fn fit_longest_side(width: usize, height: usize, side: u32) -> (usize, usize) {
    let side = side as f64;
    let scale = side / width.max(height) as f64;
    let w = ((width as f64 * scale).round() as usize).max(1);
    let h = ((height as f64 * scale).round() as usize).max(1);
    (w, h)
}

/// Reads an image file as 8-bit RGB (gray and alpha are converted), with size limits.
/// `what` names the role ("content image") in error messages.
pub fn load_rgb(path: &Path, what: &str) -> Result<RgbImage, ImageError> {
    let name = format!("{what} {}", path.display());
    match std::fs::read(path) {
        Ok(bytes) => decode_rgb(&bytes, &name),
        Err(cause) => Err(ImageError::Read { name, cause }),
    }
}

/// Decodes an image held in memory (PNG, JPEG or WebP; gray, alpha and 16-bit are converted
/// to 8-bit RGB) with the same limits as [`load_rgb`]: sides of at most [`MAX_INPUT_SIDE`],
/// at most [`MAX_INPUT_BYTES`] decoded, no truncated JPEG. `name` ("content image a.jpg")
/// starts the one-line error messages.
pub fn decode_rgb(bytes: &[u8], name: &str) -> Result<RgbImage, ImageError> {
    let name = || name.to_string();
    if bytes.is_empty() {
        return Err(ImageError::Empty { name: name() });
    }
    // Guessing reads the bytes in memory: it cannot fail.
    let new_reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .expect("reading from memory")
    };
    let mut reader = new_reader();
    let Some(format) = reader.format() else {
        return Err(ImageError::UnknownFormat { name: name() });
    };
    // zune-jpeg fills in a truncated JPEG silently; a complete one ends with the EOI marker.
    if format == ImageFormat::Jpeg && !jpeg_has_end_marker(bytes) {
        return Err(ImageError::TruncatedJpeg { name: name() });
    }
    // Sizes from the header, before anything is decoded.
    if let Ok((width, height)) = new_reader().into_dimensions() {
        let pixels = width as u64 * height as u64;
        if pixels > MAX_INPUT_PIXELS {
            return Err(ImageError::TooManyPixels {
                name: name(),
                width,
                height,
            });
        }
        if format == ImageFormat::Jpeg && pixels > MAX_JPEG_PIXELS_PER_BYTE * bytes.len() as u64 {
            return Err(ImageError::ImplausibleJpeg {
                name: name(),
                width,
                height,
                bytes: bytes.len(),
            });
        }
    }
    let mut limits = Limits::default();
    limits.max_image_width = Some(MAX_INPUT_SIDE);
    limits.max_image_height = Some(MAX_INPUT_SIDE);
    limits.max_alloc = Some(MAX_INPUT_BYTES);
    reader.limits(limits);
    let img = reader.decode().map_err(|e| ImageError::Decode {
        name: name(),
        reason: one_line(&e.to_string()),
    })?;
    Ok(img.to_rgb8())
}

fn jpeg_has_end_marker(bytes: &[u8]) -> bool {
    let trimmed = bytes
        .iter()
        .rposition(|&b| b != 0)
        .map_or(&bytes[..0], |i| &bytes[..=i]);
    trimmed.ends_with(&[0xFF, 0xD9])
}

/// A message made safe to print on one line (a decoder's, an HTTP error's): whitespace runs
/// become one space and other control characters (a file's own bytes can reach the message)
/// are escaped.
pub fn one_line(s: &str) -> String {
    let mut out = String::new();
    for c in s.split_whitespace().collect::<Vec<_>>().join(" ").chars() {
        match c {
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

/// Output encodings, chosen by the file extension.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// Lossless PNG.
    Png,
    /// JPEG, quality 95.
    Jpeg,
    /// Lossless WebP.
    WebP,
}

impl OutputFormat {
    /// The format for `path`'s extension, or an error naming the supported ones.
    pub fn from_path(path: &Path) -> Result<Self, ImageError> {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase());
        match ext.as_deref() {
            Some("png") => Ok(Self::Png),
            Some("jpg" | "jpeg") => Ok(Self::Jpeg),
            Some("webp") => Ok(Self::WebP),
            _ => Err(ImageError::UnsupportedOutput {
                path: path.to_path_buf(),
                extension: ext,
            }),
        }
    }
}

/// Writes `img` to `path` atomically, in the format its extension names (see [`write_atomic`]).
pub fn save_atomic(img: &RgbImage, path: &Path) -> Result<(), ImageError> {
    let format = OutputFormat::from_path(path)?;
    write_atomic(path, |w| {
        match format {
            OutputFormat::Png => img.write_to(w, ImageFormat::Png),
            OutputFormat::Jpeg => {
                image::codecs::jpeg::JpegEncoder::new_with_quality(w, 95).encode_image(img)
            }
            OutputFormat::WebP => img.write_to(w, ImageFormat::WebP),
        }
        .map_err(|e| match e {
            image::ImageError::IoError(e) => e,
            e => std::io::Error::other(one_line(&e.to_string())),
        })
    })
}

/// Writes a file atomically: `write` fills a temporary file in the same folder, which is
/// synced and then renamed over `path`, so a reader never sees a partial file and a failure
/// leaves none behind. A link is written through: the file it names is replaced, the link
/// kept. What is not a regular file — a device such as `/dev/null`, a terminal, a pipe — is
/// written in place, as a shell's `>` would: a rename would put a regular file in its place
/// (for root, in place of `/dev/null` itself). Any failure, `write`'s own included, is
/// [`ImageError::Write`] naming the file.
pub fn write_atomic(
    path: &Path,
    write: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<(), ImageError> {
    let target = written_file(path);
    let path = target.as_path();
    let failed = |cause| ImageError::Write {
        path: path.to_path_buf(),
        cause,
    };
    // `write` through a buffer into `file`, flushed.
    let fill = |file: File| -> std::io::Result<File> {
        let mut w = BufWriter::new(file);
        write(&mut w)?;
        w.into_inner().map_err(|e| e.into_error())
    };
    if let Some(file) = special_file(path) {
        return file.and_then(fill).map(drop).map_err(failed);
    }
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let Some(name) = path.file_name() else {
        let no_name = std::io::Error::new(std::io::ErrorKind::InvalidInput, "no file name");
        return Err(failed(no_name));
    };
    let tmp: PathBuf = dir.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let result = File::create(&tmp)
        .and_then(fill)
        .and_then(|file| file.sync_all())
        .and_then(|()| std::fs::rename(&tmp, path));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(failed)
}

/// The file a write to `path` lands in: the file a link names (so the link is kept), else
/// `path` itself (also for a link that names nothing that can be resolved, such as
/// `/dev/stdout` on a pipe: it is then written through as a special file).
pub fn written_file(path: &Path) -> PathBuf {
    let is_link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
    match is_link.then(|| std::fs::canonicalize(path)) {
        Some(Ok(target)) => target,
        _ => path.to_path_buf(),
    }
}

/// `path` opened for writing in place when it exists and is neither a regular file nor a
/// folder (a device, a terminal, a pipe); `None` for anything else.
fn special_file(path: &Path) -> Option<std::io::Result<File>> {
    let meta = std::fs::metadata(path).ok()?;
    let special = !meta.is_file() && !meta.is_dir();
    special.then(|| std::fs::OpenOptions::new().write(true).open(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A link is written through and kept; a pipe (like `/dev/null`, `/dev/stdout`: not a
    /// regular file) is written in place, not replaced by a regular file.
    #[test]
    fn writes_go_through_links_and_into_special_files() {
        use std::os::unix::fs::FileTypeExt;
        let dir = std::env::temp_dir().join(format!("nst-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (real, link) = (dir.join("real.json"), dir.join("link.json"));
        std::fs::write(&real, "old").unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        write_atomic(&link, |w| std::io::Write::write_all(w, b"new")).unwrap();
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "new");

        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let fifo = fifo.clone();
            std::thread::spawn(move || tx.send(std::fs::read_to_string(fifo).unwrap()));
        }
        write_atomic(&fifo, |w| std::io::Write::write_all(w, b"through")).unwrap();
        // A pipe replaced by a file would leave the reader waiting: fail, don't hang.
        let read = rx.recv_timeout(std::time::Duration::from_secs(10));
        assert_eq!(read.as_deref(), Ok("through"));
        assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
        let stray: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(stray.len(), 3, "{stray:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn fit_keeps_aspect_and_exact_side() {
        assert_eq!(fit_longest_side(512, 341, 256), (256, 171));
        assert_eq!(fit_longest_side(300, 451, 64), (43, 64));
        assert_eq!(fit_longest_side(512, 512, 512), (512, 512));
    }

    #[test]
    fn planes_round_trip_and_resize_identity() {
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 80, 7]));
        let p = Planes::from_rgb(&img);
        assert_eq!(p.to_rgb(), img);
        assert_eq!(p.resized(5, 3), p);
        let up = p.resized(10, 6);
        assert_eq!((up.width, up.height, up.data.len()), (10, 6, 180));
        // Values outside 0..1 survive (the image crate's f32 resize clamps them), and a
        // constant image stays constant.
        let flat = Planes {
            channels: 1,
            height: 9,
            width: 13,
            data: vec![200.0; 117],
        };
        for (w, h) in [(5, 4), (26, 18), (13, 3)] {
            assert!(flat
                .resized(w, h)
                .data
                .iter()
                .all(|&v| (v - 200.0).abs() < 1e-3));
        }
        // A linear ramp stays close to linear in the interior when upsampled.
        let ramp = Planes {
            channels: 1,
            height: 1,
            width: 16,
            data: (0..16).map(|i| 10.0 * i as f32).collect(),
        };
        let up = ramp.resized(32, 1);
        for i in 8..24 {
            let want = 10.0 * ((i as f32 + 0.5) / 2.0 - 0.5);
            assert!(
                (up.data[i] - want).abs() < 0.5,
                "{i}: {} vs {want}",
                up.data[i]
            );
        }
    }

    /// Found by fuzzing: 717 bytes claiming 10752 × 18761 pixels took 21 s and 5.5 GB. Now
    /// refused from the header at once: by the pixel limit, and with the size in its frame
    /// header lowered to 8000 × 8000 (under the limit), by the JPEG bytes-per-pixel bound.
    #[test]
    fn tiny_jpeg_claiming_a_huge_image_is_refused() {
        let bomb =
            include_bytes!("../../../fuzz/regressions/image/jpeg_bomb_10752x18761_717_bytes.jpg");
        let err = decode_rgb(bomb, "a.jpg").unwrap_err().to_string();
        assert_eq!(
            err,
            "a.jpg is 10752×18761 (202 megapixels), more than the 100 nst accepts: downscale it first"
        );
        let mut smaller = bomb.to_vec();
        let sof = smaller.windows(2).position(|w| w == [0xFF, 0xC0]).unwrap();
        smaller[sof + 5..sof + 9].copy_from_slice(&[0x1F, 0x40, 0x1F, 0x40]); // 8000, 8000
        let err = decode_rgb(&smaller, "b.jpg").unwrap_err().to_string();
        assert_eq!(
            err,
            "b.jpg claims 8000×8000 pixels but has only 717 bytes: a corrupt or malicious JPEG"
        );
    }

    /// Each way an input or an output fails is its own variant, so a caller can tell a
    /// missing file from a bad one, and its message is the CLI's one line.
    #[test]
    fn failures_are_typed_and_name_the_file() {
        let dir = std::env::temp_dir().join(format!("nst-errors-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let missing = dir.join("missing.png");
        let err = load_rgb(&missing, "style image").unwrap_err();
        let ImageError::Read { cause, .. } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(cause.kind(), std::io::ErrorKind::NotFound);
        assert!(err
            .to_string()
            .starts_with(&format!("cannot read style image {}: ", missing.display())));

        assert!(matches!(
            decode_rgb(b"", "e"),
            Err(ImageError::Empty { .. })
        ));
        let err = decode_rgb(b"just some text", "t").unwrap_err();
        assert!(matches!(err, ImageError::UnknownFormat { .. }), "{err:?}");
        let mut png = Vec::new();
        RgbImage::new(4, 4)
            .write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        let mut jpeg = Vec::new();
        RgbImage::new(16, 16)
            .write_to(&mut Cursor::new(&mut jpeg), ImageFormat::Jpeg)
            .unwrap();
        let err = decode_rgb(&jpeg[..jpeg.len() - 2], "cut.jpg").unwrap_err();
        assert_eq!(
            err.to_string(),
            "cut.jpg is a truncated JPEG (no end-of-image marker)"
        );
        let err = decode_rgb(&png[..png.len() - 20], "cut.png").unwrap_err();
        let ImageError::Decode { name, reason } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(name, "cut.png");
        assert!(!reason.is_empty() && !reason.contains('\n'), "{reason}");
        assert_eq!(decode_rgb(&png, "ok").unwrap().dimensions(), (4, 4));

        let err = save_atomic(&RgbImage::new(2, 2), &dir.join("x.gif")).unwrap_err();
        assert!(
            matches!(&err, ImageError::UnsupportedOutput { extension: Some(e), .. } if e == "gif"),
            "{err:?}"
        );
        // Into a folder that does not exist: the output named, and nothing left behind.
        let nowhere = dir.join("no/such/folder/o.png");
        let err = save_atomic(&RgbImage::new(2, 2), &nowhere).unwrap_err();
        let ImageError::Write { path, cause } = &err else {
            panic!("{err:?}")
        };
        assert_eq!(
            (path, cause.kind()),
            (&nowhere, std::io::ErrorKind::NotFound)
        );
        // A failure of the caller's own writer is reported the same way, without a
        // temporary file left behind.
        let out = dir.join("r.json");
        let err = write_atomic(&out, |_| Err(std::io::Error::other("serialising failed")));
        assert_eq!(
            err.unwrap_err().to_string(),
            format!("cannot write {}: serialising failed", out.display())
        );
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "stray files");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn decoder_messages_are_one_printable_line() {
        assert_eq!(
            one_line("bad\n  header\x1b[31m ×"),
            "bad header\\u{1b}[31m ×"
        );
    }

    #[test]
    fn formats_by_extension() {
        assert_eq!(
            OutputFormat::from_path(Path::new("a/b.JPG")).unwrap(),
            OutputFormat::Jpeg
        );
        assert!(OutputFormat::from_path(Path::new("out.gif")).is_err());
        assert!(OutputFormat::from_path(Path::new("out")).is_err());
    }
}
