//! Why an image (or any file [`write_atomic`](crate::write_atomic) writes) could not be read
//! or written. Every message is one line and names the file; the cause, where there is one,
//! is part of the message (and a field), not a separate `source()`, so printing the error
//! prints all of it.

use crate::io::MAX_INPUT_PIXELS;
use std::path::PathBuf;
use thiserror::Error;

/// Why [`load_rgb`](crate::load_rgb), [`decode_rgb`](crate::decode_rgb),
/// [`save_atomic`](crate::save_atomic) or [`write_atomic`](crate::write_atomic) failed.
/// `name` is the caller's name for an input ("content image a.jpg").
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ImageError {
    /// The file could not be read: missing, a folder, no permission.
    #[error("cannot read {name}: {cause}")]
    Read {
        /// The input's name.
        name: String,
        /// The operating system's reason.
        cause: std::io::Error,
    },
    /// The file has no bytes.
    #[error("{name} is an empty file")]
    Empty {
        /// The input's name.
        name: String,
    },
    /// The bytes are none of the formats read (PNG, JPEG, WebP).
    #[error("{name} is not a PNG, JPEG or WebP image")]
    UnknownFormat {
        /// The input's name.
        name: String,
    },
    /// A JPEG without its end-of-image marker (the decoder would fill in the rest).
    #[error("{name} is a truncated JPEG (no end-of-image marker)")]
    TruncatedJpeg {
        /// The input's name.
        name: String,
    },
    /// More than [`MAX_INPUT_PIXELS`], by the header (nothing was decoded).
    #[error(
        "{name} is {width}×{height} ({:.0} megapixels), more than the {} nst accepts: downscale it first",
        *width as f64 * *height as f64 / 1e6,
        MAX_INPUT_PIXELS / 1_000_000
    )]
    TooManyPixels {
        /// The input's name.
        name: String,
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
    },
    /// A JPEG whose header promises more pixels than its bytes can hold (a decompression
    /// bomb).
    #[error("{name} claims {width}×{height} pixels but has only {bytes} bytes: a corrupt or malicious JPEG")]
    ImplausibleJpeg {
        /// The input's name.
        name: String,
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// The file's size.
        bytes: usize,
    },
    /// The decoder refused the data (corrupt, unsupported, or over the limits on sides and
    /// decoded bytes).
    #[error("cannot decode {name}: {reason}")]
    Decode {
        /// The input's name.
        name: String,
        /// The decoder's message, on one line.
        reason: String,
    },
    /// An output whose extension names no format nst writes.
    #[error("{}", unsupported_output(path, extension.as_deref()))]
    UnsupportedOutput {
        /// The output asked for.
        path: PathBuf,
        /// Its extension, if it has one.
        extension: Option<String>,
    },
    /// Writing, syncing or renaming the file failed (a full disk, a read-only folder), or
    /// encoding into it did.
    #[error("cannot write {}: {cause}", path.display())]
    Write {
        /// The file that was to be written (the one a link names).
        path: PathBuf,
        /// The reason.
        cause: std::io::Error,
    },
}

fn unsupported_output(path: &std::path::Path, extension: Option<&str>) -> String {
    match extension {
        Some(ext) => format!(
            "cannot write .{ext} files: use an output ending in .png, .jpg, .jpeg or .webp ({})",
            path.display()
        ),
        None => format!(
            "output {} has no extension: use .png, .jpg, .jpeg or .webp",
            path.display()
        ),
    }
}
