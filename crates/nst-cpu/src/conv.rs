//! 2-D convolution (cross-correlation, as in every DL framework) on NCHW tensors:
//! forward, and the gradients with respect to the input, the weights and the bias.
//!
//! Method: im2col + GEMM, `y[C_out × P] = W[C_out × K] · cols[K × P]` with `K = C_in·kh·kw`
//! and P the output positions.
//! - Forward: the P columns are split into blocks of [`BLOCK_COLS`]; each rayon task unrolls
//!   its block (a cache-sized `K × 256` buffer) and multiplies it with a single-threaded GEMM.
//!   This keeps both cores busy on every layer, including the tall-skinny products of the
//!   first layers where a threaded GEMM stalls, and memory stays O(threads·K·256).
//! - Input gradient, stride 1: `dx = conv(dy, W̃)` with `W̃[ci, co, y, x] = W[co, ci, kh−1−y,
//!   kw−1−x]` and padding `k−1−pad`, the same fast forward path.
//! - Layers with few output positions, other strides, and the weight gradient: the column
//!   matrix is built for bands of output rows, bounded by [`MAX_COLS_ELEMS`] floats at any
//!   image size (a whole 2048² conv1_2 would need 9 GB), and multiplied by a threaded GEMM.
//!
//! Shapes: `x[N, C_in, H, W]`, `w[C_out, C_in, kh, kw]`, `b[C_out]`, `y[N, C_out, OH, OW]`
//! with `OH = (H + 2·pad − kh)/stride + 1` (floor).

use crate::gemm::{gemm_strided, MatLayout};
use crate::kernel_cache::Slot;
pub use crate::kernel_cache::Weights;
use crate::scratch::with_scratch;
use crate::shared_out::SharedOut;
use crate::winograd::Write;
pub use nst_params::{Conv2dParams, ConvAlgorithm};
use rayon::prelude::*;

/// Upper bound on the banded im2col buffer, in f32 elements (64 MiB).
pub const MAX_COLS_ELEMS: usize = 16 << 20;

/// Output positions per task in the block-parallel forward path.
pub const BLOCK_COLS: usize = 256;

/// Output rows per band so the column buffer stays under [`MAX_COLS_ELEMS`].
fn band_rows(p: &Conv2dParams) -> usize {
    let per_row = p.patch_len() * p.out_w();
    (MAX_COLS_ELEMS / per_row.max(1)).clamp(1, p.out_h().max(1))
}

fn check(p: &Conv2dParams, x: usize, w: usize, y: usize) {
    assert!(p.stride >= 1, "conv2d: stride must be at least 1");
    assert_eq!(x, p.input_len(), "conv2d: input length");
    assert_eq!(w, p.weight_len(), "conv2d: weight length");
    assert_eq!(y, p.output_len(), "conv2d: output length");
}
/// The output rows `[oy0, oy1)` of every band.
fn bands(p: &Conv2dParams) -> impl Iterator<Item = (usize, usize)> {
    let (oh, step) = (p.out_h(), band_rows(p));
    (0..oh)
        .step_by(step)
        .map(move |oy0| (oy0, (oy0 + step).min(oh)))
}

/// Unrolls the patches of output rows `[oy0, oy1)` of one image into `cols[K × band]`.
fn im2col(p: &Conv2dParams, x: &[f32], oy0: usize, oy1: usize, cols: &mut [f32]) {
    let (ow, band) = (p.out_w(), (oy1 - oy0) * p.out_w());
    let (kh, kw) = (p.kernel_h, p.kernel_w);
    cols.par_chunks_mut(band)
        .enumerate()
        .for_each(|(row, out)| {
            let (ci, ky, kx) = (row / (kh * kw), (row / kw) % kh, row % kw);
            let plane = &x[ci * p.in_h * p.in_w..(ci + 1) * p.in_h * p.in_w];
            for (r, oy) in (oy0..oy1).enumerate() {
                let dst = &mut out[r * ow..(r + 1) * ow];
                let iy = (oy * p.stride + ky) as isize - p.pad as isize;
                if iy < 0 || iy >= p.in_h as isize {
                    dst.fill(0.0);
                    continue;
                }
                let src = &plane[iy as usize * p.in_w..(iy as usize + 1) * p.in_w];
                for (ox, d) in dst.iter_mut().enumerate() {
                    let ix = (ox * p.stride + kx) as isize - p.pad as isize;
                    *d = if ix >= 0 && ix < p.in_w as isize {
                        src[ix as usize]
                    } else {
                        0.0
                    };
                }
            }
        });
}

