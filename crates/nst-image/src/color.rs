//! Colour preservation (Gatys, Bethge, Hertzmann & Shechtman, "Preserving Color in Neural
//! Artistic Style Transfer", 2016/2017).
//!
//! - **Luminance-only transfer**: the content and style images become their luminance Y (of
//!   YIQ); the style's Y is shifted and scaled to the content's mean and standard deviation;
//!   style transfer runs on Y alone (replicated to three channels for VGG); the result's Y is
//!   recombined with the content's I and Q.
//! - **Colour matching**: before its features are taken, each style pixel p becomes
//!   `A·(p − μ_s) + μ_c` with `A = Σ_c^{1/2} · Σ_s^{-1/2}`, so the style image takes the
//!   content's colour mean μ and covariance Σ (the "image analogies" variant in the paper).
//!   The symmetric 3×3 roots come from `nst_tensor::linalg`; `Σ_s` is regularised by `ε·I` so a
//!   grayscale or flat style stays finite.

use crate::io::Planes;
use nst_tensor::linalg::{mat3_mul, sym3_inv_sqrt, sym3_sqrt, Mat3};

/// YIQ (NTSC 1953) from RGB.
const RGB_TO_YIQ: [[f32; 3]; 3] = [
    [0.299, 0.587, 0.114],
    [0.595_716, -0.274_453, -0.321_263],
    [0.211_456, -0.522_591, 0.311_135],
];

/// Regulariser of the style covariance, in (0..255)² units.
const COV_EPS: f64 = 1e-2;

fn apply3(p: &Planes, m: &[[f32; 3]; 3], offset: [f32; 3]) -> Planes {
    assert_eq!(p.channels, 3);
    let n = p.width * p.height;
    let mut data = vec![0.0; 3 * n];
    for i in 0..n {
        let v = [p.data[i], p.data[n + i], p.data[2 * n + i]];
        for r in 0..3 {
            data[r * n + i] = m[r][0] * v[0] + m[r][1] * v[1] + m[r][2] * v[2] + offset[r];
        }
    }
    Planes { data, ..p.clone() }
}

/// Splits RGB into luminance Y (1 channel) and chrominance IQ (2 channels).
pub fn split_luminance(rgb: &Planes) -> (Planes, Planes) {
    let yiq = apply3(rgb, &RGB_TO_YIQ, [0.0; 3]);
    let n = rgb.width * rgb.height;
    let y = Planes {
        channels: 1,
        data: yiq.data[..n].to_vec(),
        ..rgb.clone()
    };
    let iq = Planes {
        channels: 2,
        data: yiq.data[n..].to_vec(),
        ..rgb.clone()
    };
    (y, iq)
}

/// RGB from luminance Y and chrominance IQ of the same size.
pub fn join_luminance(y: &Planes, iq: &Planes) -> Planes {
    assert_eq!(
        (y.width, y.height),
        (iq.width, iq.height),
        "Y and IQ sizes differ"
    );
    let inv = invert3(&RGB_TO_YIQ);
    let yiq = Planes {
        channels: 3,
        data: [y.data.as_slice(), iq.data.as_slice()].concat(),
        ..y.clone()
    };
    apply3(&yiq, &inv, [0.0; 3])
}

fn invert3(m: &[[f32; 3]; 3]) -> [[f32; 3]; 3] {
    let a: [[f64; 3]; 3] = m.map(|r| r.map(|v| v as f64));
    let det = a[0][0] * (a[1][1] * a[2][2] - a[1][2] * a[2][1])
        - a[0][1] * (a[1][0] * a[2][2] - a[1][2] * a[2][0])
        + a[0][2] * (a[1][0] * a[2][1] - a[1][1] * a[2][0]);
    let mut inv = [[0.0f32; 3]; 3];
    for (i, row) in inv.iter_mut().enumerate() {
        for (j, v) in row.iter_mut().enumerate() {
            // Cofactor of a[j][i].
            let (r0, r1) = ((j + 1) % 3, (j + 2) % 3);
            let (c0, c1) = ((i + 1) % 3, (i + 2) % 3);
            *v = ((a[r0][c0] * a[r1][c1] - a[r0][c1] * a[r1][c0]) / det) as f32;
        }
    }
    inv
}

