//! Winograd F(4×4, 3×3) convolution for 3×3, stride-1, padding-1 layers (every VGG-19 conv,
//! and the input gradient of each, which is the same shape of convolution).
//!
//! A 4×4 block of outputs needs a 6×6 block of input. Lavin & Gray (2016) compute it as
//! `Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A`: 36 multiplies per input channel instead of 144, a 4×
//! saving. Summed over input channels, the element-wise products become 36 independent
//! matrix products, one per position ξ of the 6×6 transformed tile:
//!
//! `M[ξ] (C_out × tiles) = U[ξ] (C_out × C_in) · V[ξ] (C_in × tiles)`
//!
//! with `U = G g Gᵀ` (the kernel transform, per output/input channel pair) and `V = Bᵀ d B`
//! (the input transform, per input channel and tile). The transforms run 8 tiles at a time
//! (lanes) so the compiler can vectorise them across tiles.
//!
//! Memory: tiles are processed in chunks of about [`CHUNK_FLOATS`] of V and M (at least 64
//! tiles, 9.4 MiB for the 512-channel layers), so no
//! layer at any image size needs more than that beyond its input and output.
//!
//! Speed: the transforms are memory-bound, and x86-64's baseline (SSE2) needs two registers
//! for 8 lanes and scalar moves to put 8 tiles' inputs into lanes. Where the CPU has AVX2
//! ([`crate::simd`]), the per-channel transforms are compiled for it and move whole rows of
//! 8 tiles in and out of lanes with shuffles (`avx2`), with the same arithmetic, so the
//! same bits. At 512² (criterion `conv512/forward`, best of 3, before → after): conv1_2
//! 65.8 → 53.6 ms, conv2_2 45.5 → 39.5, conv3_x 39.0 → 34.9, conv4_x 38.6 → 36.5.
//!
//! Accuracy: the transforms use the points 0, ±1, ±2 (and ∞), whose constants are exact in
//! f32 except 1/6, 1/12, 1/24; the tests hold every VGG-19 layer shape to 1e-4 of the direct
//! convolution, relative to the largest output.

use crate::conv::Conv2dParams;
use crate::gemm::gemm_raw_serial;
use crate::kernel_cache::{Slot, Weights};
use crate::scratch::with_scratch;
use crate::shared_out::SharedOut;
use rayon::prelude::*;

/// Output block side m in F(m×m, 3×3).
const M: usize = 4;
/// Input tile side α = m + 3 − 1.
const A: usize = 6;
/// Positions per transformed tile (α²): the number of independent matrix products.
const XI: usize = A * A;
/// Tiles transformed together (SIMD lanes).
const LANES: usize = 8;
/// Target size of the V and M chunk buffers together, in f32 elements (4 MiB). Smaller
/// chunks stay in cache between the transforms and the products: at 16 MiB conv1_2 at 512²
/// took 209 ms, at 4 MiB 115 ms (conv4_x 88 → 80 ms); chunks of under `MIN_CHUNK_TILES`
/// make the products too thin.
pub const CHUNK_FLOATS: usize = 1 << 20;
/// The fewest tiles per chunk (the 512-channel layers would otherwise get 28).
const MIN_CHUNK_TILES: usize = 64;

/// Whether [`conv3x3_forward`] computes this convolution: 3×3 kernel, stride 1, padding 1.
pub fn applies(p: &Conv2dParams) -> bool {
    p.kernel_h == 3 && p.kernel_w == 3 && p.stride == 1 && p.pad == 1
}

/// 1-D input transform `Bᵀ d` on 6 rows of lanes.
#[inline(always)]
fn input_1d(d: [[f32; LANES]; A]) -> [[f32; LANES]; A] {
    let mut r = [[0.0; LANES]; A];
    for l in 0..LANES {
        let [d0, d1, d2, d3, d4, d5] = [d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]];
        r[0][l] = 4.0 * d0 - 5.0 * d2 + d4;
        r[1][l] = -4.0 * (d1 + d2) + d3 + d4;
        r[2][l] = 4.0 * (d1 - d2) - d3 + d4;
        r[3][l] = 2.0 * (d3 - d1) - d2 + d4;
        r[4][l] = 2.0 * (d1 - d3) - d2 + d4;
        r[5][l] = 4.0 * d1 - 5.0 * d3 + d5;
    }
    r
}