/// `W̃[ci, co, y, x] = W[co, ci, kh−1−y, kw−1−x]`: the kernel of the input gradient as a
/// forward convolution (spatially flipped, channel axes swapped).
pub fn flip_kernel(p: &Conv2dParams, w: &[f32], flipped: &mut [f32]) {
    let (kh, kw, cin, cout) = (p.kernel_h, p.kernel_w, p.in_channels, p.out_channels);
    assert_eq!(w.len(), p.weight_len(), "flip_kernel: weight length");
    assert_eq!(flipped.len(), w.len(), "flip_kernel: output length");
    for co in 0..cout {
        for ci in 0..cin {
            for ky in 0..kh {
                for kx in 0..kw {
                    flipped[((ci * cout + co) * kh + (kh - 1 - ky)) * kw + (kw - 1 - kx)] =
                        w[((co * cin + ci) * kh + ky) * kw + kx];
                }
            }
        }
    }
}

/// Adds `cols[K × band]` back onto the input-shaped `dx` of one image (the adjoint of im2col).
fn col2im_add(p: &Conv2dParams, cols: &[f32], oy0: usize, oy1: usize, dx: &mut [f32]) {
    let (ow, band) = (p.out_w(), (oy1 - oy0) * p.out_w());
    let (kh, kw) = (p.kernel_h, p.kernel_w);
    // Each task owns one input channel plane, so the scatter has no races.
    dx.par_chunks_mut(p.in_h * p.in_w)
        .enumerate()
        .for_each(|(ci, plane)| {
            for ky in 0..kh {
                for kx in 0..kw {
                    let row = (ci * kh + ky) * kw + kx;
                    let src = &cols[row * band..(row + 1) * band];
                    for (r, oy) in (oy0..oy1).enumerate() {
                        let iy = (oy * p.stride + ky) as isize - p.pad as isize;
                        if iy < 0 || iy >= p.in_h as isize {
                            continue;
                        }
                        let dst = &mut plane[iy as usize * p.in_w..(iy as usize + 1) * p.in_w];
                        for (ox, &v) in src[r * ow..(r + 1) * ow].iter().enumerate() {
                            let ix = (ox * p.stride + kx) as isize - p.pad as isize;
                            if ix >= 0 && ix < p.in_w as isize {
                                dst[ix as usize] += v;
                            }
                        }
                    }
                }
            }
        });
}

/// `y = conv(x, w) + b` by `algo`: with [`ConvAlgorithm::Fastest`], Winograd F(4×4, 3×3)
/// where it pays (see [`use_winograd`]), otherwise [`conv2d_forward_direct`]. `w` is a slice,
/// or [`Weights`] with a cache of the kernels Winograd transforms.
pub fn conv2d_forward<'a>(
    p: &Conv2dParams,
    algo: ConvAlgorithm,
    x: &[f32],
    w: impl Into<Weights<'a>>,
    b: Option<&[f32]>,
    y: &mut [f32],
) {
    forward(p, algo, x, w.into(), b, false, y)
}

/// `y = max(conv(x, w) + b, 0)`, the convolution and its ReLU in one pass over the output
/// (fused into Winograd's output transform; after the product otherwise).
pub fn conv2d_relu_forward<'a>(
    p: &Conv2dParams,
    algo: ConvAlgorithm,
    x: &[f32],
    w: impl Into<Weights<'a>>,
    b: Option<&[f32]>,
    y: &mut [f32],
) {
    forward(p, algo, x, w.into(), b, true, y)
}

fn forward(
    p: &Conv2dParams,
    algo: ConvAlgorithm,
    x: &[f32],
    w: Weights,
    b: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) {
    if use_winograd(p, algo) {
        crate::winograd::conv3x3_forward(p, x, w, b, relu, y);
    } else {
        conv2d_forward_direct(p, x, w.values, b, y);
        if relu {
            crate::relu::relu_in_place(y);
        }
    }
}

/// Whether [`conv2d_forward`] takes the Winograd path: `algo` is
/// [`ConvAlgorithm::Fastest`] and the layer is 3×3, stride 1, padding 1 with at least
/// [`WINOGRAD_MIN_IN_CHANNELS`] input channels.
pub fn use_winograd(p: &Conv2dParams, algo: ConvAlgorithm) -> bool {
    algo == ConvAlgorithm::Fastest
        && crate::winograd::applies(p)
        && p.in_channels >= WINOGRAD_MIN_IN_CHANNELS
}

