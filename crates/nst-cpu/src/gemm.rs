//! General matrix multiply, `C = β·C + α·op(A)·op(B)`, on row-major slices.
//!
//! The default backend is the `gemm` crate's f32 kernels (`gemm-f32`: runtime-dispatched
//! AVX2/AVX-512 kernels, rayon threads); with the `openblas` feature it is ndarray's
//! `general_mat_mul` on the system OpenBLAS. Both take arbitrary strides, which convolution
//! uses to multiply bands of a larger matrix in place.

use gemm_common::Parallelism;

/// How a matrix sits in memory: element (r, c) is at `offset + r·row_stride + c·col_stride`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatLayout {
    /// Number of rows.
    pub rows: usize,
    /// Number of columns.
    pub cols: usize,
    /// Distance between consecutive rows, in elements.
    pub row_stride: usize,
    /// Distance between consecutive columns, in elements.
    pub col_stride: usize,
}

impl MatLayout {
    /// A contiguous row-major `rows × cols` matrix.
    pub fn row_major(rows: usize, cols: usize) -> Self {
        Self {
            rows,
            cols,
            row_stride: cols,
            col_stride: 1,
        }
    }

    /// The transpose of this layout (same memory, rows and columns swapped).
    pub fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
        }
    }

    /// One past the largest element index this layout touches (0 for an empty matrix).
    fn extent(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            0
        } else {
            (self.rows - 1) * self.row_stride + (self.cols - 1) * self.col_stride + 1
        }
    }
}

/// `c = beta·c + alpha·a·b` for the given layouts. With `beta == 0` the old contents of `c`
/// are ignored (they may be garbage or NaN).
///
/// # Panics
/// If the shapes do not chain (`a.cols != b.rows`, `c` not `a.rows × b.cols`) or a slice is
/// shorter than its layout.
#[allow(clippy::too_many_arguments)]
pub fn gemm_strided(
    alpha: f32,
    a: &[f32],
    la: MatLayout,
    b: &[f32],
    lb: MatLayout,
    beta: f32,
    c: &mut [f32],
    lc: MatLayout,
) {
    assert_eq!(la.cols, lb.rows, "gemm: inner dimensions differ");
    assert_eq!((lc.rows, lc.cols), (la.rows, lb.cols), "gemm: output shape");
    assert!(a.len() >= la.extent() && b.len() >= lb.extent() && c.len() >= lc.extent());
    let (m, n, k) = (lc.rows, lc.cols, la.cols);
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        scale_in_place(c, lc, beta);
        return;
    }
    backend::gemm(alpha, a, la, b, lb, beta, c, lc);
}

fn scale_in_place(c: &mut [f32], lc: MatLayout, beta: f32) {
    for r in 0..lc.rows {
        for col in 0..lc.cols {
            let v = &mut c[r * lc.row_stride + col * lc.col_stride];
            *v = if beta == 0.0 { 0.0 } else { *v * beta };
        }
    }
}

/// `c[m×n] = a[m×k]·b[k×n]` (or with `a`/`b` transposed) on contiguous row-major slices;
/// with `accumulate` the product is added to `c`.
///
/// `trans_a` means `a` is stored as `k×m` and used transposed, likewise `trans_b`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    m: usize,
    k: usize,
    n: usize,
    trans_a: bool,
    trans_b: bool,
    accumulate: bool,
) {
    let la = if trans_a {
        MatLayout::row_major(k, m).t()
    } else {
        MatLayout::row_major(m, k)
    };
    let lb = if trans_b {
        MatLayout::row_major(n, k).t()
    } else {
        MatLayout::row_major(k, n)
    };
    let beta = if accumulate { 1.0 } else { 0.0 };
    gemm_strided(1.0, a, la, b, lb, beta, c, MatLayout::row_major(m, n));
}

/// Single-threaded row-major GEMM `dst[m×n] (row stride dst_rs) = a[m×k] · b[k×n]`, for
/// callers that parallelise over blocks themselves.
///
/// # Safety
/// The pointers must be valid for the extents the sizes and strides describe, and `dst` must
/// not overlap `a` or `b`.
#[allow(clippy::too_many_arguments)]
pub(crate) unsafe fn gemm_raw_serial(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    a: *const f32,
    a_rs: usize,
    b: *const f32,
    b_rs: usize,
) {
    // SAFETY: forwarded from the caller: row-major operands are (row stride, 1).
    unsafe { gemm_raw_serial_strided((m, n, k), (dst, dst_rs, 1), (a, a_rs, 1), (b, b_rs, 1)) }
}

/// `dst = a · b` for an `m × n` dst, `m × k` a and `k × n` b given by raw pointers with a
/// (row, column) stride for each, single-threaded: [`gemm_raw_serial`] for operands that are
/// not row-major (a transposed view is the same memory with the strides swapped).
///
/// # Safety
/// As [`gemm_raw_serial`]: every element the strides reach is inside its allocation, and
/// `dst` is not read or written by anyone else meanwhile.
pub(crate) unsafe fn gemm_raw_serial_strided(
    mnk: (usize, usize, usize),
    dst: (*mut f32, usize, usize),
    a: (*const f32, usize, usize),
    b: (*const f32, usize, usize),
) {
    // SAFETY: forwarded from the caller.
    unsafe { gemm_f32(mnk, dst, false, a, b, (0.0, 1.0), Parallelism::None) }
}