/// `dst[..lanes] = src[..lanes]`, with a fixed-length copy in the usual full case (a
/// variable-length `copy_from_slice` becomes a `memmove` call per 8 floats: 8% of a run).
#[inline(always)]
fn store_lanes(dst: &mut [f32], src: &[f32; LANES], lanes: usize) {
    if lanes == LANES {
        // An array assignment: one vector move (`copy_from_slice` could still become a call
        // to memcpy, 2% of an iteration).
        let dst: &mut [f32; LANES] = (&mut dst[..LANES]).try_into().unwrap();
        *dst = *src;
    } else {
        dst[..lanes].copy_from_slice(&src[..lanes]);
    }
}

/// `dst[..lanes] = src[..lanes]` (see [`store_lanes`]).
#[inline(always)]
fn load_lanes(dst: &mut [f32; LANES], src: &[f32], lanes: usize) {
    if lanes == LANES {
        *dst = src[..LANES].try_into().unwrap();
    } else {
        dst[..lanes].copy_from_slice(&src[..lanes]);
    }
}

/// 1-D output transform `Aᵀ m` on 6 rows of lanes → 4 rows.
#[inline(always)]
fn output_1d(m: [[f32; LANES]; A]) -> [[f32; LANES]; M] {
    let mut o = [[0.0; LANES]; M];
    for l in 0..LANES {
        let [m0, m1, m2, m3, m4, m5] = [m[0][l], m[1][l], m[2][l], m[3][l], m[4][l], m[5][l]];
        let (s12, d12, s34, d34) = (m1 + m2, m1 - m2, m3 + m4, m3 - m4);
        o[0][l] = m0 + s12 + s34;
        o[1][l] = d12 + 2.0 * d34;
        o[2][l] = s12 + 4.0 * s34;
        o[3][l] = d12 + 8.0 * d34 + m5;
    }
    o
}

/// 1-D kernel transform `G g` (3 taps → 6), in f64 so U carries one rounding only.
///
/// It divides, where multiplying by reciprocals would be faster (conv5_1 13.5 → 11.7 ms at
/// 512², with the transform vectorised across channels): reciprocals moved a few U values by
/// one f32 ulp, and the L-BFGS reference trace, which amplifies such noise about 2× per
/// iteration, then left its 1e-3 bound at iterate 5 (1.56e-3).
fn kernel_1d(g: [f64; 3]) -> [f64; A] {
    let [g0, g1, g2] = g;
    [
        g0 / 4.0,
        -(g0 + g1 + g2) / 6.0,
        -(g0 - g1 + g2) / 6.0,
        g0 / 24.0 + g1 / 12.0 + g2 / 6.0,
        g0 / 24.0 - g1 / 12.0 + g2 / 6.0,
        g2,
    ]
}

/// Input channels transformed together: one 64-byte cache line of each U row per write.
/// (Writing one value per row at a time, rows 2 KiB apart at 512 channels, all fell in two L1
/// sets and thrashed: 4% of an iteration.)
const KERNEL_BLOCK: usize = 16;

/// `U[co][ξ][ci] = (G g Gᵀ)[ξ]` for every output/input channel pair.
pub(crate) fn transform_kernels(p: &Conv2dParams, w: &[f32], u: &mut [f32]) {
    let cin = p.in_channels;
    u.par_chunks_mut(XI * cin)
        .zip(w.par_chunks(cin * 9))
        .for_each(|(u_co, w_co)| {
            for c0 in (0..cin).step_by(KERNEL_BLOCK) {
                let cn = KERNEL_BLOCK.min(cin - c0);
                let mut block = [[0.0f32; KERNEL_BLOCK]; XI];
                for c in 0..cn {
                    let g = &w_co[(c0 + c) * 9..][..9];
                    // Columns first: t[i][x] = (G g)[i][x], then rows: U[i][j] = (t Gᵀ)[i][j].
                    let cols: [[f64; A]; 3] = std::array::from_fn(|x| {
                        kernel_1d([g[x] as f64, g[3 + x] as f64, g[6 + x] as f64])
                    });
                    for i in 0..A {
                        let row = kernel_1d([cols[0][i], cols[1][i], cols[2][i]]);
                        for (j, v) in row.into_iter().enumerate() {
                            block[i * A + j][c] = v as f32;
                        }
                    }
                }
                for (xi, b) in block.iter().enumerate() {
                    if cn == KERNEL_BLOCK {
                        // Fixed length: a vector copy, not a call to memcpy per 16 floats.
                        let dst: &mut [f32; KERNEL_BLOCK] = (&mut u_co[xi * cin + c0..]
                            [..KERNEL_BLOCK])
                            .try_into()
                            .unwrap();
                        *dst = *b;
                    } else {
                        u_co[xi * cin + c0..][..cn].copy_from_slice(&b[..cn]);
                    }
                }
            }
        });
}