/// With fewer input channels (conv1_1: 3 colours) the transforms outweigh the products and
/// im2col with K = 27 is faster (11.6 vs 27.6 ms at 512², `cargo bench -p nst-benches`).
/// Few output channels are fine: conv1_1's input gradient (64 → 3) takes 39 ms by Winograd
/// against 130 ms by im2col, whose K = 576 column matrix is mostly memory traffic.
pub const WINOGRAD_MIN_IN_CHANNELS: usize = 16;

/// `y = conv(x, w) + b` by im2col + GEMM, for any kernel, stride and padding.
pub fn conv2d_forward_direct(
    p: &Conv2dParams,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    y: &mut [f32],
) {
    check(p, x.len(), w.len(), y.len());
    let (k, ohw) = (p.patch_len(), p.out_h() * p.out_w());
    let in_img = p.in_channels * p.in_h * p.in_w;
    let out_img = p.out_channels * ohw;
    if out_img == 0 {
        return;
    }
    if let Some(b) = b {
        assert_eq!(b.len(), p.out_channels, "conv2d: bias length");
    }
    if ohw < SMALL_LAYER_POSITIONS {
        conv2d_forward_banded(p, x, w, b, y);
        return;
    }
    for n in 0..p.batch {
        let xn = &x[n * in_img..][..in_img];
        let yn = SharedOut(y[n * out_img..][..out_img].as_mut_ptr());
        (0..ohw.div_ceil(BLOCK_COLS))
            .into_par_iter()
            .for_each(|blk| {
                let (p0, p1) = (blk * BLOCK_COLS, ((blk + 1) * BLOCK_COLS).min(ohw));
                let cols_n = p1 - p0;
                BLOCK_SCRATCH.with(|cell| {
                    let mut cols = cell.borrow_mut();
                    if cols.len() < k * cols_n {
                        cols.resize(k * cols_n, 0.0);
                    }
                    im2col_positions(p, xn, p0, p1, &mut cols[..k * cols_n]);
                    // SAFETY: blocks cover disjoint column ranges [p0, p1) of every output row,
                    // so no two tasks write the same element; the layout stays inside y[n].
                    unsafe {
                        let dst = yn.ptr().add(p0);
                        gemm_serial(
                            p.out_channels,
                            cols_n,
                            k,
                            dst,
                            ohw,
                            w,
                            k,
                            &cols[..k * cols_n],
                            cols_n,
                        );
                        if let Some(b) = b {
                            for (co, &bias) in b.iter().enumerate() {
                                let row = std::slice::from_raw_parts_mut(dst.add(co * ohw), cols_n);
                                row.iter_mut().for_each(|v| *v += bias);
                            }
                        }
                    }
                });
            });
    }
}

/// Below this many output positions (e.g. conv5_x at 256², 16×16) there are too few column
/// blocks to share out, and each would stream the whole weight matrix: a threaded GEMM over
/// the output channels does better (measured 109 vs 70 GFLOP/s on conv5_1 at 256²).
const SMALL_LAYER_POSITIONS: usize = 512;

/// Forward through banded im2col and the threaded GEMM (see [`SMALL_LAYER_POSITIONS`]).
fn conv2d_forward_banded(p: &Conv2dParams, x: &[f32], w: &[f32], b: Option<&[f32]>, y: &mut [f32]) {
    let (k, ohw) = (p.patch_len(), p.out_h() * p.out_w());
    let (in_img, out_img) = (p.in_channels * p.in_h * p.in_w, p.out_channels * ohw);
    with_scratch(k * band_rows(p) * p.out_w(), |scratch| {
        for n in 0..p.batch {
            let (xn, yn) = (&x[n * in_img..][..in_img], &mut y[n * out_img..][..out_img]);
            for (oy0, oy1) in bands(p) {
                let band = (oy1 - oy0) * p.out_w();
                let cols = &mut scratch[..k * band];
                im2col(p, xn, oy0, oy1, cols);
                let lc = MatLayout {
                    rows: p.out_channels,
                    cols: band,
                    row_stride: ohw,
                    col_stride: 1,
                };
                let lw = MatLayout::row_major(p.out_channels, k);
                gemm_strided(
                    1.0,
                    w,
                    lw,
                    cols,
                    MatLayout::row_major(k, band),
                    0.0,
                    &mut yn[oy0 * p.out_w()..],
                    lc,
                );
            }
            if let Some(b) = b {
                for (plane, &bias) in yn.chunks_mut(ohw).zip(b) {
                    plane.iter_mut().for_each(|v| *v += bias);
                }
            }
        }
    });
}

