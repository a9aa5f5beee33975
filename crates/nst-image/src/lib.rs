//! # nst-image
//!
//! Images as neural style transfer needs them, for the `nst` command, its benchmarks and any
//! other front end:
//!
//! - [`io`]: decoding PNG, JPEG and WebP with limits (side length, decoded bytes, truncated
//!   JPEGs) and one-line errors ([`ImageError`], one variant per reason); [`Planes`], planar
//!   f32 RGB in 0..255 (the layout of a `[1, C, H, W]` tensor) with separable resampling;
//!   atomic encoding ([`save_atomic`], [`write_atomic`]: a reader never sees a partial file).
//! - [`color`]: colour preservation (luminance-only transfer, colour matching).
//!
//! ```
//! use nst_image::Planes;
//! use nst_tensor::Device;
//! let img = nst_image::image::RgbImage::from_pixel(8, 6, nst_image::image::Rgb([10, 200, 30]));
//! let planes = Planes::from_rgb(&img).resized(4, 3);
//! let t = planes.to_tensor(&Device::Cpu)?;
//! assert_eq!(t.dims(), &[1, 3, 3, 4]);
//! assert_eq!(Planes::from_tensor(&t)?, planes);
//! # Ok::<(), nst_tensor::TensorError>(())
//! ```

pub mod color;
mod error;
pub mod io;

pub use error::ImageError;

/// The `image` crate this one decodes and encodes with (`load_rgb` returns its `RgbImage`).
pub use image;

pub use io::{
    decode_rgb, fit_longest_side, load_rgb, one_line, save_atomic, write_atomic, written_file,
    OutputFormat, Planes,
};
