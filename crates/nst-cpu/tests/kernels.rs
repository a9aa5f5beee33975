//! Every kernel against a naive loop implementation on random inputs with awkward shapes.

use nst_cpu::{
    conv::*, elementwise, gemm::matmul, gram::*, linalg::*, pool::*, relu::*, AdamParams, MatLayout,
};
use rand::{rngs::StdRng, Rng, SeedableRng};

fn rand_vec(rng: &mut StdRng, n: usize) -> Vec<f32> {
    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let err: f64 = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).powi(2))
        .sum::<f64>()
        .sqrt();
    let norm: f64 = want.iter().map(|w| w * w).sum::<f64>().sqrt().max(1e-12);
    assert!(
        err / norm <= tol,
        "{what}: relative error {:.3e} > {tol:.0e}",
        err / norm
    );
}

/// Naive convolution, f64.
fn conv_naive(p: &Conv2dParams, x: &[f32], w: &[f32], b: &[f32]) -> Vec<f64> {
    let (oh, ow) = (p.out_h(), p.out_w());
    let mut y = vec![0.0; p.output_len()];
    for n in 0..p.batch {
        for co in 0..p.out_channels {
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = b[co] as f64;
                    for ci in 0..p.in_channels {
                        for ky in 0..p.kernel_h {
                            for kx in 0..p.kernel_w {
                                let iy = (oy * p.stride + ky) as isize - p.pad as isize;
                                let ix = (ox * p.stride + kx) as isize - p.pad as isize;
                                if iy < 0
                                    || ix < 0
                                    || iy >= p.in_h as isize
                                    || ix >= p.in_w as isize
                                {
                                    continue;
                                }
                                let xv = x[((n * p.in_channels + ci) * p.in_h + iy as usize)
                                    * p.in_w
                                    + ix as usize];
                                let wv = w[((co * p.in_channels + ci) * p.kernel_h + ky)
                                    * p.kernel_w
                                    + kx];
                                s += xv as f64 * wv as f64;
                            }
                        }
                    }
                    y[((n * p.out_channels + co) * oh + oy) * ow + ox] = s;
                }
            }
        }
    }
    y
}

/// The gradients by the adjoint definition: for L = Σ dy·y, dL/dx and dL/dw from naive loops.
fn conv_grads_naive(
    p: &Conv2dParams,
    x: &[f32],
    w: &[f32],
    dy: &[f32],
) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (oh, ow) = (p.out_h(), p.out_w());
    let (mut dx, mut dw, mut db) = (
        vec![0.0; x.len()],
        vec![0.0; w.len()],
        vec![0.0; p.out_channels],
    );
    for n in 0..p.batch {
        for co in 0..p.out_channels {
            for oy in 0..oh {
                for ox in 0..ow {
                    let g = dy[((n * p.out_channels + co) * oh + oy) * ow + ox] as f64;
                    db[co] += g;
                    for ci in 0..p.in_channels {
                        for ky in 0..p.kernel_h {
                            for kx in 0..p.kernel_w {
                                let iy = (oy * p.stride + ky) as isize - p.pad as isize;
                                let ix = (ox * p.stride + kx) as isize - p.pad as isize;
                                if iy < 0
                                    || ix < 0
                                    || iy >= p.in_h as isize
                                    || ix >= p.in_w as isize
                                {
                                    continue;
                                }
                                let xi = ((n * p.in_channels + ci) * p.in_h + iy as usize) * p.in_w
                                    + ix as usize;
                                let wi =
                                    ((co * p.in_channels + ci) * p.kernel_h + ky) * p.kernel_w + kx;
                                dx[xi] += g * w[wi] as f64;
                                dw[wi] += g * x[xi] as f64;
                            }
                        }
                    }
                }
            }
        }
    }
    (dx, dw, db)
}

