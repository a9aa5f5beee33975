//! Elementwise maps and reductions on equal-length slices. Large inputs are split into chunks
//! processed in parallel; reductions accumulate in f64 so that losses summed over millions of
//! terms keep full f32 precision.

use nst_params::AdamParams;
use rayon::prelude::*;

const CHUNK: usize = 1 << 15;

/// `out[i] = f(a[i], b[i])`, in parallel chunks.
pub fn zip_map(a: &[f32], b: &[f32], out: &mut [f32], f: impl Fn(f32, f32) -> f32 + Sync) {
    assert!(
        a.len() == b.len() && b.len() == out.len(),
        "elementwise: lengths differ"
    );
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK).zip(b.par_chunks(CHUNK)))
        .for_each(|(o, (a, b))| {
            o.iter_mut()
                .zip(a.iter().zip(b))
                .for_each(|(o, (&a, &b))| *o = f(a, b))
        });
}

/// `out[i] = f(a[i])`, in parallel chunks.
pub fn map(a: &[f32], out: &mut [f32], f: impl Fn(f32) -> f32 + Sync) {
    assert_eq!(a.len(), out.len(), "elementwise: lengths differ");
    out.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK))
        .for_each(|(o, a)| o.iter_mut().zip(a).for_each(|(o, &a)| *o = f(a)));
}

/// `out = a + b`.
pub fn add(a: &[f32], b: &[f32], out: &mut [f32]) {
    zip_map(a, b, out, |a, b| a + b);
}

/// `out = a − b`.
pub fn sub(a: &[f32], b: &[f32], out: &mut [f32]) {
    zip_map(a, b, out, |a, b| a - b);
}

/// `out = a ⊙ b`.
pub fn mul(a: &[f32], b: &[f32], out: &mut [f32]) {
    zip_map(a, b, out, |a, b| a * b);
}

/// `out = α·a + β·b`.
pub fn axpby(alpha: f32, a: &[f32], beta: f32, b: &[f32], out: &mut [f32]) {
    zip_map(a, b, out, |a, b| alpha * a + beta * b);
}

/// `out = s·a`.
pub fn scale(a: &[f32], s: f32, out: &mut [f32]) {
    map(a, out, |a| s * a);
}

/// `out = a²`.
pub fn square(a: &[f32], out: &mut [f32]) {
    map(a, out, |a| a * a);
}

/// `acc += a` (gradient accumulation).
pub fn add_assign(acc: &mut [f32], a: &[f32]) {
    assert_eq!(acc.len(), a.len(), "elementwise: lengths differ");
    acc.par_chunks_mut(CHUNK)
        .zip(a.par_chunks(CHUNK))
        .for_each(|(o, a)| o.iter_mut().zip(a).for_each(|(o, &a)| *o += a));
}

fn reduce(a: &[f32], f: impl Fn(f32) -> f64 + Sync) -> f64 {
    a.par_chunks(CHUNK)
        .map(|c| c.iter().map(|&v| f(v)).sum::<f64>())
        .sum()
}

/// Σ a, accumulated in f64.
pub fn sum(a: &[f32]) -> f64 {
    reduce(a, |v| v as f64)
}

/// Σ |a|, accumulated in f64.
pub fn abs_sum(a: &[f32]) -> f64 {
    reduce(a, |v| v.abs() as f64)
}

/// max |a| (0 for an empty slice; NaN if any element is NaN).
pub fn abs_max(a: &[f32]) -> f32 {
    a.par_chunks(CHUNK)
        .map(|c| {
            c.iter().fold(0.0f32, |m, &v| {
                if v.is_nan() || m.is_nan() {
                    f32::NAN
                } else {
                    m.max(v.abs())
                }
            })
        })
        .reduce(
            || 0.0,
            |a, b| {
                if a.is_nan() || b.is_nan() {
                    f32::NAN
                } else {
                    a.max(b)
                }
            },
        )
}

/// Σ (aᵢ − bᵢ)², each term in f32 (the bits `sub` then `square` give it) and the sum in
/// f64, as [`sum`] of those squares would be: a loss's squared distance without a buffer of
/// differences.
pub fn sum_squared_difference(a: &[f32], b: &[f32]) -> f64 {
    zip_reduce(a, b, "squared difference", |a, b| {
        let d = a - b;
        (d * d) as f64
    })
}

/// `a ← (s·g)·(a − b)`, in place: the gradient of `g·Σ(a − b)²` (s = 2) written over `a`.
/// The same bits as broadcasting `g` and the square's backward `(s·g)·d` on `d = a − b`.
pub fn scaled_difference_in_place(a: &mut [f32], b: &[f32], s: f32, g: f32) {
    assert_eq!(a.len(), b.len(), "scaled difference: lengths differ");
    let c = s * g;
    a.par_chunks_mut(CHUNK)
        .zip(b.par_chunks(CHUNK))
        .for_each(|(a, b)| a.iter_mut().zip(b).for_each(|(a, &b)| *a = c * (*a - b)));
}

/// Σ aᵢ·bᵢ, accumulated in f64.
pub fn dot(a: &[f32], b: &[f32]) -> f64 {
    zip_reduce(a, b, "dot", |a, b| a as f64 * b as f64)
}

/// Σ f(aᵢ, bᵢ) in f64, over parallel chunks.
fn zip_reduce(a: &[f32], b: &[f32], what: &str, f: impl Fn(f32, f32) -> f64 + Sync) -> f64 {
    assert_eq!(a.len(), b.len(), "{what}: lengths differ");
    a.par_chunks(CHUNK)
        .zip(b.par_chunks(CHUNK))
        .map(|(a, b)| a.iter().zip(b).map(|(&a, &b)| f(a, b)).sum::<f64>())
        .sum()
}

/// One Adam update, in place (the rule is documented on [`AdamParams`]).
pub fn adam_update(x: &mut [f32], g: &[f32], m: &mut [f32], v: &mut [f32], p: &AdamParams) {
    assert!(
        x.len() == g.len() && g.len() == m.len() && m.len() == v.len(),
        "adam: lengths"
    );
    let (c1, c2) = (p.correction1(), p.correction2());
    let AdamParams {
        lr,
        beta1,
        beta2,
        eps,
        ..
    } = *p;
    x.par_chunks_mut(CHUNK)
        .zip(g.par_chunks(CHUNK))
        .zip(m.par_chunks_mut(CHUNK).zip(v.par_chunks_mut(CHUNK)))
        .for_each(|((x, g), (m, v))| {
            for i in 0..x.len() {
                m[i] = beta1 * m[i] + (1.0 - beta1) * g[i];
                v[i] = beta2 * v[i] + (1.0 - beta2) * g[i] * g[i];
                x[i] -= lr * (m[i] / c1) / ((v[i] / c2).sqrt() + eps);
            }
        });
}