thread_local! {
    /// Per-thread im2col block buffer: tasks on one thread run one at a time, and nothing
    /// inside a task re-enters this code.
    static BLOCK_SCRATCH: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// `cols[K × (p1−p0)]` for output positions `[p0, p1)` (row-major over (oy, ox)).
fn im2col_positions(p: &Conv2dParams, x: &[f32], p0: usize, p1: usize, cols: &mut [f32]) {
    let (ow, n) = (p.out_w(), p1 - p0);
    let (kh, kw) = (p.kernel_h, p.kernel_w);
    for (row, out) in cols.chunks_mut(n).enumerate() {
        let (ci, ky, kx) = (row / (kh * kw), (row / kw) % kh, row % kw);
        let plane = &x[ci * p.in_h * p.in_w..(ci + 1) * p.in_h * p.in_w];
        let mut pos = p0;
        while pos < p1 {
            let (oy, ox0) = (pos / ow, pos % ow);
            let run = (ow - ox0).min(p1 - pos);
            let dst = &mut out[pos - p0..pos - p0 + run];
            let iy = (oy * p.stride + ky) as isize - p.pad as isize;
            if iy < 0 || iy >= p.in_h as isize {
                dst.fill(0.0);
            } else {
                let src = &plane[iy as usize * p.in_w..(iy as usize + 1) * p.in_w];
                for (i, d) in dst.iter_mut().enumerate() {
                    let ix = ((ox0 + i) * p.stride + kx) as isize - p.pad as isize;
                    *d = if ix >= 0 && ix < p.in_w as isize {
                        src[ix as usize]
                    } else {
                        0.0
                    };
                }
            }
            pos += run;
        }
    }
}

/// Single-threaded `dst[m × n] (row stride dst_rs) = a[m × k] · b[k × n]`, row-major inputs.
///
/// # Safety
/// `dst` must be valid for writes of m rows of n elements spaced `dst_rs` apart.
#[allow(clippy::too_many_arguments)]
unsafe fn gemm_serial(
    m: usize,
    n: usize,
    k: usize,
    dst: *mut f32,
    dst_rs: usize,
    a: &[f32],
    a_rs: usize,
    b: &[f32],
    b_rs: usize,
) {
    assert!(a.len() >= (m - 1) * a_rs + k && b.len() >= (k - 1) * b_rs + n);
    // SAFETY: bounds asserted above; the caller guarantees dst.
    unsafe {
        crate::gemm::gemm_raw_serial(m, n, k, dst, dst_rs, a.as_ptr(), a_rs, b.as_ptr(), b_rs)
    }
}

/// The kernel the input gradient convolves with ([`flip_kernel`] into a new buffer).
fn flipped_kernel(p: &Conv2dParams, w: &[f32]) -> Vec<f32> {
    let mut flipped = vec![0.0f32; w.len()];
    flip_kernel(p, w, &mut flipped);
    flipped
}

/// `dx += ∂L/∂x` given `dy = ∂L/∂y`: [`conv2d_backward_input`] adding into `dx`, for an
/// activation that already has a gradient from another use (a style or content loss), so
/// that the backward pass needs no second buffer of its size. Winograd adds in its output
/// transform; the other algorithms go through a temporary.
pub fn conv2d_backward_input_accumulate<'a>(
    p: &Conv2dParams,
    algo: ConvAlgorithm,
    dy: &[f32],
    w: impl Into<Weights<'a>>,
    dx: &mut [f32],
) {
    let w = w.into();
    check(p, dx.len(), w.values.len(), dy.len());
    if let Some(q) = winograd_input_gradient(p, algo) {
        input_gradient_by_winograd(p, &q, dy, w, Write::Add, dx);
        return;
    }
    let mut gradient = vec![0.0f32; dx.len()];
    conv2d_backward_input(p, algo, dy, w, &mut gradient);
    crate::elementwise::add_assign(dx, &gradient);
}

/// The input gradient of `p` as a forward convolution, where that goes by Winograd.
pub(crate) fn winograd_input_gradient(
    p: &Conv2dParams,
    algo: ConvAlgorithm,
) -> Option<Conv2dParams> {
    p.input_gradient_as_forward()
        .filter(|q| use_winograd(q, algo))
}

