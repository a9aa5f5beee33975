//! Row-major products as cuBLAS calls, and a host reference of those calls.
//!
//! cuBLAS is column-major; our tensors are row-major. A row-major `X[r × c]` read
//! column-major is `Xᵀ` with leading dimension c, so the row-major product
//! `C[m × n] = op(A)·op(B)` is the column-major `Cᵀ = op(B)ᵀ·op(A)ᵀ`: the call takes B as its
//! first operand and A as its second, swaps m and n, and keeps each operand's transpose flag.
//! [`Sgemm::row_major`] builds that call; [`Sgemm::run_reference`] executes a call on host
//! slices with cuBLAS's exact column-major semantics, so the mapping (the usual source of
//! GPU-only bugs) is tested against nst-cpu without a GPU (`tests/blas.rs`).

use cudarc::cublas::{sys::cublasOperation_t, GemmConfig};

/// One `cublasSgemm` call: `C = α·op(A)·op(B) + β·C`, column-major, `op(A)` m×k, `op(B)` k×n.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sgemm {
    /// op(A) = Aᵀ.
    pub trans_a: bool,
    /// op(B) = Bᵀ.
    pub trans_b: bool,
    /// Rows of op(A) and C.
    pub m: usize,
    /// Columns of op(B) and C.
    pub n: usize,
    /// Columns of op(A), rows of op(B).
    pub k: usize,
    /// α.
    pub alpha: f32,
    /// Leading dimension of A as stored.
    pub lda: usize,
    /// Leading dimension of B as stored.
    pub ldb: usize,
    /// β (0: C is overwritten; 1: accumulated into).
    pub beta: f32,
    /// Leading dimension of C.
    pub ldc: usize,
    /// Whether cuBLAS may round A and B to TF32 (10-bit mantissa) on tensor cores
    /// (`CUBLAS_TF32_TENSOR_OP_MATH`); products still accumulate in f32.
    pub tf32: bool,
}

impl Sgemm {
    /// The call for row-major `c[m×n] = α·op(a)·op(b) + β·c`, where `a` is stored `[k×m]`
    /// when `trans_a` (else `[m×k]`) and `b` `[n×k]` when `trans_b` (else `[k×n]`), the
    /// convention of `nst_cpu::matmul`. **The call's first operand is `b`, its second `a`.**
    #[allow(clippy::too_many_arguments)]
    pub fn row_major(
        m: usize,
        k: usize,
        n: usize,
        trans_a: bool,
        trans_b: bool,
        alpha: f32,
        beta: f32,
    ) -> Sgemm {
        Sgemm::row_major_strided(
            m,
            k,
            n,
            (trans_a, if trans_a { m } else { k }),
            (trans_b, if trans_b { k } else { n }),
            n,
            alpha,
            beta,
        )
    }

    /// [`Sgemm::row_major`] for operands inside larger row-major matrices: `lda`, `ldb` and
    /// `ldc` are the row strides of `a`, `b` and `c` as stored (a band of columns of a wider
    /// matrix, for instance).
    #[allow(clippy::too_many_arguments)]
    pub fn row_major_strided(
        m: usize,
        k: usize,
        n: usize,
        (trans_a, lda): (bool, usize),
        (trans_b, ldb): (bool, usize),
        ldc: usize,
        alpha: f32,
        beta: f32,
    ) -> Sgemm {
        Sgemm {
            trans_a: trans_b,
            trans_b: trans_a,
            m: n,
            n: m,
            k,
            alpha,
            lda: ldb,
            ldb: lda,
            beta,
            ldc,
            tf32: false,
        }
    }

    /// The same call with TF32 allowed or not.
    pub fn with_tf32(self, tf32: bool) -> Sgemm {
        Sgemm { tf32, ..self }
    }

    /// Whether the leading dimensions satisfy cuBLAS's rules (it rejects the call otherwise),
    /// and every size and leading dimension fits the 32-bit `int` cuBLAS takes.
    pub fn is_valid(&self) -> bool {
        let a_rows = if self.trans_a { self.k } else { self.m };
        let b_rows = if self.trans_b { self.n } else { self.k };
        let ints = [self.m, self.n, self.k, self.lda, self.ldb, self.ldc];
        ints.iter().all(|&v| v <= i32::MAX as usize)
            && self.lda >= a_rows.max(1)
            && self.ldb >= b_rows.max(1)
            && self.ldc >= self.m.max(1)
    }