/// Output tiles of the whole batch.
pub(crate) fn tile_count(p: &Conv2dParams) -> usize {
    let (down, across) = tile_grid(p);
    p.batch * down * across
}

/// The tile grid of one image: (tiles down, tiles across).
fn tile_grid(p: &Conv2dParams) -> (usize, usize) {
    (p.out_h().div_ceil(M), p.out_w().div_ceil(M))
}

/// Inputs spanned by a row of [`LANES`] tiles side by side: 4·7 + 6 = 34.
const SPAN: usize = M * (LANES - 1) + A;
/// Inputs read for such a row: [`SPAN`] and 2 more, which the AVX2 path loads (as part of
/// whole vectors) but does not use.
const SPAN_READ: usize = SPAN + 2;

/// The 6×6 input patches of 8 tiles, one lane per tile: `[i][j][lane]`.
type Patches = [[[f32; LANES]; A]; A];

/// Writes into `d` the 6×6 input patches of [`LANES`] tiles side by side in one tile row,
/// whose top-left input is at `(y0, x0)` (−1 at the top or left edge), zero outside the image.
///
/// Each of the 6 input rows is read once as contiguous floats and spread over the lanes
/// (`d[i][j][l] = row[4·l + j]`); with `AVX2`, by [`avx2::spread_row`]. The general gather,
/// lane by lane with a bounds test on every element, was 8% of an iteration at 512².
#[inline(always)]
fn gather_tile_row<const AVX2: bool>(
    plane: &[f32],
    h: usize,
    w: usize,
    y0: isize,
    x0: isize,
    d: &mut Patches,
) {
    // Filled in place, not returned: a returned 1 KiB array was a memset and a memcpy per
    // 8 tiles.
    for (i, d_row) in d.iter_mut().enumerate() {
        let iy = y0 + i as isize;
        if iy < 0 || iy >= h as isize {
            *d_row = [[0.0; LANES]; A];
            continue;
        }
        let src = &plane[iy as usize * w..][..w];
        // At the edges, the row comes from this buffer, zeroed there only, with zeros outside
        // the image. Copies into it have fixed lengths where they can (a call to memcpy per
        // row had cost conv3_x–conv5_1 2–6% at 512²: in the 64- and 32-wide layers every
        // group touches an edge).
        let mut edge: [f32; 2 * SPAN_READ];
        let row: &[f32] = if x0 >= 0 && x0 as usize + SPAN_READ <= w {
            &src[x0 as usize..][..SPAN_READ]
        } else if x0 < 0 && SPAN_READ - 1 <= w {
            // Left edge (x0 = −1): a zero, then the first 35 inputs.
            edge = [0.0; 2 * SPAN_READ];
            edge[1..SPAN_READ].copy_from_slice(&src[..SPAN_READ - 1]);
            &edge[..SPAN_READ]
        } else if x0 >= 0 && SPAN_READ <= w {
            // Right edge: the last 36 inputs then zeros, read from n = w − x0 before the zeros.
            edge = [0.0; 2 * SPAN_READ];
            edge[..SPAN_READ].copy_from_slice(&src[w - SPAN_READ..]);
            &edge[SPAN_READ - (w - x0 as usize)..][..SPAN_READ]
        } else {
            // Both edges (a row narrower than 36): what is inside, at its offset.
            edge = [0.0; 2 * SPAN_READ];
            let end = (x0 + SPAN_READ as isize) as usize;
            let (lo, hi) = (x0.max(0) as usize, end.min(w));
            if lo < hi {
                edge[(lo as isize - x0) as usize..][..hi - lo].copy_from_slice(&src[lo..hi]);
            }
            &edge[..SPAN_READ]
        };
        let row: &[f32; SPAN_READ] = row.try_into().unwrap();
        #[cfg(target_arch = "x86_64")]
        if AVX2 {
            // SAFETY: only instantiated with AVX2 = true inside `transform_input_plane_avx2`,
            // which runs only where AVX2 was detected.
            unsafe { avx2::spread_row(row, d_row) };
            continue;
        }
        for (j, dj) in d_row.iter_mut().enumerate() {
            for (l, v) in dj.iter_mut().enumerate() {
                *v = row[M * l + j];
            }
        }
    }
}