fn conv_shapes() -> Vec<Conv2dParams> {
    let p = |batch, cin, h, w, cout, k, stride, pad| Conv2dParams {
        batch,
        in_channels: cin,
        in_h: h,
        in_w: w,
        out_channels: cout,
        kernel_h: k,
        kernel_w: k,
        stride,
        pad,
    };
    vec![
        p(1, 3, 7, 9, 8, 3, 1, 1),   // 3 input channels, odd H and W
        p(2, 5, 6, 5, 4, 3, 1, 1),   // batch 2
        p(1, 4, 1, 1, 6, 3, 1, 1),   // 1×1 spatial
        p(2, 3, 9, 8, 5, 3, 2, 0),   // stride 2, no padding
        p(1, 6, 5, 7, 3, 1, 1, 0),   // 1×1 kernel
        p(1, 2, 11, 10, 4, 5, 3, 2), // 5×5 kernel, stride 3
        p(1, 16, 33, 31, 32, 3, 1, 1),
        Conv2dParams {
            kernel_h: 1,
            kernel_w: 2,
            ..p(1, 3, 6, 7, 3, 1, 1, 0)
        }, // non-square kernel
    ]
}

#[test]
fn conv_forward_matches_naive() {
    let mut rng = StdRng::seed_from_u64(1);
    for p in conv_shapes() {
        let (x, w, b) = (
            rand_vec(&mut rng, p.input_len()),
            rand_vec(&mut rng, p.weight_len()),
            rand_vec(&mut rng, p.out_channels),
        );
        let want = conv_naive(&p, &x, &w, &b);
        for algo in [ConvAlgorithm::Fastest, ConvAlgorithm::Im2col] {
            let mut y = vec![f32::NAN; p.output_len()];
            conv2d_forward(&p, algo, &x, &w, Some(&b), &mut y);
            assert_close(&y, &want, 1e-5, &format!("conv forward {algo} {p:?}"));
        }
    }
}

#[test]
fn conv_backward_matches_naive() {
    let mut rng = StdRng::seed_from_u64(2);
    for p in conv_shapes() {
        let (x, w, dy) = (
            rand_vec(&mut rng, p.input_len()),
            rand_vec(&mut rng, p.weight_len()),
            rand_vec(&mut rng, p.output_len()),
        );
        let (dx_ref, dw_ref, db_ref) = conv_grads_naive(&p, &x, &w, &dy);
        for algo in [ConvAlgorithm::Fastest, ConvAlgorithm::Im2col] {
            let mut dx = vec![f32::NAN; x.len()];
            conv2d_backward_input(&p, algo, &dy, &w, &mut dx);
            assert_close(&dx, &dx_ref, 1e-5, &format!("conv dx {algo} {p:?}"));
            // Accumulating onto an existing gradient adds exactly that.
            let prior = rand_vec(&mut rng, x.len());
            let mut acc = prior.clone();
            conv2d_backward_input_accumulate(&p, algo, &dy, &w, &mut acc);
            let want: Vec<f64> = prior
                .iter()
                .zip(&dx_ref)
                .map(|(&a, &d)| a as f64 + d)
                .collect();
            assert_close(&acc, &want, 1e-5, &format!("conv dx += {algo} {p:?}"));
        }
        let (mut dw, mut db) = (vec![0.0; w.len()], vec![0.0; p.out_channels]);
        conv2d_backward_weight(&p, &x, &dy, &mut dw, Some(&mut db));
        assert_close(&dw, &dw_ref, 1e-5, &format!("conv dw {p:?}"));
        assert_close(&db, &db_ref, 1e-5, &format!("conv db {p:?}"));
    }
}

