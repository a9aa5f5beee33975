//! The cuBLAS calls nst makes, executed by the host reference of cuBLAS's column-major
//! semantics (`Sgemm::run_reference`), against nst-cpu: any transpose, operand order or
//! leading-dimension mistake in the row-major mapping shows up here, without a GPU.

use nst_cuda::blas::Sgemm;

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| ((i as u32).wrapping_mul(2_654_435_761) ^ seed.wrapping_mul(97)) % 1000)
        .map(|v| v as f32 / 500.0 - 1.0)
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-5 * scale, "{what}[{i}]: {g} vs {w}");
    }
}

#[test]
fn row_major_products_match_nst_cpu_for_every_transpose() {
    for (m, k, n) in [(3, 5, 4), (1, 7, 2), (6, 1, 5)] {
        for (trans_a, trans_b) in [(false, false), (true, false), (false, true), (true, true)] {
            let (a, b) = (values(m * k, 1), values(k * n, 2));
            let mut want = values(m * n, 3);
            let mut got = want.clone();
            nst_cpu::matmul(&a, &b, &mut want, m, k, n, trans_a, trans_b, true);
            let call = Sgemm::row_major(m, k, n, trans_a, trans_b, 1.0, 1.0);
            assert!(call.is_valid(), "{call:?}");
            call.run_reference(&b, &a, &mut got);
            assert_close(
                &got,
                &want,
                &format!("{m}×{k}×{n} ta={trans_a} tb={trans_b}"),
            );
        }
    }
}

/// Ĝ = s·F·Fᵀ as one call, and its gradient dF = s·(dG + dGᵀ)·F as two accumulating calls
/// (no symmetrising kernel), against nst-cpu's Gram kernels.
#[test]
fn gram_and_its_gradient_as_cublas_calls() {
    let (c, m, s) = (5, 13, 1.0 / 13.0);
    let (f, dg) = (values(c * m, 4), values(c * c, 5));
    let mut want = vec![0.0; c * c];
    nst_cpu::gram::gram_forward(&f, c, m, s, &mut want);
    let mut got = vec![f32::NAN; c * c];
    Sgemm::row_major(c, m, c, false, true, s, 0.0).run_reference(&f, &f, &mut got);
    assert_close(&got, &want, "gram");

    let mut want = vec![0.0; c * m];
    nst_cpu::gram::gram_backward(&f, &dg, c, m, s, &mut want);
    let mut got = vec![f32::NAN; c * m];
    Sgemm::row_major(c, c, m, false, false, s, 0.0).run_reference(&f, &dg, &mut got);
    Sgemm::row_major(c, c, m, true, false, s, 1.0).run_reference(&f, &dg, &mut got);
    assert_close(&got, &want, "gram backward");
}

/// The convolution's product as `gpu::Gpu::conv2d_forward` issues it: y[C_out × P] =
/// w[C_out × K] · cols[K × P].
#[test]
fn the_convolution_product_is_the_documented_call() {
    let (cout, kk, p) = (4, 27, 30);
    let call = Sgemm::row_major(cout, kk, p, false, false, 1.0, 0.0);
    assert_eq!(
        (call.m, call.n, call.k, call.lda, call.ldb, call.ldc),
        (p, cout, kk, p, kk, p)
    );
    assert!(!call.trans_a && !call.trans_b);
}