/// Writes into `d` the patches of the `lanes` tiles from `g0`, wherever they lie (across tile
/// rows, or fewer than [`LANES`]): one element at a time.
#[inline(always)]
fn gather_tiles(
    plane: &[f32],
    h: usize,
    w: usize,
    tw: usize,
    g0: usize,
    lanes: usize,
    d: &mut Patches,
) {
    *d = [[[0.0; LANES]; A]; A];
    for l in 0..lanes {
        let (ty, tx) = ((g0 + l) / tw, (g0 + l) % tw);
        let (y0, x0) = ((ty * M) as isize - 1, (tx * M) as isize - 1);
        for (i, d_row) in d.iter_mut().enumerate() {
            let iy = y0 + i as isize;
            if iy < 0 || iy >= h as isize {
                continue;
            }
            let src = &plane[iy as usize * w..][..w];
            for (j, dj) in d_row.iter_mut().enumerate() {
                let ix = x0 + j as isize;
                if ix >= 0 && ix < w as isize {
                    dj[l] = src[ix as usize];
                }
            }
        }
    }
}

/// One image plane and the chunk of its tiles a transform works on.
#[derive(Clone, Copy)]
struct PlaneTiles {
    /// The plane's height and width: the input's for the input transform, the output's for
    /// the output transform.
    h: usize,
    w: usize,
    /// Tiles across.
    tw: usize,
    /// The chunk: tiles `[t0, t1)`, numbered row by row.
    t0: usize,
    t1: usize,
}

/// `V[c][ξ][t − t0]` for tiles `[t0, t1)` of the single-image input `x`.
fn transform_inputs(p: &Conv2dParams, x: &[f32], t0: usize, t1: usize, v: &mut [f32]) {
    let (h, w) = (p.in_h, p.in_w);
    let g = PlaneTiles {
        h,
        w,
        tw: tile_grid(p).1,
        t0,
        t1,
    };
    v.par_chunks_mut(XI * (t1 - t0))
        .zip(x.par_chunks(h * w))
        .for_each(|(v_c, plane)| transform_input_plane(plane, g, v_c));
}

/// [`transform_inputs`] for one channel: `v_c[ξ][t − t0]` from the `h × w` plane.
fn transform_input_plane(plane: &[f32], g: PlaneTiles, v_c: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx2() {
        // SAFETY: AVX2 is present.
        return unsafe { transform_input_plane_avx2(plane, g, v_c) };
    }
    transform_input_plane_with::<false>(plane, g, v_c)
}

/// [`transform_input_plane_with`] compiled for AVX2: the 8 lanes are one register (two on
/// x86-64's baseline, SSE2), and rows are spread over lanes with shuffles.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transform_input_plane_avx2(plane: &[f32], g: PlaneTiles, v_c: &mut [f32]) {
    transform_input_plane_with::<true>(plane, g, v_c)
}