#[test]
fn conv_large_image_forward_and_banded_weight_gradient() {
    // Enough columns that the banded im2col (weight gradient) needs several bands of rows,
    // and the block-parallel forward path runs thousands of blocks.
    let p = Conv2dParams {
        batch: 1,
        in_channels: 64,
        in_h: 530,
        in_w: 517,
        out_channels: 2,
        kernel_h: 3,
        kernel_w: 3,
        stride: 1,
        pad: 1,
    };
    assert!(
        p.patch_len() * p.out_h() * p.out_w() > MAX_COLS_ELEMS,
        "test must exercise banding"
    );
    let mut rng = StdRng::seed_from_u64(3);
    let (x, w) = (
        rand_vec(&mut rng, p.input_len()),
        rand_vec(&mut rng, p.weight_len()),
    );
    let mut y = vec![0.0; p.output_len()];
    conv2d_forward(&p, ConvAlgorithm::Fastest, &x, &w, None, &mut y);
    // Spot-check rows on both sides of every band boundary against the naive sum.
    let (oh, ow) = (p.out_h(), p.out_w());
    for &(co, oy, ox) in &[
        (0, 0, 0),
        (1, oh / 2, ow - 1),
        (0, oh - 1, 3),
        (1, 60, 1),
        (0, 61, 200),
        (1, 62, 516),
        (0, 121, 7),
    ] {
        let mut s = 0.0f64;
        for ci in 0..p.in_channels {
            for ky in 0..3 {
                for kx in 0..3 {
                    let (iy, ix) = (oy as isize + ky as isize - 1, ox as isize + kx as isize - 1);
                    if iy < 0 || ix < 0 || iy >= p.in_h as isize || ix >= p.in_w as isize {
                        continue;
                    }
                    s += x[(ci * p.in_h + iy as usize) * p.in_w + ix as usize] as f64
                        * w[(co * 64 + ci) * 9 + ky * 3 + kx] as f64;
                }
            }
        }
        let got = y[(co * oh + oy) * ow + ox] as f64;
        assert!(
            (got - s).abs() <= 1e-4 * (1.0 + s.abs()),
            "({co},{oy},{ox}): {got} vs {s}"
        );
    }
}

#[test]
fn matmul_all_transposes() {
    let mut rng = StdRng::seed_from_u64(4);
    for &(m, k, n) in &[(1, 1, 1), (3, 5, 7), (17, 33, 9), (64, 130, 65)] {
        let (a, b) = (rand_vec(&mut rng, m * k), rand_vec(&mut rng, k * n));
        for ta in [false, true] {
            for tb in [false, true] {
                let at = |i: usize, l: usize| if ta { a[l * m + i] } else { a[i * k + l] } as f64;
                let bt = |l: usize, j: usize| if tb { b[j * k + l] } else { b[l * n + j] } as f64;
                let init = rand_vec(&mut rng, m * n);
                let want: Vec<f64> = (0..m * n)
                    .map(|ij| {
                        init[ij] as f64 + (0..k).map(|l| at(ij / n, l) * bt(l, ij % n)).sum::<f64>()
                    })
                    .collect();
                let mut c = init.clone();
                matmul(&a, &b, &mut c, m, k, n, ta, tb, true);
                assert_close(
                    &c,
                    &want,
                    1e-5,
                    &format!("matmul {m}x{k}x{n} ta={ta} tb={tb}"),
                );
            }
        }
    }
}