    /// The call as cudarc takes it.
    pub fn config(&self) -> GemmConfig<f32> {
        let op = |t: bool| {
            if t {
                cublasOperation_t::CUBLAS_OP_T
            } else {
                cublasOperation_t::CUBLAS_OP_N
            }
        };
        GemmConfig {
            transa: op(self.trans_a),
            transb: op(self.trans_b),
            m: self.m as i32,
            n: self.n as i32,
            k: self.k as i32,
            alpha: self.alpha,
            lda: self.lda as i32,
            ldb: self.ldb as i32,
            beta: self.beta,
            ldc: self.ldc as i32,
        }
    }

    /// Executes the call on host slices exactly as cuBLAS defines it (column-major, f64
    /// accumulation; with `tf32`, A and B rounded to TF32 first). Panics if the call is
    /// invalid or a slice is too short for it.
    pub fn run_reference(&self, a: &[f32], b: &[f32], c: &mut [f32]) {
        assert!(self.is_valid(), "invalid cuBLAS call {self:?}");
        let round = |v: f32| if self.tf32 { to_tf32(v) } else { v };
        let op_a = |i: usize, l: usize| {
            round(if self.trans_a {
                a[l + i * self.lda]
            } else {
                a[i + l * self.lda]
            })
        };
        let op_b = |l: usize, j: usize| {
            round(if self.trans_b {
                b[j + l * self.ldb]
            } else {
                b[l + j * self.ldb]
            })
        };
        for j in 0..self.n {
            for i in 0..self.m {
                let dot: f64 = (0..self.k)
                    .map(|l| op_a(i, l) as f64 * op_b(l, j) as f64)
                    .sum();
                let out = &mut c[i + j * self.ldc];
                let previous = if self.beta == 0.0 {
                    0.0
                } else {
                    self.beta * *out
                };
                *out = (self.alpha as f64 * dot) as f32 + previous;
            }
        }
    }
}

/// `v` rounded to TF32, as tensor cores read f32 operands: the mantissa's low 13 bits
/// dropped, rounding to nearest with ties away from zero (PTX `cvt.rna.tf32.f32`). NaN and
/// infinities pass unchanged.
pub fn to_tf32(v: f32) -> f32 {
    if !v.is_finite() {
        return v;
    }
    f32::from_bits((v.to_bits() + 0x1000) & !0x1fff)
}

#[cfg(test)]
mod tests {
    use super::{to_tf32, Sgemm};

    #[test]
    fn a_call_past_cublas_32_bit_sizes_is_invalid() {
        let big = i32::MAX as usize + 1;
        assert!(Sgemm::row_major(64, 4096, 64, false, true, 1.0, 0.0).is_valid());
        // A Gram matrix of 64 channels over more than 2³¹ − 1 pixels: k and a stride too big.
        assert!(!Sgemm::row_major(64, big, 64, false, true, 1.0, 0.0).is_valid());
        assert!(!Sgemm::row_major(1, 1, big, false, false, 1.0, 0.0).is_valid());
    }

    #[test]
    fn tf32_keeps_ten_mantissa_bits_rounding_half_away() {
        assert_eq!(to_tf32(1.0), 1.0);
        let ulp = 2f32.powi(-10); // TF32's spacing just above 1
        assert_eq!(to_tf32(1.0 + ulp), 1.0 + ulp);
        assert_eq!(to_tf32(1.0 + 0.49 * ulp), 1.0);
        assert_eq!(to_tf32(1.0 + 0.5 * ulp), 1.0 + ulp, "ties away from zero");
        assert_eq!(to_tf32(-1.0 - 0.5 * ulp), -1.0 - ulp);
        assert!(to_tf32(f32::NAN).is_nan());
        assert_eq!(to_tf32(f32::INFINITY), f32::INFINITY);
    }
}