#[inline(always)]
fn transform_input_plane_with<const AVX2: bool>(plane: &[f32], g: PlaneTiles, v_c: &mut [f32]) {
    let PlaneTiles { h, w, tw, t0, t1 } = g;
    let tc = t1 - t0;
    // Work arrays, overwritten for every 8 tiles.
    let (mut d, mut t) = ([[[0.0f32; LANES]; A]; A], [[[0.0f32; LANES]; A]; A]);
    for g0 in (t0..t1).step_by(LANES) {
        let lanes = (t1 - g0).min(LANES);
        let (ty, tx) = (g0 / tw, g0 % tw);
        if lanes == LANES && tx + LANES <= tw {
            let (y0, x0) = ((ty * M) as isize - 1, (tx * M) as isize - 1);
            gather_tile_row::<AVX2>(plane, h, w, y0, x0, &mut d);
        } else {
            gather_tiles(plane, h, w, tw, g0, lanes, &mut d);
        }
        // Bᵀ d along i for every column j, then (·) B along j for every row i.
        for j in 0..A {
            let col = input_1d(std::array::from_fn(|i| d[i][j]));
            for i in 0..A {
                t[i][j] = col[i];
            }
        }
        for (i, t_row) in t.iter().enumerate() {
            let row = input_1d(*t_row);
            for (j, r) in row.iter().enumerate() {
                store_lanes(&mut v_c[(i * A + j) * tc + (g0 - t0)..], r, lanes);
            }
        }
    }
}

/// What the output transform does with each result `v` (the convolution at one output).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Write {
    /// `y = v + b`.
    Store,
    /// `y = max(v + b, 0)`.
    StoreRelu,
    /// `y += v` (no bias): accumulating an input gradient into one that already exists.
    Add,
}

/// Writes `Aᵀ M A` for tiles `[t0, t1)` into the single-image output `y` as `write` says.
#[allow(clippy::too_many_arguments)]
fn transform_outputs(
    p: &Conv2dParams,
    m: &[f32],
    b: Option<&[f32]>,
    write: Write,
    t0: usize,
    t1: usize,
    y: &mut [f32],
) {
    let (oh, ow) = (p.out_h(), p.out_w());
    let g = PlaneTiles {
        h: oh,
        w: ow,
        tw: tile_grid(p).1,
        t0,
        t1,
    };
    y.par_chunks_mut(oh * ow)
        .zip(m.par_chunks(XI * (t1 - t0)))
        .enumerate()
        .for_each(|(co, (plane, m_co))| {
            let bias = b.map_or(0.0, |b| b[co]);
            transform_output_plane(m_co, (bias, write), g, plane);
        });
}

/// [`transform_outputs`] for one output channel: `m_co[ξ][t − t0]` into the `oh × ow` plane,
/// with `(bias, write)` saying how each value is written.
fn transform_output_plane(m_co: &[f32], how: (f32, Write), g: PlaneTiles, plane: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if crate::simd::avx2() {
        // SAFETY: AVX2 is present.
        return unsafe { transform_output_plane_avx2(m_co, how, g, plane) };
    }
    transform_output_plane_with::<false>(m_co, how, g, plane)
}

/// [`transform_output_plane_with`] compiled for AVX2, as [`transform_input_plane_avx2`].
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn transform_output_plane_avx2(
    m_co: &[f32],
    how: (f32, Write),
    g: PlaneTiles,
    plane: &mut [f32],
) {
    transform_output_plane_with::<true>(m_co, how, g, plane)
}

