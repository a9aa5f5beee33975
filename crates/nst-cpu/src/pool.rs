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
            let (iw, ow) = (p.in_w, p.out_w());
            // Row by row through slices, so the inner loop has no bounds checks.
            for oy in 0..p.out_h() {
                let (top, bottom) = (&x[2 * oy * iw..][..iw], &x[(2 * oy + 1) * iw..][..iw]);
                let (y, am) = (&mut y[oy * ow..][..ow], &mut am[oy * ow..][..ow]);
                for ox in 0..ow {
                    let window = [
                        top[2 * ox],
                        top[2 * ox + 1],
                        bottom[2 * ox],
                        bottom[2 * ox + 1],
                    ];
                    let (mut best, mut code) = (window[0], 0u8);
                    for (c, v) in (1u8..).zip(&window[1..]) {
                        // `>` keeps the first maximum; NaN propagates like PyTorch's.
                        if *v > best || v.is_nan() && !best.is_nan() {
                            (best, code) = (*v, c);
                        }
                    }
                    y[ox] = best;
                    am[ox] = code;
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
    if oplane == 0 {
        dx.fill(0.0);
        return;
    }
    let (iw, ow) = (p.in_w, p.out_w());
    dx.par_chunks_mut(iplane)
        .zip(dy.par_chunks(oplane).zip(argmax.par_chunks(oplane)))
        .for_each(|(dx, (dy, am))| {
            // Windows do not overlap: every input element of a window is written once, the
            // winner with the gradient and the others with 0, so dx needs no zeroing pass.
            // A trailing odd row or column (floor mode) belongs to no window.
            for oy in 0..p.out_h() {
                let (top, bottom) = dx[2 * oy * iw..][..2 * iw].split_at_mut(iw);
                let (g, code) = (&dy[oy * ow..][..ow], &am[oy * ow..][..ow]);
                for ox in 0..ow {
                    let (g, c) = (g[ox], code[ox]);
                    let pick = |k: u8| if c == k { g } else { 0.0 };
                    top[2 * ox] = pick(0);
                    top[2 * ox + 1] = pick(1);
                    bottom[2 * ox] = pick(2);
                    bottom[2 * ox + 1] = pick(3);
                }
                top[2 * ow..].fill(0.0);
                bottom[2 * ow..].fill(0.0);
            }
            dx[2 * p.out_h() * iw..].fill(0.0);
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
    if oplane == 0 {
        dx.fill(0.0);
        return;
    }
    let (iw, ow) = (p.in_w, p.out_w());
    dx.par_chunks_mut(iplane)
        .zip(dy.par_chunks(oplane))
        .for_each(|(dx, dy)| {
            // Every element of a window is written; what no window covers is zeroed here.
            for oy in 0..p.out_h() {
                let (top, bottom) = dx[2 * oy * iw..][..2 * iw].split_at_mut(iw);
                for (ox, &g) in dy[oy * ow..][..ow].iter().enumerate() {
                    let g = 0.25 * g;
                    top[2 * ox..][..2].fill(g);
                    bottom[2 * ox..][..2].fill(g);
                }
                top[2 * ow..].fill(0.0);
                bottom[2 * ow..].fill(0.0);
            }
            dx[2 * p.out_h() * iw..].fill(0.0);
        });
}
