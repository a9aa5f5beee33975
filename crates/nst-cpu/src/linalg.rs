//! Symmetric 3×3 eigen-decomposition and matrix functions, for colour statistics
//! (the covariance of RGB pixels).
//!
//! The built-in solver is the cyclic Jacobi method: each step is a closed-form 2×2 rotation,
//! and it converges to machine precision in a few sweeps. Unlike the trigonometric closed
//! form it stays accurate for repeated eigenvalues, which is exactly the grayscale case
//! (covariance ∝ 𝟙𝟙ᵀ, eigenvalues `(3v, 0, 0)`). With the `openblas` feature,
//! `sym3_eigen_lapack` (feature `openblas`) gives LAPACK's answer for the tests to compare against.

// Index loops mirror the textbook formulas of these 3×3 algorithms.
#![allow(clippy::needless_range_loop)]

/// A symmetric 3×3 matrix, row-major.
pub type Mat3 = [[f64; 3]; 3];

/// Eigenvalues `λ` (ascending) and eigenvectors (the columns of `v`) of a symmetric `a`:
/// `a = v · diag(λ) · vᵀ`.
pub fn sym3_eigen(a: &Mat3) -> ([f64; 3], Mat3) {
    let mut m = *a;
    let mut v: Mat3 = [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]];
    for _sweep in 0..50 {
        let off = m[0][1].powi(2) + m[0][2].powi(2) + m[1][2].powi(2);
        let diag = m[0][0].powi(2) + m[1][1].powi(2) + m[2][2].powi(2);
        if off <= 1e-30 * diag.max(f64::MIN_POSITIVE) {
            break;
        }
        for (p, q) in [(0, 1), (0, 2), (1, 2)] {
            if m[p][q] == 0.0 {
                continue;
            }
            // Rotation angle that zeroes m[p][q] (Golub & Van Loan, Alg. 8.4.1).
            let theta = (m[q][q] - m[p][p]) / (2.0 * m[p][q]);
            let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
            let t = if theta == 0.0 { 1.0 } else { t };
            let c = 1.0 / (t * t + 1.0).sqrt();
            let s = t * c;
            for k in 0..3 {
                let (mkp, mkq) = (m[k][p], m[k][q]);
                m[k][p] = c * mkp - s * mkq;
                m[k][q] = s * mkp + c * mkq;
            }
            for k in 0..3 {
                let (mpk, mqk) = (m[p][k], m[q][k]);
                m[p][k] = c * mpk - s * mqk;
                m[q][k] = s * mpk + c * mqk;
            }
            for row in v.iter_mut() {
                let (vp, vq) = (row[p], row[q]);
                row[p] = c * vp - s * vq;
                row[q] = s * vp + c * vq;
            }
        }
    }
    let mut order = [0usize, 1, 2];
    order.sort_by(|&i, &j| m[i][i].total_cmp(&m[j][j]));
    let vals = order.map(|i| m[i][i]);
    let mut vecs = [[0.0; 3]; 3];
    for (col, &i) in order.iter().enumerate() {
        for r in 0..3 {
            vecs[r][col] = v[r][i];
        }
    }
    (vals, vecs)
}

/// `f(a) = v · diag(f(λ)) · vᵀ` for a symmetric `a`.
pub fn sym3_apply(a: &Mat3, f: impl Fn(f64) -> f64) -> Mat3 {
    let (vals, v) = sym3_eigen(a);
    let fl = vals.map(f);
    let mut out = [[0.0; 3]; 3];
    for (i, row) in out.iter_mut().enumerate() {
        for (j, o) in row.iter_mut().enumerate() {
            *o = (0..3).map(|k| v[i][k] * fl[k] * v[j][k]).sum();
        }
    }
    out
}

/// Principal square root of a symmetric positive semi-definite matrix (negative eigenvalues
/// from rounding are clamped to 0).
pub fn sym3_sqrt(a: &Mat3) -> Mat3 {
    sym3_apply(a, |l| l.max(0.0).sqrt())
}

/// `(a + eps·I)^(-1/2)`: the regularised inverse square root (finite for singular `a`).
pub fn sym3_inv_sqrt(a: &Mat3, eps: f64) -> Mat3 {
    sym3_apply(a, |l| 1.0 / (l.max(0.0) + eps).sqrt())
}

/// 3×3 product `a·b`.
pub fn mat3_mul(a: &Mat3, b: &Mat3) -> Mat3 {
    let mut out = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            out[i][j] = (0..3).map(|k| a[i][k] * b[k][j]).sum();
        }
    }
    out
}

/// LAPACK (`syevd` through ndarray-linalg) eigenvalues, ascending, and eigenvectors as columns.
#[cfg(feature = "openblas")]
pub fn sym3_eigen_lapack(a: &Mat3) -> ([f64; 3], Mat3) {
    use ndarray_linalg::{Eigh, UPLO};
    let m = ndarray::Array2::from_shape_fn((3, 3), |(i, j)| a[i][j]);
    let (vals, vecs) = m.eigh(UPLO::Upper).expect("3×3 symmetric eigh");
    let mut v = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            v[i][j] = vecs[(i, j)];
        }
    }
    ([vals[0], vals[1], vals[2]], v)
}