#[inline(always)]
fn transform_output_plane_with<const AVX2: bool>(
    m_co: &[f32],
    (bias, write): (f32, Write),
    g: PlaneTiles,
    plane: &mut [f32],
) {
    let PlaneTiles {
        h: oh,
        w: ow,
        tw,
        t0,
        t1,
    } = g;
    let tc = t1 - t0;
    // Work arrays, overwritten for every 8 tiles.
    let (mut mm, mut t) = ([[[0.0f32; LANES]; A]; A], [[[0.0f32; LANES]; A]; M]);
    let mut row = [0.0f32; M * LANES];
    for g0 in (t0..t1).step_by(LANES) {
        let lanes = (t1 - g0).min(LANES);
        for (i, mm_row) in mm.iter_mut().enumerate() {
            for (j, mij) in mm_row.iter_mut().enumerate() {
                load_lanes(mij, &m_co[(i * A + j) * tc + (g0 - t0)..], lanes);
            }
        }
        // Aᵀ m along i for every column j (6 → 4 rows), then along j (6 → 4 columns).
        for j in 0..A {
            let col = output_1d(std::array::from_fn(|i| mm[i][j]));
            for i in 0..M {
                t[i][j] = col[i];
            }
        }
        let out: [[[f32; LANES]; M]; M] = std::array::from_fn(|i| output_1d(t[i]));
        let (ty, tx) = (g0 / tw, g0 % tw);
        let (y0, x0) = (ty * M, tx * M);
        if lanes == LANES && tx + LANES <= tw && y0 + M <= oh && x0 + M * LANES <= ow {
            // 8 whole tiles side by side: each output row is 32 contiguous floats.
            for (i, out_row) in out.iter().enumerate() {
                let dst: &mut [f32; M * LANES] = (&mut plane[(y0 + i) * ow + x0..][..M * LANES])
                    .try_into()
                    .unwrap();
                interleave_row::<AVX2>(out_row, &mut row);
                write_row(dst, &row, bias, write);
            }
            continue;
        }
        for l in 0..lanes {
            let (ty, tx) = ((g0 + l) / tw, (g0 + l) % tw);
            let (y0, x0) = (ty * M, tx * M);
            for (i, out_row) in out.iter().enumerate().take(oh - y0) {
                let dst = &mut plane[(y0 + i) * ow..][..ow];
                let n = M.min(ow - x0);
                let row: [f32; M] = std::array::from_fn(|j| out_row[j][l]);
                write_row(&mut dst[x0..][..n], &row[..n], bias, write);
            }
        }
    }
}

/// `row[4·l + j] = out_row[j][l]`: one output row of 8 tiles side by side, in image order;
/// with `AVX2`, by [`avx2::interleave_row`].
#[inline(always)]
fn interleave_row<const AVX2: bool>(out_row: &[[f32; LANES]; M], row: &mut [f32; M * LANES]) {
    #[cfg(target_arch = "x86_64")]
    if AVX2 {
        // SAFETY: only instantiated with AVX2 = true inside `transform_output_plane_avx2`,
        // which runs only where AVX2 was detected.
        return unsafe { avx2::interleave_row(out_row, row) };
    }
    *row = std::array::from_fn(|k| out_row[k % M][k / M]);
}

/// `dst = src` combined with the bias as `write` says.
#[inline(always)]
fn write_row(dst: &mut [f32], src: &[f32], bias: f32, write: Write) {
    match write {
        Write::Store => dst.iter_mut().zip(src).for_each(|(d, &v)| *d = v + bias),
        // Same rule as relu_forward: not > 0 (NaN too) becomes 0.
        Write::StoreRelu => dst.iter_mut().zip(src).for_each(|(d, &v)| {
            *d = if v + bias > 0.0 { v + bias } else { 0.0 };
        }),
        Write::Add => dst.iter_mut().zip(src).for_each(|(d, &v)| *d += v),
    }
}

