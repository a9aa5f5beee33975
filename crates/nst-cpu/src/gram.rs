//! Gram matrix of feature maps: `G = s · F·Fᵀ` for `F[C × N]` (one image's features with the
//! spatial positions flattened), and its gradient `dF = s · (dG + dGᵀ) · F`.

use crate::gemm::{gemm_strided, MatLayout};
use crate::scratch::with_scratch;
use crate::shared_out::SharedOut;
use rayon::prelude::*;

/// Positions per partial Gram matrix in [`gram_forward`] (see there for the measurements).
const POSITIONS_PER_PART: usize = 8 * 1024;

/// `g[C × C] = scale · f·fᵀ` with `f[C × N]` row-major.
///
/// The product's inner dimension (the positions, N = H·W) is long and its output (C × C)
/// small, and a GEMM parallelises over its output: one call took 100 ms for relu1_1 at 512²
/// (C = 64, N = 262144) on two threads, against 23 ms for the gradient's product of the same
/// size. So the positions are split into parts of `POSITIONS_PER_PART` (8192), each part's
/// `F_p·F_pᵀ` computed as a task of its own, and the parts summed in a fixed order (the
/// result does not depend on the thread count). The five default style layers at 512² went
/// from 196 to 92 ms per evaluation (parts of 16K positions: 100 ms, 4K: 95 ms).
pub fn gram_forward(f: &[f32], c: usize, n: usize, scale: f32, g: &mut [f32]) {
    assert_eq!(f.len(), c * n, "gram: feature length");
    assert_eq!(g.len(), c * c, "gram: output length");
    let parts = n.div_ceil(POSITIONS_PER_PART).max(1);
    if parts == 1 {
        let lf = MatLayout::row_major(c, n);
        gemm_strided(scale, f, lf, f, lf.t(), 0.0, g, MatLayout::row_major(c, c));
        return;
    }
    let partials: Vec<Vec<f32>> = (0..parts)
        .into_par_iter()
        .map(|p| {
            let (n0, n1) = (
                p * POSITIONS_PER_PART,
                ((p + 1) * POSITIONS_PER_PART).min(n),
            );
            // F[:, n0..n1]: rows of the full matrix, starting at column n0.
            let lf = MatLayout {
                rows: c,
                cols: n1 - n0,
                row_stride: n,
                col_stride: 1,
            };
            let mut part = vec![0.0f32; c * c];
            gemm_strided(
                1.0,
                &f[n0..],
                lf,
                &f[n0..],
                lf.t(),
                0.0,
                &mut part,
                MatLayout::row_major(c, c),
            );
            part
        })
        .collect();
    g.copy_from_slice(&partials[0]);
    for part in &partials[1..] {
        g.iter_mut().zip(part).for_each(|(g, p)| *g += p);
    }
    g.iter_mut().for_each(|v| *v *= scale);
}

/// `df[C × N] = scale · (dg + dgᵀ) · f` (overwrites `df`).
pub fn gram_backward(f: &[f32], dg: &[f32], c: usize, n: usize, scale: f32, df: &mut [f32]) {
    assert_eq!(f.len(), c * n, "gram: feature length");
    assert_eq!(dg.len(), c * c, "gram: gradient length");
    assert_eq!(df.len(), c * n, "gram: output length");
    let sym = symmetrised(dg, c);
    let lf = MatLayout::row_major(c, n);
    gemm_strided(scale, &sym, MatLayout::row_major(c, c), f, lf, 0.0, df, lf);
}

/// Positions per block of [`gram_backward_in_place`]: each block is copied to a
/// `C × POSITIONS_PER_BLOCK` scratch buffer (4 MiB at C = 512) and its product formed in
/// another before it replaces the block.
const POSITIONS_PER_BLOCK: usize = 2048;

/// [`gram_backward`] writing `dF` over `F` itself: `f ← scale · (dg + dgᵀ) · f`.
///
/// A loss layer's features are read by nothing after their Gram gradient, so the gradient can
/// take their buffer instead of a second one of the same size: at 2048² that is 1 GiB for
/// relu1_1, alive at the start of the backward pass, when memory peaks. Each column of the
/// result depends only on the same column of F, so the positions are done in blocks, in
/// parallel, each through small buffers of its own.
pub fn gram_backward_in_place(f: &mut [f32], dg: &[f32], c: usize, n: usize, scale: f32) {
    assert_eq!(f.len(), c * n, "gram: feature length");
    assert_eq!(dg.len(), c * c, "gram: gradient length");
    let sym = symmetrised(dg, c);
    let ls = MatLayout::row_major(c, c);
    let out = SharedOut(f.as_mut_ptr());
    (0..n.div_ceil(POSITIONS_PER_BLOCK))
        .into_par_iter()
        .for_each(|block| {
            let n0 = block * POSITIONS_PER_BLOCK;
            let cols = POSITIONS_PER_BLOCK.min(n - n0);
            let lp = MatLayout::row_major(c, cols);
            // Pooled scratch (no allocation in steady state, no zeroing: every value is
            // written before it is read; the product has β = 0).
            with_scratch(2 * c * cols, |scratch| {
                let (columns, product) = scratch.split_at_mut(c * cols);
                // F[:, n0..n0 + cols], copied out whole before any of it is overwritten.
                for (row, dst) in columns.chunks_exact_mut(cols).enumerate() {
                    // SAFETY: row·n + n0 + cols ≤ c·n, inside F; blocks are disjoint column
                    // ranges, so no other task writes these elements.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            out.ptr().add(row * n + n0),
                            dst.as_mut_ptr(),
                            cols,
                        )
                    };
                }
                gemm_strided(scale, &sym, ls, columns, lp, 0.0, product, lp);
                for (row, src) in product.chunks_exact(cols).enumerate() {
                    // SAFETY: as above; this task's own columns.
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            src.as_ptr(),
                            out.ptr().add(row * n + n0),
                            cols,
                        )
                    };
                }
            });
        });
}

/// `dg + dgᵀ`, the matrix the Gram gradient multiplies F by.
fn symmetrised(dg: &[f32], c: usize) -> Vec<f32> {
    let mut sym = vec![0.0f32; c * c];
    for i in 0..c {
        for j in 0..c {
            sym[i * c + j] = dg[i * c + j] + dg[j * c + i];
        }
    }
    sym
}