/// `gemm_strided` with each operand, C included, row-major, column-major or a band of a wider
/// matrix: the GEMM kernels are handed a column-major C, so a row-major one is computed as
/// its transpose (nst-cpu's `gemm_f32`), and both ways must give `β·C + α·A·B`.
#[test]
fn gemm_strided_any_layout() {
    use nst_cpu::gemm::gemm_strided;
    let mut rng = StdRng::seed_from_u64(14);
    // A layout of a rows × cols matrix in a buffer: row-major, column-major, or row-major
    // inside a buffer 3 columns wider (the bands convolution multiplies in place).
    let layout = |kind: usize, rows: usize, cols: usize| match kind {
        0 => MatLayout::row_major(rows, cols),
        1 => MatLayout::row_major(cols, rows).t(),
        _ => MatLayout {
            row_stride: cols + 3,
            ..MatLayout::row_major(rows, cols)
        },
    };
    let len = |l: MatLayout| (l.rows - 1) * l.row_stride + (l.cols - 1) * l.col_stride + 1;
    // The small shapes take the serial path, the last the threaded one (≥ 64³ products).
    for &(m, k, n) in &[(1, 1, 1), (5, 3, 9), (33, 17, 8), (70, 66, 90)] {
        for (kinds, (alpha, beta)) in [
            ([0, 0, 0], (1.0, 0.0)),
            ([1, 1, 1], (0.5, 1.0)),
            ([2, 1, 0], (-2.0, 0.25)),
            ([0, 2, 1], (1.0, 0.0)),
            ([1, 0, 2], (0.75, -1.0)),
        ] {
            let (la, lb, lc) = (
                layout(kinds[0], m, k),
                layout(kinds[1], k, n),
                layout(kinds[2], m, n),
            );
            let (a, b) = (rand_vec(&mut rng, len(la)), rand_vec(&mut rng, len(lb)));
            let mut c = rand_vec(&mut rng, len(lc));
            if beta == 0.0 {
                // β = 0 ignores C, NaN included.
                c.fill(f32::NAN);
            }
            let at = |x: &[f32], l: MatLayout, r: usize, col: usize| {
                x[r * l.row_stride + col * l.col_stride] as f64
            };
            let want: Vec<f64> = (0..m * n)
                .map(|ij| {
                    let (i, j) = (ij / n, ij % n);
                    let old = if beta == 0.0 {
                        0.0
                    } else {
                        beta as f64 * at(&c, lc, i, j)
                    };
                    let product: f64 = (0..k).map(|l| at(&a, la, i, l) * at(&b, lb, l, j)).sum();
                    old + alpha as f64 * product
                })
                .collect();
            let before = c.clone();
            gemm_strided(alpha, &a, la, &b, lb, beta, &mut c, lc);
            let got: Vec<f32> = (0..m * n)
                .map(|ij| at(&c, lc, ij / n, ij % n) as f32)
                .collect();
            assert_close(
                &got,
                &want,
                1e-5,
                &format!("gemm {m}x{k}x{n} layouts {kinds:?}"),
            );
            // Nothing outside C's elements changes (the padding of a band).
            let inside: std::collections::HashSet<usize> = (0..m * n)
                .map(|ij| (ij / n) * lc.row_stride + (ij % n) * lc.col_stride)
                .collect();
            for (idx, (x, y)) in c.iter().zip(&before).enumerate() {
                if !inside.contains(&idx) {
                    assert_eq!(x.to_bits(), y.to_bits(), "element {idx} outside C changed");
                }
            }
        }
    }
}

#[test]
fn gram_forward_and_backward() {
    let mut rng = StdRng::seed_from_u64(5);
    // The last two span several parts of the forward pass's split (8192 positions each), and
    // several blocks of the in-place gradient (2048 each, the last one partial).
    for &(c, n) in &[
        (1, 1),
        (3, 7),
        (16, 49),
        (64, 5),
        (2, 8192),
        (5, 2 * 8192 + 13),
        // More channels than a GEMM micro-tile has rows, in one part and across two.
        (70, 9),
        (150, 8192 + 8),
    ] {
        let (f, dg) = (rand_vec(&mut rng, c * n), rand_vec(&mut rng, c * c));
        let s = 0.37;
        // NaN: every element must be written.
        let mut g = vec![f32::NAN; c * c];
        gram_forward(&f, c, n, s, &mut g);
        let want: Vec<f64> = (0..c * c)
            .map(|ij| {
                s as f64
                    * (0..n)
                        .map(|l| f[ij / c * n + l] as f64 * f[ij % c * n + l] as f64)
                        .sum::<f64>()
            })
            .collect();
        assert_close(&g, &want, 1e-5, "gram forward");
        let mut df = vec![0.0; c * n];
        gram_backward(&f, &dg, c, n, s, &mut df);
        // d/dF_il Σ_jk dG_jk·s·Σ_m F_jm F_km = s·Σ_k (dG_ik + dG_ki)·F_kl
        let want: Vec<f64> = (0..c * n)
            .map(|il| {
                let (i, l) = (il / n, il % n);
                s as f64
                    * (0..c)
                        .map(|k| (dg[i * c + k] + dg[k * c + i]) as f64 * f[k * n + l] as f64)
                        .sum::<f64>()
            })
            .collect();
        assert_close(&df, &want, 1e-5, "gram backward");
        // In place: the same values, written over F (blocks of 2048 positions).
        let mut in_place = f.clone();
        gram_backward_in_place(&mut in_place, &dg, c, n, s);
        assert_close(&in_place, &want, 1e-5, "gram backward in place");
    }
}