/// Moving a row of 8 tiles between the layout of the image (each tile's 4 or 6 values
/// together) and that of the transforms (one lane per tile), with AVX2 shuffles.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use super::{A, LANES, M, SPAN_READ};
    use std::arch::x86_64::*;

    /// Transposes the 4×4 block in each 128-bit half of four vectors (`_MM_TRANSPOSE4_PS` on
    /// both halves): an involution.
    #[inline]
    #[target_feature(enable = "avx2")]
    fn transpose_halves(a: [__m256; 4]) -> [__m256; 4] {
        let t0 = _mm256_unpacklo_ps(a[0], a[1]);
        let t1 = _mm256_unpackhi_ps(a[0], a[1]);
        let t2 = _mm256_unpacklo_ps(a[2], a[3]);
        let t3 = _mm256_unpackhi_ps(a[2], a[3]);
        [
            _mm256_shuffle_ps::<0x44>(t0, t2),
            _mm256_shuffle_ps::<0xEE>(t0, t2),
            _mm256_shuffle_ps::<0x44>(t1, t3),
            _mm256_shuffle_ps::<0xEE>(t1, t3),
        ]
    }

    /// `col[j][l] = row[off + 4·l + j]` for j < 4: four loads of 8, transposed. The halves
    /// hold tiles 0, 2, 4, 6 | 1, 3, 5, 7, which one permutation per vector puts in order.
    ///
    /// # Safety
    /// AVX2; `off + 32 <= row.len()` (checked by the callers' constant offsets).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn columns(row: &[f32; SPAN_READ], off: usize) -> [__m256; 4] {
        debug_assert!(off + 4 * LANES <= SPAN_READ);
        // SAFETY: four loads of 8 floats from off, off + 8, off + 16, off + 24 < SPAN_READ.
        let a = std::array::from_fn(|k| unsafe { _mm256_loadu_ps(row.as_ptr().add(off + 8 * k)) });
        let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
        transpose_halves(a).map(|u| _mm256_permutevar8x32_ps(u, order))
    }

    /// `d_row[j][l] = row[4·l + j]`, j < 6, l < 8.
    ///
    /// # Safety
    /// AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn spread_row(row: &[f32; SPAN_READ], d_row: &mut [[f32; LANES]; A]) {
        // Columns 0–3 from the row; 4 and 5 are columns 0 and 1 of the row 4 further on.
        // SAFETY: offsets 0 and 4, each + 32 ≤ SPAN_READ = 36.
        let (lo, hi) = unsafe { (columns(row, 0), columns(row, M)) };
        for (j, dj) in d_row.iter_mut().enumerate() {
            let v = if j < M { lo[j] } else { hi[j - M] };
            // SAFETY: dj is 8 floats.
            unsafe { _mm256_storeu_ps(dj.as_mut_ptr(), v) };
        }
    }

    /// `row[4·l + j] = out_row[j][l]`, j < 4, l < 8: the inverse of [`columns`].
    ///
    /// # Safety
    /// AVX2.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn interleave_row(out_row: &[[f32; LANES]; M], row: &mut [f32; M * LANES]) {
        let order = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
        // SAFETY: each out_row[j] is 8 floats.
        let u = std::array::from_fn(|j| unsafe {
            _mm256_permutevar8x32_ps(_mm256_loadu_ps(out_row[j].as_ptr()), order)
        });
        for (k, a) in transpose_halves(u).into_iter().enumerate() {
            // SAFETY: row has 32 floats; k < 4.
            unsafe { _mm256_storeu_ps(row.as_mut_ptr().add(8 * k), a) };
        }
    }
}

/// Tiles per chunk so that V (C_in planes) and M (C_out planes) fit in [`CHUNK_FLOATS`],
/// but at least [`MIN_CHUNK_TILES`].
fn chunk_tiles(p: &Conv2dParams) -> usize {
    let per_tile = XI * (p.in_channels + p.out_channels);
    (CHUNK_FLOATS / per_tile).max(MIN_CHUNK_TILES) / LANES * LANES
}

/// `y = conv(x, w) + b` for a 3×3, stride-1, padding-1 convolution (see [`applies`]); with
/// `relu`, `y = max(conv(x, w) + b, 0)`, applied as each output is written so the
/// pre-activation never exists. Weights with a [`KernelCache`](crate::kernel_cache::KernelCache)
/// transform their kernels once.
pub fn conv3x3_forward<'a>(
    p: &Conv2dParams,
    x: &[f32],
    w: impl Into<Weights<'a>>,
    b: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) {
    let write = if relu { Write::StoreRelu } else { Write::Store };
    conv3x3(p, x, w.into(), b, write, y);
}

/// `y += conv(x, w)` for a 3×3, stride-1, padding-1 convolution: adds into `y` in the output
/// transform, so an input gradient can be accumulated into an existing one without a
/// temporary of its size.
pub fn conv3x3_accumulate<'a>(
    p: &Conv2dParams,
    x: &[f32],
    w: impl Into<Weights<'a>>,
    y: &mut [f32],
) {
    conv3x3(p, x, w.into(), None, Write::Add, y);
}

fn conv3x3(
    p: &Conv2dParams,
    x: &[f32],
    w: Weights,
    b: Option<&[f32]>,
    write: Write,
    y: &mut [f32],
) {
    assert_eq!(w.values.len(), p.weight_len(), "winograd: weight length");
    w.with_transformed(
        Slot::Forward,
        p,
        |u| transform_kernels(p, w.values, u),
        |u| conv3x3_transformed(p, x, u, b, write, y),
    );
}

