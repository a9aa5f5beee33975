//! Gram matrix of feature maps: `G = s · F·Fᵀ` for `F[C × N]` (one image's features with the
//! spatial positions flattened), and its gradient `dF = s · (dG + dGᵀ) · F`.

use crate::gemm::{gemm_strided, MatLayout};

/// `g[C × C] = scale · f·fᵀ` with `f[C × N]` row-major.
pub fn gram_forward(f: &[f32], c: usize, n: usize, scale: f32, g: &mut [f32]) {
    assert_eq!(f.len(), c * n, "gram: feature length");
    assert_eq!(g.len(), c * c, "gram: output length");
    let lf = MatLayout::row_major(c, n);
    gemm_strided(scale, f, lf, f, lf.t(), 0.0, g, MatLayout::row_major(c, c));
}

/// `df[C × N] = scale · (dg + dgᵀ) · f` (overwrites `df`).
pub fn gram_backward(f: &[f32], dg: &[f32], c: usize, n: usize, scale: f32, df: &mut [f32]) {
    assert_eq!(f.len(), c * n, "gram: feature length");
    assert_eq!(dg.len(), c * c, "gram: gradient length");
    assert_eq!(df.len(), c * n, "gram: output length");
    let mut sym = vec![0.0f32; c * c];
    for i in 0..c {
        for j in 0..c {
            sym[i * c + j] = dg[i * c + j] + dg[j * c + i];
        }
    }
    let lf = MatLayout::row_major(c, n);
    gemm_strided(scale, &sym, MatLayout::row_major(c, c), f, lf, 0.0, df, lf);
}