#[test]
fn pooling_forward_and_backward() {
    let mut rng = StdRng::seed_from_u64(6);
    for &(planes, h, w) in &[(1, 1, 1), (3, 5, 7), (2, 2, 2), (6, 9, 4), (4, 16, 17)] {
        let p = Pool2dParams {
            planes,
            in_h: h,
            in_w: w,
        };
        let (x, dy) = (
            rand_vec(&mut rng, p.input_len()),
            rand_vec(&mut rng, p.output_len()),
        );
        let (oh, ow) = (p.out_h(), p.out_w());
        let (mut ymax, mut yavg, mut am) = (
            vec![0.0; p.output_len()],
            vec![0.0; p.output_len()],
            vec![0u8; p.output_len()],
        );
        max_pool_forward(&p, &x, &mut ymax, &mut am);
        avg_pool_forward(&p, &x, &mut yavg);
        let (mut want_max, mut want_avg) = (vec![0.0; p.output_len()], vec![0.0; p.output_len()]);
        let (mut dmax, mut davg) = (vec![0.0f64; x.len()], vec![0.0f64; x.len()]);
        for c in 0..planes {
            for oy in 0..oh {
                for ox in 0..ow {
                    let o = (c * oh + oy) * ow + ox;
                    let idx: Vec<usize> = [(0, 0), (0, 1), (1, 0), (1, 1)]
                        .iter()
                        .map(|&(dy_, dx_)| (c * h + 2 * oy + dy_) * w + 2 * ox + dx_)
                        .collect();
                    let best = *idx.iter().max_by(|&&a, &&b| x[a].total_cmp(&x[b])).unwrap();
                    want_max[o] = x[best] as f64;
                    dmax[best] += dy[o] as f64;
                    want_avg[o] = idx.iter().map(|&i| x[i] as f64).sum::<f64>() / 4.0;
                    idx.iter().for_each(|&i| davg[i] += dy[o] as f64 / 4.0);
                }
            }
        }
        if p.output_len() == 0 {
            continue;
        }
        assert_close(&ymax, &want_max, 1e-7, "max pool");
        assert_close(&yavg, &want_avg, 1e-6, "avg pool");
        let (mut dx1, mut dx2) = (vec![f32::NAN; x.len()], vec![f32::NAN; x.len()]);
        max_pool_backward(&p, &dy, &am, &mut dx1);
        avg_pool_backward(&p, &dy, &mut dx2);
        assert_close(&dx1, &dmax, 1e-7, "max pool backward");
        assert_close(&dx2, &davg, 1e-6, "avg pool backward");
    }
}

