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
//! Accuracy: the transforms use the points 0, ±1, ±2 (and ∞), whose constants are exact in
//! f32 except 1/6, 1/12, 1/24; the tests hold every VGG-19 layer shape to 1e-4 of the direct
//! convolution, relative to the largest output.

use crate::conv::Conv2dParams;
use crate::gemm::gemm_raw_serial;
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
        dst[..LANES].copy_from_slice(src);
    } else {
        dst[..lanes].copy_from_slice(&src[..lanes]);
    }
}

/// `dst[..lanes] = src[..lanes]` (see [`store_lanes`]).
#[inline(always)]
fn load_lanes(dst: &mut [f32; LANES], src: &[f32], lanes: usize) {
    if lanes == LANES {
        dst.copy_from_slice(&src[..LANES]);
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
fn transform_kernels(p: &Conv2dParams, w: &[f32], u: &mut [f32]) {
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
                    u_co[xi * cin + c0..][..cn].copy_from_slice(&b[..cn]);
                }
            }
        });
}

/// The tile grid of one image: (tiles down, tiles across).
fn tile_grid(p: &Conv2dParams) -> (usize, usize) {
    (p.out_h().div_ceil(M), p.out_w().div_ceil(M))
}

/// `V[c][ξ][t − t0]` for tiles `[t0, t1)` of the single-image input `x`.
fn transform_inputs(p: &Conv2dParams, x: &[f32], t0: usize, t1: usize, v: &mut [f32]) {
    let (h, w) = (p.in_h, p.in_w);
    let tw = tile_grid(p).1;
    let tc = t1 - t0;
    v.par_chunks_mut(XI * tc)
        .zip(x.par_chunks(h * w))
        .for_each(|(v_c, plane)| {
            for g0 in (t0..t1).step_by(LANES) {
                let lanes = (t1 - g0).min(LANES);
                // d[i][j][lane]: the 6×6 input patch of each tile, zero outside the image.
                let mut d = [[[0.0f32; LANES]; A]; A];
                for l in 0..lanes {
                    let (ty, tx) = ((g0 + l) / tw, (g0 + l) % tw);
                    let (y0, x0) = ((ty * M) as isize - 1, (tx * M) as isize - 1);
                    let inside = y0 >= 0 && x0 >= 0 && y0 as usize + A <= h && x0 as usize + A <= w;
                    for (i, d_row) in d.iter_mut().enumerate() {
                        let iy = y0 + i as isize;
                        if !inside && (iy < 0 || iy >= h as isize) {
                            continue;
                        }
                        let src = &plane[iy as usize * w..][..w];
                        for (j, dj) in d_row.iter_mut().enumerate() {
                            let ix = x0 + j as isize;
                            if inside || (ix >= 0 && ix < w as isize) {
                                dj[l] = src[ix as usize];
                            }
                        }
                    }
                }
                // Bᵀ d along i for every column j, then (·) B along j for every row i.
                let mut t = [[[0.0f32; LANES]; A]; A];
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
        });
}

/// What the output transform does with each result `v` (the convolution at one output).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
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
    let tw = tile_grid(p).1;
    let tc = t1 - t0;
    y.par_chunks_mut(oh * ow)
        .zip(m.par_chunks(XI * tc))
        .enumerate()
        .for_each(|(co, (plane, m_co))| {
            let bias = b.map_or(0.0, |b| b[co]);
            for g0 in (t0..t1).step_by(LANES) {
                let lanes = (t1 - g0).min(LANES);
                let mut mm = [[[0.0f32; LANES]; A]; A];
                for (i, mm_row) in mm.iter_mut().enumerate() {
                    for (j, mij) in mm_row.iter_mut().enumerate() {
                        load_lanes(mij, &m_co[(i * A + j) * tc + (g0 - t0)..], lanes);
                    }
                }
                // Aᵀ m along i for every column j (6 → 4 rows), then along j (6 → 4 columns).
                let mut t = [[[0.0f32; LANES]; A]; M];
                for j in 0..A {
                    let col = output_1d(std::array::from_fn(|i| mm[i][j]));
                    for i in 0..M {
                        t[i][j] = col[i];
                    }
                }
                let out: [[[f32; LANES]; M]; M] = std::array::from_fn(|i| output_1d(t[i]));
                for l in 0..lanes {
                    let (ty, tx) = ((g0 + l) / tw, (g0 + l) % tw);
                    let (y0, x0) = (ty * M, tx * M);
                    for (i, out_row) in out.iter().enumerate().take(oh - y0) {
                        let dst = &mut plane[(y0 + i) * ow..][..ow];
                        for (j, o) in out_row.iter().enumerate().take(ow - x0) {
                            let (d, v) = (&mut dst[x0 + j], o[l]);
                            match write {
                                Write::Store => *d = v + bias,
                                // Same rule as relu_forward: not > 0 (NaN too) becomes 0.
                                Write::StoreRelu => {
                                    *d = if v + bias > 0.0 { v + bias } else { 0.0 }
                                }
                                Write::Add => *d += v,
                            }
                        }
                    }
                }
            }
        });
}