/// The input gradient of `p` as the Winograd convolution `q` of `dy` with the flipped kernel,
/// whose transform `w`'s cache keeps (in its input-gradient slot) where it has one.
fn input_gradient_by_winograd(
    p: &Conv2dParams,
    q: &Conv2dParams,
    dy: &[f32],
    w: Weights,
    write: Write,
    dx: &mut [f32],
) {
    w.with_transformed(
        Slot::InputGradient,
        q,
        |u| crate::winograd::transform_kernels(q, &flipped_kernel(p, w.values), u),
        |u| crate::winograd::conv3x3_transformed(q, dy, u, None, write, dx),
    );
}

/// `dx = ∂L/∂x` given `dy = ∂L/∂y` (overwrites `dx`). At stride 1 this is a forward
/// convolution of `dy` with the flipped kernel, by `algo`
/// ([`Conv2dParams::input_gradient_as_forward`]); otherwise banded im2col, transposed.
pub fn conv2d_backward_input<'a>(
    p: &Conv2dParams,
    algo: ConvAlgorithm,
    dy: &[f32],
    w: impl Into<Weights<'a>>,
    dx: &mut [f32],
) {
    let w = w.into();
    check(p, dx.len(), w.values.len(), dy.len());
    if let Some(q) = winograd_input_gradient(p, algo) {
        input_gradient_by_winograd(p, &q, dy, w, Write::Store, dx);
        return;
    }
    if let Some(q) = p.input_gradient_as_forward() {
        conv2d_forward_direct(&q, dy, &flipped_kernel(p, w.values), None, dx);
        return;
    }
    let w = w.values;
    dx.fill(0.0);
    let (k, ohw) = (p.patch_len(), p.out_h() * p.out_w());
    let in_img = p.in_channels * p.in_h * p.in_w;
    let out_img = p.out_channels * ohw;
    if out_img == 0 {
        return;
    }
    with_scratch(k * band_rows(p) * p.out_w(), |scratch| {
        for n in 0..p.batch {
            let (dyn_, dxn) = (
                &dy[n * out_img..][..out_img],
                &mut dx[n * in_img..][..in_img],
            );
            for (oy0, oy1) in bands(p) {
                let band = (oy1 - oy0) * p.out_w();
                let dcols = &mut scratch[..k * band];
                // dcols[K × band] = Wᵀ[K × C_out] · dy[:, band]
                let lb = MatLayout {
                    rows: p.out_channels,
                    cols: band,
                    row_stride: ohw,
                    col_stride: 1,
                };
                gemm_strided(
                    1.0,
                    w,
                    MatLayout::row_major(p.out_channels, k).t(),
                    &dyn_[oy0 * p.out_w()..],
                    lb,
                    0.0,
                    dcols,
                    MatLayout::row_major(k, band),
                );
                col2im_add(p, dcols, oy0, oy1, dxn);
            }
        }
    });
}

/// `dw += ∂L/∂w` and, when given, `db += ∂L/∂b` (both accumulate, so zero them first).
pub fn conv2d_backward_weight(
    p: &Conv2dParams,
    x: &[f32],
    dy: &[f32],
    dw: &mut [f32],
    db: Option<&mut [f32]>,
) {
    check(p, x.len(), dw.len(), dy.len());
    let (k, ohw) = (p.patch_len(), p.out_h() * p.out_w());
    let in_img = p.in_channels * p.in_h * p.in_w;
    let out_img = p.out_channels * ohw;
    if out_img == 0 {
        return;
    }
    with_scratch(k * band_rows(p) * p.out_w(), |scratch| {
        for n in 0..p.batch {
            let (xn, dyn_) = (&x[n * in_img..][..in_img], &dy[n * out_img..][..out_img]);
            for (oy0, oy1) in bands(p) {
                let band = (oy1 - oy0) * p.out_w();
                let cols = &mut scratch[..k * band];
                im2col(p, xn, oy0, oy1, cols);
                // dw[C_out × K] += dy[:, band] · colsᵀ
                let la = MatLayout {
                    rows: p.out_channels,
                    cols: band,
                    row_stride: ohw,
                    col_stride: 1,
                };
                gemm_strided(
                    1.0,
                    &dyn_[oy0 * p.out_w()..],
                    la,
                    cols,
                    MatLayout::row_major(k, band).t(),
                    1.0,
                    dw,
                    MatLayout::row_major(p.out_channels, k),
                );
            }
        }
    });
    if let Some(db) = db {
        assert_eq!(db.len(), p.out_channels, "conv2d: bias gradient length");
        db.par_iter_mut().enumerate().for_each(|(co, d)| {
            let s: f64 = (0..p.batch)
                .flat_map(|n| dy[n * out_img + co * ohw..][..ohw].iter())
                .map(|&v| v as f64)
                .sum();
            *d += s as f32;
        });
    }
}
