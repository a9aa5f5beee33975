//! Rectified linear unit: `y = max(x, 0)`.

use rayon::prelude::*;

const CHUNK: usize = 1 << 14;

/// `y = max(x, 0)`.
pub fn relu_forward(x: &[f32], y: &mut [f32]) {
    assert_eq!(x.len(), y.len(), "relu: lengths");
    y.par_chunks_mut(CHUNK)
        .zip(x.par_chunks(CHUNK))
        .for_each(|(y, x)| {
            y.iter_mut().zip(x).for_each(|(y, &x)| *y = x.max(0.0));
        });
}

/// In place: `x = max(x, 0)`.
pub fn relu_in_place(x: &mut [f32]) {
    x.par_chunks_mut(CHUNK)
        .for_each(|c| c.iter_mut().for_each(|v| *v = v.max(0.0)));
}

/// `dx = dy · [y > 0]`, using the forward *output* `y` (so the input need not be kept).
pub fn relu_backward(y: &[f32], dy: &[f32], dx: &mut [f32]) {
    assert!(y.len() == dy.len() && dy.len() == dx.len(), "relu: lengths");
    dx.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK).zip(dy.par_chunks(CHUNK)))
        .for_each(|(dx, (y, dy))| {
            for ((d, &y), &g) in dx.iter_mut().zip(y).zip(dy) {
                *d = if y > 0.0 { g } else { 0.0 };
            }
        });
}

/// `dy[i] = 0` wherever `y[i]` is not positive: [`relu_backward`] in place.
pub fn relu_mask_in_place(y: &[f32], dy: &mut [f32]) {
    assert_eq!(y.len(), dy.len(), "relu: lengths");
    dy.par_chunks_mut(CHUNK)
        .zip(y.par_chunks(CHUNK))
        .for_each(|(dy, y)| {
            for (d, &y) in dy.iter_mut().zip(y) {
                if y <= 0.0 || y.is_nan() {
                    *d = 0.0;
                }
            }
        });
}