/// Length of the transformed kernels `U[C_out][36][C_in]` of the convolution `p`.
pub(crate) fn transformed_len(p: &Conv2dParams) -> usize {
    XI * p.in_channels * p.out_channels
}

/// The convolution `p` of `x` by the transformed kernels `u` ([`transform_kernels`]), written
/// into `y` as `write` says.
pub(crate) fn conv3x3_transformed(
    p: &Conv2dParams,
    x: &[f32],
    u: &[f32],
    b: Option<&[f32]>,
    write: Write,
    y: &mut [f32],
) {
    assert!(
        applies(p),
        "winograd: needs a 3×3 kernel, stride 1, padding 1"
    );
    assert_eq!(x.len(), p.input_len(), "winograd: input length");
    assert_eq!(
        u.len(),
        transformed_len(p),
        "winograd: transformed kernel length"
    );
    assert_eq!(y.len(), p.output_len(), "winograd: output length");
    let (cin, cout) = (p.in_channels, p.out_channels);
    let (th, tw) = tile_grid(p);
    let tiles = th * tw;
    if p.output_len() == 0 {
        return;
    }
    let chunk = chunk_tiles(p).min(tiles.next_multiple_of(LANES));
    let (in_img, out_img) = (cin * p.in_h * p.in_w, p.output_len() / p.batch);
    with_scratch(XI * (cin + cout) * chunk, |buf| {
        let (v_buf, m_buf) = buf.split_at_mut(XI * cin * chunk);
        for n in 0..p.batch {
            let (xn, yn) = (&x[n * in_img..][..in_img], &mut y[n * out_img..][..out_img]);
            for t0 in (0..tiles).step_by(chunk) {
                let t1 = (t0 + chunk).min(tiles);
                let tc = t1 - t0;
                let (v, m) = (&mut v_buf[..XI * cin * tc], &mut m_buf[..XI * cout * tc]);
                transform_inputs(p, xn, t0, t1, v);
                multiply_transformed(cin, cout, tc, u, v, m);
                transform_outputs(p, m, b, write, t0, t1, yn);
            }
        }
    })
}

/// Below this many output channels the transformed products run transposed (see
/// [`multiply_transformed`]).
const FEW_OUTPUT_CHANNELS: usize = 16;

/// `M[·][ξ][·] = U[·][ξ][·] · V[·][ξ][·]` for the 36 positions ξ, one serial GEMM per task.
fn multiply_transformed(cin: usize, cout: usize, tc: usize, u: &[f32], v: &[f32], m: &mut [f32]) {
    let m_ptr = SharedOut(m.as_mut_ptr());
    (0..XI).into_par_iter().for_each(|xi| {
        // SAFETY: U[ξ] is C_out rows of C_in (row stride 36·C_in), V[ξ] is C_in rows of tc
        // (stride 36·tc), M[ξ] is C_out rows of tc (stride 36·tc): all inside their slices,
        // and each ξ writes its own tc-wide column band of M, disjoint from every other task.
        unsafe {
            let (m_xi, u_xi, v_xi) = (
                m_ptr.ptr().add(xi * tc),
                u.as_ptr().add(xi * cin),
                v.as_ptr().add(xi * tc),
            );
            if cout < FEW_OUTPUT_CHANNELS {
                // M[ξ]ᵀ = V[ξ]ᵀ · U[ξ]ᵀ: the same product with tiles as rows, so that the
                // GEMM's 64-row micro-tiles are filled (with 3 output channels as rows they
                // were 5% full: conv1_1's input gradient took longer than conv2_1's).
                crate::gemm::gemm_raw_serial_strided(
                    (tc, cout, cin),
                    (m_xi, 1, XI * tc),
                    (v_xi, 1, XI * tc),
                    (u_xi, 1, XI * cin),
                )
            } else {
                gemm_raw_serial(cout, tc, cin, m_xi, XI * tc, u_xi, XI * cin, v_xi, XI * tc)
            }
        }
    });
}