#[test]
fn relu_and_elementwise() {
    let mut rng = StdRng::seed_from_u64(7);
    let n = 100_003; // spans several parallel chunks, odd length
    let (a, b) = (rand_vec(&mut rng, n), rand_vec(&mut rng, n));
    let mut out = vec![0.0; n];
    relu_forward(&a, &mut out);
    assert_close(
        &out,
        &a.iter().map(|&v| v.max(0.0) as f64).collect::<Vec<_>>(),
        0.0,
        "relu",
    );
    let y = out.clone();
    relu_backward(&y, &b, &mut out);
    assert_close(
        &out,
        &a.iter()
            .zip(&b)
            .map(|(&x, &g)| if x > 0.0 { g as f64 } else { 0.0 })
            .collect::<Vec<_>>(),
        0.0,
        "relu backward",
    );
    elementwise::axpby(2.0, &a, -3.0, &b, &mut out);
    assert_close(
        &out,
        &a.iter()
            .zip(&b)
            .map(|(&x, &y)| 2.0 * x as f64 - 3.0 * y as f64)
            .collect::<Vec<_>>(),
        1e-7,
        "axpby",
    );
    elementwise::mul(&a, &b, &mut out);
    assert_close(
        &out,
        &a.iter()
            .zip(&b)
            .map(|(&x, &y)| x as f64 * y as f64)
            .collect::<Vec<_>>(),
        1e-7,
        "mul",
    );
    let dot: f64 = a.iter().zip(&b).map(|(&x, &y)| x as f64 * y as f64).sum();
    assert!((elementwise::dot(&a, &b) - dot).abs() < 1e-9 * dot.abs().max(1.0));
    let s: f64 = a.iter().map(|&v| v as f64).sum();
    assert!((elementwise::sum(&a) - s).abs() < 1e-9);
    assert_eq!(
        elementwise::abs_max(&a),
        a.iter().fold(0.0f32, |m, v| m.max(v.abs()))
    );
    assert!(
        (elementwise::abs_sum(&a) - a.iter().map(|v| v.abs() as f64).sum::<f64>()).abs() < 1e-6
    );
    // The losses' squared distance (exact f64 differences here: within f32 rounding) and its
    // gradient written over the first operand.
    let sq: f64 = a
        .iter()
        .zip(&b)
        .map(|(&x, &y)| (x as f64 - y as f64).powi(2))
        .sum();
    let got = elementwise::sum_squared_difference(&a, &b);
    assert!(
        (got - sq).abs() < 1e-6 * sq,
        "squared distance {got} vs {sq}"
    );
    let mut grad = a.clone();
    elementwise::scaled_difference_in_place(&mut grad, &b, 2.0, 0.25);
    assert_close(
        &grad,
        &a.iter()
            .zip(&b)
            .map(|(&x, &y)| 0.5 * (x as f64 - y as f64))
            .collect::<Vec<_>>(),
        1e-7,
        "scaled difference",
    );
}

#[test]
fn adam_update_matches_formula() {
    let (mut x, g) = (vec![1.0f32, -2.0], vec![0.5f32, -0.25]);
    let (mut m, mut v) = (vec![0.0; 2], vec![0.0; 2]);
    let p = AdamParams {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        step: 1,
    };
    elementwise::adam_update(&mut x, &g, &mut m, &mut v, &p);
    // First step: m̂ = g, v̂ = g², so x moves by lr·sign(g) (up to ε).
    assert!(
        (x[0] - 0.9).abs() < 1e-6 && (x[1] + 1.9).abs() < 1e-6,
        "{x:?}"
    );
}

fn reconstruct(vals: [f64; 3], v: Mat3) -> Mat3 {
    let mut out = [[0.0; 3]; 3];
    for i in 0..3 {
        for j in 0..3 {
            out[i][j] = (0..3).map(|k| v[i][k] * vals[k] * v[j][k]).sum();
        }
    }
    out
}

#[test]
fn sym3_eigen_reconstructs_and_sqrt_squares_back() {
    let cases: [Mat3; 4] = [
        [[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]],
        [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0], [1.0, 1.0, 1.0]], // grayscale covariance: rank 1
        [[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0]],
        [
            [900.0, 850.0, 700.0],
            [850.0, 820.0, 690.0],
            [700.0, 690.0, 640.0],
        ],
    ];
    for a in cases {
        let (vals, v) = sym3_eigen(&a);
        assert!(vals[0] <= vals[1] && vals[1] <= vals[2]);
        let r = reconstruct(vals, v);
        let s = sym3_sqrt(&a);
        let s2 = mat3_mul(&s, &s);
        for i in 0..3 {
            for j in 0..3 {
                assert!(
                    (r[i][j] - a[i][j]).abs() < 1e-9 * (1.0 + a[i][j].abs()),
                    "eigen {a:?}"
                );
                assert!(
                    (s2[i][j] - a[i][j]).abs() < 1e-7 * (1.0 + a[i][j].abs()),
                    "sqrt {a:?}"
                );
            }
        }
        let is = sym3_inv_sqrt(&a, 1e-12);
        assert!(is.iter().flatten().all(|v| v.is_finite()));
    }
}