/// One product through the `gemm` crate's f32 kernels, `dst = α_g·dst + β_g·lhs·rhs` in that
/// crate's naming (α_g scales the old `dst`, which is read only when `read_dst`; β_g scales
/// the product), each operand a pointer with its (row, column) strides.
///
/// This is the `gemm` facade's `gemm::gemm` for f32 without its type dispatch, so that the
/// build compiles only the f32 kernels (`gemm-f32`). Like the facade, it hands the kernels a
/// column-major destination, their preference: where `dst`'s columns are closer together
/// than its rows it computes the transpose instead, dstᵀ = rhsᵀ·lhsᵀ (swapping the sizes,
/// the operands and each one's strides). The facade's other step, flipping negative
/// strides, has nothing to do here: strides are `usize`.
///
/// # Safety
/// As the crate's `gemm`: every element the sizes and strides reach lies inside its
/// allocation, and `dst` overlaps neither operand.
unsafe fn gemm_f32(
    (m, n, k): (usize, usize, usize),
    dst: (*mut f32, usize, usize),
    read_dst: bool,
    lhs: (*const f32, usize, usize),
    rhs: (*const f32, usize, usize),
    (alpha, beta): (f32, f32),
    parallelism: Parallelism,
) {
    let swap = |(p, rows, cols): (*const f32, usize, usize)| (p, cols, rows);
    let ((m, n), dst, lhs, rhs) = if dst.2 < dst.1 {
        ((n, m), (dst.0, dst.2, dst.1), swap(rhs), swap(lhs))
    } else {
        ((m, n), dst, lhs, rhs)
    };
    // SAFETY: forwarded from the caller; the transposed call reads and writes the same
    // elements.
    unsafe {
        gemm_f32::gemm::f32::get_gemm_fn()(
            m,
            n,
            k,
            dst.0,
            dst.2 as isize,
            dst.1 as isize,
            read_dst,
            lhs.0,
            lhs.2 as isize,
            lhs.1 as isize,
            rhs.0,
            rhs.2 as isize,
            rhs.1 as isize,
            alpha,
            beta,
            false,
            false,
            false,
            parallelism,
        )
    }
}

#[cfg(not(feature = "openblas"))]
mod backend {
    use super::{gemm_f32, MatLayout, Parallelism};

    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm(
        alpha: f32,
        a: &[f32],
        la: MatLayout,
        b: &[f32],
        lb: MatLayout,
        beta: f32,
        c: &mut [f32],
        lc: MatLayout,
    ) {
        let parallelism = if lc.rows * lc.cols * la.cols >= 64 * 64 * 64 {
            Parallelism::Rayon(0)
        } else {
            Parallelism::None
        };
        // SAFETY: the asserts in `gemm_strided` guarantee every index the layouts describe
        // lies inside the slices, and `c` is borrowed mutably so it cannot alias `a` or `b`.
        unsafe {
            gemm_f32(
                (lc.rows, lc.cols, la.cols),
                (c.as_mut_ptr(), lc.row_stride, lc.col_stride),
                beta != 0.0,
                (a.as_ptr(), la.row_stride, la.col_stride),
                (b.as_ptr(), lb.row_stride, lb.col_stride),
                // The crate's α scales the old C (our beta), its β the product (our alpha).
                (beta, alpha),
                parallelism,
            );
        }
    }
}

#[cfg(feature = "openblas")]
mod backend {
    use super::MatLayout;
    use ndarray::{ArrayView2, ArrayViewMut2, ShapeBuilder};

    #[allow(clippy::too_many_arguments)]
    pub(super) fn gemm(
        alpha: f32,
        a: &[f32],
        la: MatLayout,
        b: &[f32],
        lb: MatLayout,
        beta: f32,
        c: &mut [f32],
        lc: MatLayout,
    ) {
        fn view(s: &[f32], l: MatLayout) -> ArrayView2<'_, f32> {
            ArrayView2::from_shape((l.rows, l.cols).strides((l.row_stride, l.col_stride)), s)
                .expect("layout fits the slice")
        }
        let (av, bv) = (view(&a[..la.extent()], la), view(&b[..lb.extent()], lb));
        let ext = lc.extent();
        let mut cv = ArrayViewMut2::from_shape(
            (lc.rows, lc.cols).strides((lc.row_stride, lc.col_stride)),
            &mut c[..ext],
        )
        .expect("layout fits the slice");
        if beta == 0.0 {
            // BLAS reads C even when beta is 0 in some paths; make NaN garbage harmless.
            cv.fill(0.0);
        }
        ndarray::linalg::general_mat_mul(alpha, &av, &bv, beta, &mut cv);
    }
}