/// Tiles per chunk so that V (C_in planes) and M (C_out planes) fit in [`CHUNK_FLOATS`],
/// but at least [`MIN_CHUNK_TILES`].
fn chunk_tiles(p: &Conv2dParams) -> usize {
    let per_tile = XI * (p.in_channels + p.out_channels);
    (CHUNK_FLOATS / per_tile).max(MIN_CHUNK_TILES) / LANES * LANES
}

/// `y = conv(x, w) + b` for a 3×3, stride-1, padding-1 convolution (see [`applies`]); with
/// `relu`, `y = max(conv(x, w) + b, 0)`, applied as each output is written so the
/// pre-activation never exists.
pub fn conv3x3_forward(
    p: &Conv2dParams,
    x: &[f32],
    w: &[f32],
    b: Option<&[f32]>,
    relu: bool,
    y: &mut [f32],
) {
    let write = if relu { Write::StoreRelu } else { Write::Store };
    conv3x3(p, x, w, b, write, y);
}

/// `y += conv(x, w)` for a 3×3, stride-1, padding-1 convolution: adds into `y` in the output
/// transform, so an input gradient can be accumulated into an existing one without a
/// temporary of its size.
pub fn conv3x3_accumulate(p: &Conv2dParams, x: &[f32], w: &[f32], y: &mut [f32]) {
    conv3x3(p, x, w, None, Write::Add, y);
}

fn conv3x3(p: &Conv2dParams, x: &[f32], w: &[f32], b: Option<&[f32]>, write: Write, y: &mut [f32]) {
    assert!(
        applies(p),
        "winograd: needs a 3×3 kernel, stride 1, padding 1"
    );
    assert_eq!(x.len(), p.input_len(), "winograd: input length");
    assert_eq!(w.len(), p.weight_len(), "winograd: weight length");
    assert_eq!(y.len(), p.output_len(), "winograd: output length");
    let (cin, cout) = (p.in_channels, p.out_channels);
    let (th, tw) = tile_grid(p);
    let tiles = th * tw;
    if p.output_len() == 0 {
        return;
    }
    let chunk = chunk_tiles(p).min(tiles.next_multiple_of(LANES));
    let (in_img, out_img) = (cin * p.in_h * p.in_w, p.output_len() / p.batch);
    with_scratch(XI * cout * cin, |u| {
        transform_kernels(p, w, u);
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
    });
}

/// `M[·][ξ][·] = U[·][ξ][·] · V[·][ξ][·]` for the 36 positions ξ, one serial GEMM per task.
fn multiply_transformed(cin: usize, cout: usize, tc: usize, u: &[f32], v: &[f32], m: &mut [f32]) {
    let m_ptr = SharedOut(m.as_mut_ptr());
    (0..XI).into_par_iter().for_each(|xi| {
        // SAFETY: U[ξ] is C_out rows of C_in (row stride 36·C_in), V[ξ] is C_in rows of tc
        // (stride 36·tc), M[ξ] is C_out rows of tc (stride 36·tc): all inside their slices,
        // and each ξ writes its own tc-wide column band of M, disjoint from every other task.
        unsafe {
            gemm_raw_serial(
                cout,
                tc,
                cin,
                m_ptr.ptr().add(xi * tc),
                XI * tc,
                u.as_ptr().add(xi * cin),
                XI * cin,
                v.as_ptr().add(xi * tc),
                XI * tc,
            )
        }
    });
}