#[cfg(feature = "openblas")]
#[test]
fn sym3_eigen_agrees_with_lapack() {
    let a: Mat3 = [[4.0, 1.0, 0.5], [1.0, 3.0, 0.2], [0.5, 0.2, 2.0]];
    let (v1, _) = sym3_eigen(&a);
    let (v2, vec2) = sym3_eigen_lapack(&a);
    for k in 0..3 {
        assert!((v1[k] - v2[k]).abs() < 1e-10);
    }
    let s1 = sym3_sqrt(&a);
    let s2 = reconstruct(v2.map(f64::sqrt), vec2);
    for i in 0..3 {
        for j in 0..3 {
            assert!((s1[i][j] - s2[i][j]).abs() < 1e-10);
        }
    }
}

#[test]
fn winograd_matches_naive_on_awkward_shapes() {
    let mut rng = StdRng::seed_from_u64(11);
    let p = Conv2dParams::same_3x3;
    // 1×1, sizes that are not multiples of the 4×4 output block, batch 2, 3 channels, and
    // enough tiles (60×61 → 240) to span several 8-tile lane groups with a partial last one.
    for p in [
        p(1, 4, 1, 1, 6),
        p(1, 3, 5, 7, 8),
        p(2, 5, 9, 6, 4),
        p(1, 16, 60, 61, 16),
        p(1, 2, 4, 4, 3),
        // 12 tiles a row: lane groups that straddle two tile rows, and rows of 8 whole tiles
        // next to partial ones (the transforms' row-at-once path and the general one).
        p(1, 3, 21, 45, 5),
    ] {
        let (x, w, b) = (
            rand_vec(&mut rng, p.input_len()),
            rand_vec(&mut rng, p.weight_len()),
            rand_vec(&mut rng, p.out_channels),
        );
        let mut y = vec![f32::NAN; p.output_len()];
        nst_cpu::winograd::conv3x3_forward(&p, &x, &w, Some(&b), false, &mut y);
        let expected = conv_naive(&p, &x, &w, &b);
        assert_close(&y, &expected, 1e-5, &format!("winograd {p:?}"));
        // The other two ways of writing the output: fused ReLU, and adding into y (no bias).
        nst_cpu::winograd::conv3x3_forward(&p, &x, &w, Some(&b), true, &mut y);
        let relu: Vec<f64> = expected.iter().map(|v| v.max(0.0)).collect();
        assert_close(&y, &relu, 1e-5, &format!("winograd relu {p:?}"));
        let start = rand_vec(&mut rng, p.output_len());
        let mut acc = start.clone();
        nst_cpu::winograd::conv3x3_accumulate(&p, &x, &w, &mut acc);
        let hw = p.out_h() * p.out_w();
        let added: Vec<f64> = (0..p.output_len())
            .map(|i| f64::from(start[i]) + expected[i] - f64::from(b[(i / hw) % p.out_channels]))
            .collect();
        assert_close(&acc, &added, 1e-5, &format!("winograd accumulate {p:?}"));
    }
}

/// The acceptance bound: on every VGG-19 layer shape (forward, and the swapped channel counts
/// of each input gradient), Winograd within 1e-4 of im2col, relative to the largest output.
#[test]
fn winograd_within_1e4_of_direct_on_vgg19_shapes() {
    let mut rng = StdRng::seed_from_u64(12);
    let pairs = [
        (3, 64),
        (64, 64),
        (64, 128),
        (128, 128),
        (128, 256),
        (256, 256),
        (256, 512),
        (512, 512),
        (64, 3),
        (128, 64),
        (256, 128),
        (512, 256),
    ];
    for (cin, cout) in pairs {
        let p = Conv2dParams {
            batch: 1,
            in_channels: cin,
            in_h: 30,
            // Wide enough (18 tiles) for runs of 8 interior tiles, the transforms' fast path.
            in_w: 70,
            out_channels: cout,
            kernel_h: 3,
            kernel_w: 3,
            stride: 1,
            pad: 1,
        };
        // Post-ReLU-like activations and He-scaled weights, as in VGG-19.
        let x: Vec<f32> = (0..p.input_len())
            .map(|_| rng.random_range(0.0f32..1.0))
            .collect();
        let scale = (6.0 / (9 * cin) as f32).sqrt();
        let w: Vec<f32> = (0..p.weight_len())
            .map(|_| rng.random_range(-scale..scale))
            .collect();
        let b = rand_vec(&mut rng, cout);
        let (mut fast, mut direct) = (vec![0.0; p.output_len()], vec![0.0; p.output_len()]);
        nst_cpu::winograd::conv3x3_forward(&p, &x, &w, Some(&b), false, &mut fast);
        conv2d_forward_direct(&p, &x, &w, Some(&b), &mut direct);
        let peak = direct.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let worst = fast
            .iter()
            .zip(&direct)
            .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
        eprintln!(
            "winograd {cin}→{cout}: relative max error {:.2e}",
            worst / peak
        );
        assert!(
            worst / peak <= 1e-4,
            "{cin}→{cout}: max |winograd − direct| / max |direct| = {:.2e}",
            worst / peak
        );
    }
}