fn mean_std(p: &[f32]) -> (f64, f64) {
    let n = p.len().max(1) as f64;
    let mean = p.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = p.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// The style luminance shifted and scaled to the content luminance's mean and deviation.
/// A flat style (zero deviation) becomes flat at the content's mean.
pub fn match_luminance(style_y: &Planes, content_y: &Planes) -> Planes {
    let (ms, ss) = mean_std(&style_y.data);
    let (mc, sc) = mean_std(&content_y.data);
    let gain = if ss > 1e-6 { sc / ss } else { 0.0 };
    let data = style_y
        .data
        .iter()
        .map(|&v| ((v as f64 - ms) * gain + mc) as f32)
        .collect();
    Planes {
        data,
        ..style_y.clone()
    }
}

/// Mean and covariance of the RGB pixels.
pub fn color_stats(p: &Planes) -> ([f64; 3], Mat3) {
    let n = p.width * p.height;
    let mut mean = [0.0; 3];
    for (c, m) in mean.iter_mut().enumerate() {
        *m = p.plane(c).iter().map(|&v| v as f64).sum::<f64>() / n as f64;
    }
    let mut cov = [[0.0; 3]; 3];
    for i in 0..n {
        let d = [0, 1, 2].map(|c| p.data[c * n + i] as f64 - mean[c]);
        for r in 0..3 {
            for c in 0..3 {
                cov[r][c] += d[r] * d[c] / n as f64;
            }
        }
    }
    (mean, cov)
}

/// The style image recoloured to the content's colour mean and covariance (see module docs).
pub fn match_colors(style: &Planes, content: &Planes) -> Planes {
    let (ms, cs) = color_stats(style);
    let (mc, cc) = color_stats(content);
    let a = mat3_mul(&sym3_sqrt(&cc), &sym3_inv_sqrt(&cs, COV_EPS));
    // p' = A·p + (μ_c − A·μ_s)
    let offset = [0, 1, 2].map(|r| (mc[r] - (0..3).map(|k| a[r][k] * ms[k]).sum::<f64>()) as f32);
    let a32 = a.map(|r| r.map(|v| v as f32));
    let mut out = apply3(style, &a32, offset);
    out.data.iter_mut().for_each(|v| *v = v.clamp(0.0, 255.0));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planes(w: usize, h: usize, f: impl Fn(usize, usize, usize) -> f32) -> Planes {
        let mut data = vec![0.0; 3 * w * h];
        for c in 0..3 {
            for y in 0..h {
                for x in 0..w {
                    data[(c * h + y) * w + x] = f(c, y, x);
                }
            }
        }
        Planes {
            channels: 3,
            height: h,
            width: w,
            data,
        }
    }

    #[test]
    fn luminance_split_and_join_round_trip() {
        let p = planes(7, 5, |c, y, x| ((c * 50 + y * 13 + x * 29) % 256) as f32);
        let (y, iq) = split_luminance(&p);
        let back = join_luminance(&y, &iq);
        for (a, b) in back.data.iter().zip(&p.data) {
            assert!((a - b).abs() < 1e-3, "{a} vs {b}");
        }
    }

    #[test]
    fn matched_style_has_content_statistics() {
        // Smooth, mid-range images so the clamp to 0..255 does not bite.
        let content = planes(16, 12, |c, y, x| {
            100.0 + 20.0 * ((x as f32 * 0.3 + c as f32).sin() + (y as f32 * 0.2).cos())
        });
        let style = planes(10, 14, |c, y, x| {
            128.0
                + 30.0 * ((x * (c + 1)) as f32 * 0.4).sin()
                + 10.0 * (y as f32 * 0.5 + c as f32).cos()
        });
        let out = match_colors(&style, &content);
        let (m1, c1) = color_stats(&out);
        let (m2, c2) = color_stats(&content);
        for r in 0..3 {
            assert!((m1[r] - m2[r]).abs() < 1e-2, "mean {m1:?} vs {m2:?}");
            for c in 0..3 {
                assert!(
                    (c1[r][c] - c2[r][c]).abs() < 1e-2 * (1.0 + c2[r][c].abs()),
                    "cov {c1:?} vs {c2:?}"
                );
            }
        }
    }

    #[test]
    fn grayscale_and_flat_inputs_stay_finite() {
        let gray = planes(8, 8, |_, y, x| (x * 20 + y * 7) as f32);
        let flat = planes(8, 8, |_, _, _| 77.0);
        let colour = planes(8, 8, |c, y, x| (c * 60 + x * 10 + y) as f32);
        for (s, c) in [
            (&gray, &colour),
            (&colour, &gray),
            (&flat, &colour),
            (&colour, &flat),
            (&gray, &gray),
        ] {
            assert!(match_colors(s, c).data.iter().all(|v| v.is_finite()));
            let (sy, _) = split_luminance(s);
            let (cy, _) = split_luminance(c);
            assert!(match_luminance(&sy, &cy).data.iter().all(|v| v.is_finite()));
        }
    }
}
