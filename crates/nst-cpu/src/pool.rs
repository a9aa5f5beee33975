//! 2×2 pooling with stride 2 in floor mode (a trailing odd row or column is dropped), max and
//! average, forward and backward. Shapes: `x[N, C, H, W]` → `y[N, C, H/2, W/2]`.

pub use nst_params::Pool2dParams;
use rayon::prelude::*;

/// Max pooling; `argmax[i]` receives which element of its 2×2 window produced `y[i]`:
/// `2·row + column` (0…3). One byte an output, not a four-byte index: the backward pass keeps
/// these for every max-pooling layer (at 2048² a u32 index cost 500 MB). Ties go to the first
/// element in row-major order, as in PyTorch.
pub fn max_pool_forward(p: &Pool2dParams, x: &[f32], y: &mut [f32], argmax: &mut [u8]) {
    assert_eq!(x.len(), p.input_len(), "max_pool: input length");
    assert!(
        y.len() == p.output_len() && argmax.len() == y.len(),
        "max_pool: output length"
    );
    let (iplane, oplane) = (p.in_h * p.in_w, p.out_h() * p.out_w());
    if oplane == 0 {
        return;
    }
    y.par_chunks_mut(oplane)
        .zip(argmax.par_chunks_mut(oplane))
        .zip(x.par_chunks(iplane))
        .for_each(|((y, am), x)| {
            for oy in 0..p.out_h() {
                for ox in 0..p.out_w() {
                    let base = 2 * oy * p.in_w + 2 * ox;
                    let (mut best, mut code) = (base, 0u8);
                    for (c, idx) in [(1, base + 1), (2, base + p.in_w), (3, base + p.in_w + 1)] {
                        // `>` keeps the first maximum; NaN propagates like PyTorch's.
                        if x[idx] > x[best] || x[idx].is_nan() && !x[best].is_nan() {
                            (best, code) = (idx, c);
                        }
                    }
                    y[oy * p.out_w() + ox] = x[best];
                    am[oy * p.out_w() + ox] = code;
                }
            }
        });
}

/// `dx` (overwritten) from `dy` and the forward's `argmax` (window positions).
pub fn max_pool_backward(p: &Pool2dParams, dy: &[f32], argmax: &[u8], dx: &mut [f32]) {
    assert_eq!(dx.len(), p.input_len(), "max_pool: input length");
    assert!(
        dy.len() == p.output_len() && argmax.len() == dy.len(),
        "max_pool: output length"
    );
    let (iplane, oplane) = (p.in_h * p.in_w, p.out_h() * p.out_w());
    dx.fill(0.0);
    if oplane == 0 {
        return;
    }
    dx.par_chunks_mut(iplane)
        .zip(dy.par_chunks(oplane).zip(argmax.par_chunks(oplane)))
        .for_each(|(dx, (dy, am))| {
            // Windows do not overlap, so each input element receives at most one gradient.
            let ow = p.out_w();
            for (o, (&g, &code)) in dy.iter().zip(am).enumerate() {
                let (oy, ox) = (o / ow, o % ow);
                let (wy, wx) = (usize::from(code >> 1), usize::from(code & 1));
                dx[(2 * oy + wy) * p.in_w + 2 * ox + wx] += g;
            }
        });
}

/// Average pooling over each 2×2 window.
pub fn avg_pool_forward(p: &Pool2dParams, x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), p.input_len(), "avg_pool: input length");
    assert_eq!(y.len(), p.output_len(), "avg_pool: output length");
    let (iplane, oplane) = (p.in_h * p.in_w, p.out_h() * p.out_w());
    if oplane == 0 {
        return;
    }
    y.par_chunks_mut(oplane)
        .zip(x.par_chunks(iplane))
        .for_each(|(y, x)| {
            for oy in 0..p.out_h() {
                for ox in 0..p.out_w() {
                    let b = 2 * oy * p.in_w + 2 * ox;
                    y[oy * p.out_w() + ox] =
                        0.25 * (x[b] + x[b + 1] + x[b + p.in_w] + x[b + p.in_w + 1]);
                }
            }
        });
}

/// `dx` (overwritten) for average pooling: each window shares its gradient equally.
pub fn avg_pool_backward(p: &Pool2dParams, dy: &[f32], dx: &mut [f32]) {
    assert_eq!(dx.len(), p.input_len(), "avg_pool: input length");
    assert_eq!(dy.len(), p.output_len(), "avg_pool: output length");
    let (iplane, oplane) = (p.in_h * p.in_w, p.out_h() * p.out_w());
    dx.fill(0.0);
    if oplane == 0 {
        return;
    }
    dx.par_chunks_mut(iplane)
        .zip(dy.par_chunks(oplane))
        .for_each(|(dx, dy)| {
            for oy in 0..p.out_h() {
                for ox in 0..p.out_w() {
                    let g = 0.25 * dy[oy * p.out_w() + ox];
                    let b = 2 * oy * p.in_w + 2 * ox;
                    for i in [b, b + 1, b + p.in_w, b + p.in_w + 1] {
                        dx[i] = g;
                    }
                }
            }
        });
}