/// The packed mask gives ReLU's backward exactly, for lengths around word and chunk edges,
/// with zeros, negative zeros and NaN (not positive: masked).
#[test]
fn relu_mask_bits_match_the_float_mask() {
    let mut rng = StdRng::seed_from_u64(31);
    for len in [
        0,
        1,
        31,
        32,
        33,
        1000,
        (1 << 14) - 1,
        1 << 14,
        (1 << 14) + 33,
        100_003,
    ] {
        let mut y: Vec<f32> = rand_vec(&mut rng, len);
        for (i, v) in y.iter_mut().enumerate() {
            match i % 7 {
                0 => *v = 0.0,
                3 => *v = -0.0,
                5 if i % 3 == 0 => *v = f32::NAN,
                _ => {}
            }
        }
        let dy = rand_vec(&mut rng, len);
        let mut bits = vec![u32::MAX; relu_mask_words(len)];
        relu_mask_pack(&y, &mut bits);
        let mut got = dy.clone();
        relu_mask_apply(&bits, &mut got);
        let want: Vec<f32> = y
            .iter()
            .zip(&dy)
            .map(|(&y, &g)| if y > 0.0 { g } else { 0.0 })
            .collect();
        assert_eq!(got, want, "len {len}");
        let positives = y.iter().filter(|&&v| v > 0.0).count() as u32;
        assert_eq!(bits.iter().map(|w| w.count_ones()).sum::<u32>(), positives);
    }
}

/// Max pooling's choice on ties and NaN: the first maximum in row-major order wins, and a NaN
/// wins over numbers (it propagates, as in PyTorch), the first NaN if there are several.
#[test]
fn max_pool_ties_and_nan() {
    let p = Pool2dParams {
        planes: 4,
        in_h: 2,
        in_w: 2,
    };
    let nan = f32::NAN;
    #[rustfmt::skip]
    let x = [
        1.0, 1.0, 0.0, 0.0, // tie between the first two: the first
        0.0, 2.0, 2.0, 1.0, // tie between the second and third: the second
        1.0, nan, 3.0, 0.0, // NaN beats the larger 3
        nan, 5.0, nan, 1.0, // two NaNs: the first
    ];
    let (mut y, mut am) = (vec![0.0; 4], vec![9u8; 4]);
    max_pool_forward(&p, &x, &mut y, &mut am);
    assert_eq!(am, [0, 1, 1, 0]);
    assert_eq!(&y[..2], &[1.0, 2.0]);
    assert!(y[2].is_nan() && y[3].is_nan());
    let mut dx = vec![f32::NAN; 16];
    max_pool_backward(&p, &[1.0, 2.0, 3.0, 4.0], &am, &mut dx);
    #[rustfmt::skip]
    assert_eq!(dx, [
        1.0, 0.0, 0.0, 0.0,
        0.0, 2.0, 0.0, 0.0,
        0.0, 3.0, 0.0, 0.0,
        4.0, 0.0, 0.0, 0.0,
    ]);
}
