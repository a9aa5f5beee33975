//! The CUDA kernels of `kernels.cu`, compiled as C++ for the host through a small shim
//! (`host/cuda_host.h`, `host/launch.cpp`, loaded by `nst_cuda::emulator`) and run on the CPU
//! against the nst-cpu kernels, one kernel at a time on host arrays. This checks their
//! indexing, grid-stride loops, shared-memory reductions, atomics, `__syncwarp` and argument
//! order without a GPU (what NVRTC in CI cannot: it only compiles them). Arguments are
//! passed as cuLaunchKernel takes them, an array of pointers to each value.
//! (`tests/kernels.rs` checks the operations built from these kernels, through device
//! buffers.)
//!
//! Needs `g++` (C++20); without it the tests print SKIPPED and the reason.

mod common;

use nst_cpu::{elementwise, pool, relu, AdamParams};
use nst_cuda::emulator::{self, Emulator};
use nst_cuda::{Arg, Runtime};
use std::sync::Arc;

fn host() -> Option<Arc<Emulator>> {
    match Emulator::new() {
        Ok(e) => Some(e),
        Err(why) if std::env::var_os("NST_REQUIRE_EMULATOR").is_some() => {
            panic!("NST_REQUIRE_EMULATOR is set but {why}")
        }
        Err(why) => {
            eprintln!("SKIPPED host shim: {why}");
            None
        }
    }
}

/// A kernel argument from a host value or pointer (the emulator's device pointers are host
/// addresses).
trait ToArg {
    fn to_arg(&self) -> Arg;
}
macro_rules! pointer_args {
    ($($t:ty),*) => {$(
        impl ToArg for *const $t {
            fn to_arg(&self) -> Arg { Arg::Ptr(*self as u64) }
        }
        impl ToArg for *mut $t {
            fn to_arg(&self) -> Arg { Arg::Ptr(*self as u64) }
        }
    )*};
}
pointer_args!(f32, f64, i32, u32, u8);
impl ToArg for i32 {
    fn to_arg(&self) -> Arg {
        Arg::I32(*self)
    }
}
impl ToArg for i64 {
    fn to_arg(&self) -> Arg {
        Arg::I64(*self)
    }
}
impl ToArg for f32 {
    fn to_arg(&self) -> Arg {
        Arg::F32(*self)
    }
}

/// The GPU's threads a block (`Gpu` launches 256). The emulator runs 32 of them, or all
/// with `NST_EMULATOR_FULL_BLOCKS=1` (the sanitizer reruns).
const BLOCK: u32 = 256;

/// `launch!(host, "name"; a, b, c)`: the (already bound) argument variables, in order. 3
/// blocks of [`BLOCK`] threads (the emulator runs at most 2: grid-stride loops wrap for every
/// size used here).
macro_rules! launch {
    ($host:expr, $name:expr; $($arg:ident),*) => {{
        let args = [$($arg.to_arg()),*];
        // SAFETY: each call site binds the kernel's parameters in order, with host arrays of
        // the sizes the kernel indexes.
        unsafe { $host.launch($name, 3, BLOCK, &args) }.unwrap()
    }};
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    // A small LCG: reproducible, no extra dependency; values in [-1, 1) with some exact ties.
    let mut s = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            ((s >> 8) % 64) as f32 / 32.0 - 1.0
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f32], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= tol * (1.0 + w.abs()) || (g.is_nan() && w.is_nan()),
            "{what}[{i}]: {g} vs {w}"
        );
    }
}

#[test]
fn the_shim_runs_every_kernel_nvrtc_compiles() {
    let Some(_) = host() else { return };
    let mut got = emulator::kernel_names().unwrap();
    let mut want: Vec<String> = nst_cuda::kernels::KERNEL_NAMES
        .iter()
        .map(|s| s.to_string())
        .collect();
    got.sort();
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn elementwise_relu_and_adam_match_nst_cpu() {
    let Some(h) = host() else { return };
    let n = 1000usize;
    let (x, y) = (values(n, 1), values(n, 2));
    let (xp, yp, len) = (x.as_ptr(), y.as_ptr(), n as i64);

    let (a, b) = (0.75f32, -1.5f32);
    let mut out = vec![f32::NAN; n];
    let op = out.as_mut_ptr();
    launch!(h, "axpby"; a, xp, b, yp, op, len);
    let mut want = vec![0.0; n];
    elementwise::axpby(a, &x, b, &y, &mut want);
    assert_close(&out, &want, 0.0, "axpby");

    launch!(h, "scale"; a, xp, op, len);
    elementwise::scale(&x, a, &mut want);
    assert_close(&out, &want, 0.0, "scale");

    let one = 1.0f32;
    launch!(h, "scaled_mul"; one, xp, yp, op, len);
    elementwise::mul(&x, &y, &mut want);
    assert_close(&out, &want, 0.0, "mul");

    launch!(h, "relu_forward"; xp, op, len);
    relu::relu_forward(&x, &mut want);
    assert_close(&out, &want, 0.0, "relu forward");

    // The packed mask of a frozen layer, at a length that is not a multiple of 32, with
    // zeros and NaN: the same words as on the CPU, and the same masked gradient.
    let mut signs = x.clone();
    signs[7] = 0.0;
    signs[8] = -0.0;
    signs[40] = f32::NAN;
    let words = relu::relu_mask_words(n);
    let (sp, mut bits, mut want_bits) = (signs.as_ptr(), vec![u32::MAX; words], vec![0; words]);
    let bp = bits.as_mut_ptr();
    launch!(h, "relu_mask_pack"; sp, bp, len);
    relu::relu_mask_pack(&signs, &mut want_bits);
    assert_eq!(bits, want_bits, "relu mask bits");
    let (mut dy, mut want_dy) = (y.clone(), y.clone());
    let (cbp, dyp) = (bits.as_ptr(), dy.as_mut_ptr());
    launch!(h, "relu_mask_apply"; cbp, dyp, len);
    relu::relu_mask_apply(&want_bits, &mut want_dy);
    assert_close(&dy, &want_dy, 0.0, "relu mask apply");

    let p = AdamParams {
        lr: 0.1,
        beta1: 0.9,
        beta2: 0.999,
        eps: 1e-8,
        step: 3,
    };
    let (mut xs, mut m, mut v) = (
        x.clone(),
        values(n, 3),
        values(n, 4).iter().map(|v| v * v).collect::<Vec<_>>(),
    );
    let (mut xc, mut mc, mut vc) = (xs.clone(), m.clone(), v.clone());
    let (xsp, gp, mp, vp) = (xs.as_mut_ptr(), yp, m.as_mut_ptr(), v.as_mut_ptr());
    let (lr, b1, b2, eps) = (p.lr, p.beta1, p.beta2, p.eps);
    // black_box: constant-folding 1 − β₂ᵗ here (release builds do) can round differently
    // from nst-cpu's run-time powi, and the cancellation makes that 1e-6 in x.
    let q = std::hint::black_box(p);
    let (c1, c2) = (q.correction1(), q.correction2());
    launch!(h, "adam_update"; xsp, gp, mp, vp, lr, b1, b2, eps, c1, c2, len);
    elementwise::adam_update(&mut xc, &y, &mut mc, &mut vc, &p);
    assert_close(&xs, &xc, 0.0, "adam x");
    assert_close(&m, &mc, 0.0, "adam m");
    assert_close(&v, &vc, 0.0, "adam v");
}

/// relu_mask_pack with several warps a block, which the emulator's own launches (one warp a
/// block) never have: each warp packs chunks of 32 words through shared memory and
/// `__syncwarp`. 3 blocks of 96 threads, one of 1024 and 2 of 32, at lengths that leave the
/// last word and the last chunk partial, and (40 000 values: 40 chunks) with warps that do
/// several chunks, give nst-cpu's words. A block size CUDA refuses is an error.
#[test]
fn relu_masks_in_blocks_of_several_warps() {
    let Some(h) = host() else { return };
    for n in [1usize, 31, 33, 1000, 5000, 40_000] {
        let mut y = values(n, 9);
        if n > 40 {
            (y[7], y[8], y[40]) = (0.0, -0.0, f32::NAN);
        }
        let mut want = vec![0; relu::relu_mask_words(n)];
        relu::relu_mask_pack(&y, &mut want);
        for (grid, block) in [(3, 96), (1, 1024), (2, 32)] {
            let mut bits = vec![u32::MAX; want.len()];
            let (yp, bp, len) = (y.as_ptr(), bits.as_mut_ptr(), n as i64);
            let args = [yp.to_arg(), bp.to_arg(), len.to_arg()];
            // SAFETY: y holds n values, bits ⌈n/32⌉ words; the kernel is grid-stride.
            unsafe { h.launch_exactly("relu_mask_pack", grid, block, &args) }.unwrap();
            assert_eq!(bits, want, "n = {n}, {grid} blocks of {block}");
        }
    }
    for block in [0, 1025] {
        // SAFETY: refused before any argument is read.
        let err = unsafe { h.launch_exactly("relu_forward", 1, block, &[]) }.unwrap_err();
        assert!(err.contains("not a CUDA block size"), "{err}");
    }
}

#[test]
fn reductions_match_nst_cpu_and_propagate_nan() {
    let Some(h) = host() else { return };
    let n = 2500usize;
    let (a, b) = (values(n, 5), values(n, 6));
    let (ap, bp, len) = (a.as_ptr(), b.as_ptr(), n as i64);
    let sums = [
        (
            0,
            a.iter()
                .zip(&b)
                .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
                .sum::<f64>(),
        ),
        (1, elementwise::dot(&a, &b)),
        (2, elementwise::abs_sum(&a)),
        (3, elementwise::sum(&a)),
    ];
    for (op, want) in sums {
        // One partial per block of the grid (NaN first, so a block that writes none shows),
        // then one block adds them.
        let blocks = nst_cuda::emulator::MAX_BLOCKS as i64;
        let (mut partial, mut out) = (vec![f64::NAN; blocks as usize], f64::NAN);
        let (pp, outp, op_c) = (partial.as_mut_ptr(), &mut out as *mut f64, op);
        let args = [
            ap.to_arg(),
            bp.to_arg(),
            pp.to_arg(),
            len.to_arg(),
            op_c.to_arg(),
        ];
        // SAFETY: a and b hold len values, partial one double per block.
        unsafe { h.launch("reduce_partial", blocks as u32, BLOCK, &args) }.unwrap();
        let (pc, scale) = (partial.as_ptr(), 1.0f64);
        let args = [pc.to_arg(), outp.to_arg(), blocks.to_arg(), Arg::F64(scale)];
        // SAFETY: MAX_BLOCKS partials in, one double out.
        unsafe { h.launch("reduce_finish", 1, BLOCK, &args) }.unwrap();
        assert!(partial.iter().all(|p| p.is_finite()), "{partial:?}");
        assert!(
            (out - want).abs() <= 1e-9 * want.abs().max(1.0),
            "reduce op {op}: {out} vs {want}"
        );
    }
    for (what, mut data) in [("finite", a.clone()), ("with a NaN", a.clone())] {
        if what == "with a NaN" {
            data[1234] = f32::NAN;
        }
        let mut bits = 0i32;
        let (dp, outp) = (data.as_ptr(), &mut bits as *mut i32);
        launch!(h, "abs_max"; dp, outp, len);
        let got = f32::from_bits(bits as u32);
        let want = elementwise::abs_max(&data);
        assert!(
            got == want || (got.is_nan() && want.is_nan()),
            "abs_max {what}: {got} vs {want}"
        );
    }
}

#[test]
fn pooling_matches_nst_cpu_with_ties_and_nan() {
    let Some(h) = host() else { return };
    let p = pool::Pool2dParams {
        planes: 3,
        in_h: 7,
        in_w: 9,
    };
    let mut x = values(p.input_len(), 7);
    x[10] = f32::NAN;
    let dy = values(p.output_len(), 8);
    let (xp, dyp) = (x.as_ptr(), dy.as_ptr());
    // NCHW: one "image" per plane, of one channel (see kernels.cu's pool_window).
    let (planes, one, hh, ww, oh, ow) = (
        p.planes as i64,
        1i32,
        p.in_h as i32,
        p.in_w as i32,
        p.out_h() as i32,
        p.out_w() as i32,
    );

    let mut y = vec![0.0f32; p.output_len()];
    let mut arg = vec![9u8; p.output_len()];
    let (yp, argp) = (y.as_mut_ptr(), arg.as_mut_ptr());
    launch!(h, "max_pool2x2_forward"; xp, yp, argp, planes, one, hh, ww, oh, ow);
    let (mut want_y, mut want_arg) = (vec![0.0; p.output_len()], vec![0u8; p.output_len()]);
    pool::max_pool_forward(&p, &x, &mut want_y, &mut want_arg);
    assert_close(&y, &want_y, 0.0, "max pool y");
    assert_eq!(arg, want_arg, "max pool argmax");

    let mut dx = vec![0.0f32; p.input_len()];
    let (argc, dxp) = (arg.as_ptr(), dx.as_mut_ptr());
    launch!(h, "max_pool2x2_backward"; dyp, argc, dxp, planes, one, hh, ww, oh, ow);
    let mut want_dx = vec![0.0; p.input_len()];
    pool::max_pool_backward(&p, &dy, &want_arg, &mut want_dx);
    assert_close(&dx, &want_dx, 0.0, "max pool dx");

    launch!(h, "avg_pool2x2_forward"; xp, yp, planes, one, hh, ww, oh, ow);
    pool::avg_pool_forward(&p, &x, &mut want_y);
    assert_close(&y, &want_y, 1e-7, "avg pool y");
    dx.fill(0.0);
    launch!(h, "avg_pool2x2_backward"; dyp, dxp, planes, one, hh, ww, oh, ow);
    pool::avg_pool_backward(&p, &dy, &mut want_dx);
    assert_close(&dx, &want_dx, 0.0, "avg pool dx");
}

/// im2col over a band of output positions, against the patch matrix of the whole image
/// (built here from its definition): every band is the matching columns.
#[test]
fn im2col_bands_are_columns_of_the_whole_patch_matrix() {
    let Some(h) = host() else { return };
    for (stride, pad) in [(1, 1), (2, 1), (1, 0)] {
        let (cin, hh, ww, kh, kw) = (3usize, 9usize, 8usize, 3usize, 2usize);
        let (oh, ow) = (
            (hh + 2 * pad - kh) / stride + 1,
            (ww + 2 * pad - kw) / stride + 1,
        );
        let x = values(cin * hh * ww, 9);
        let k = cin * kh * kw;
        let mut whole = vec![0.0f32; k * oh * ow];
        for (kk, row) in whole.chunks_mut(oh * ow).enumerate() {
            let (ci, ky, kx) = (kk / (kh * kw), (kk / kw) % kh, kk % kw);
            for (p, v) in row.iter_mut().enumerate() {
                let (iy, ix) = (
                    (p / ow * stride + ky) as isize - pad as isize,
                    (p % ow * stride + kx) as isize - pad as isize,
                );
                if iy >= 0 && ix >= 0 && (iy as usize) < hh && (ix as usize) < ww {
                    *v = x[(ci * hh + iy as usize) * ww + ix as usize];
                }
            }
        }
        for (p0, np) in [(0, oh * ow), (ow, 2 * ow), (3, 5)] {
            let mut cols = vec![f32::NAN; k * np];
            let (xp, colsp) = (x.as_ptr(), cols.as_mut_ptr());
            let [cin_a, h_a, w_a, kh_a, kw_a, st, pd, ow_a] =
                [cin, hh, ww, kh, kw, stride, pad, ow].map(|v| v as i32);
            let (p0, np) = (p0 as i64, np as i64);
            launch!(h, "im2col"; xp, colsp, cin_a, h_a, w_a, kh_a, kw_a, st, pd, ow_a, p0, np);
            let want: Vec<f32> = whole
                .chunks(oh * ow)
                .flat_map(|row| row[p0 as usize..(p0 + np) as usize].to_vec())
                .collect();
            assert_close(
                &cols,
                &want,
                0.0,
                &format!("im2col stride {stride} pad {pad} band {p0}+{np}"),
            );
        }
    }
}

#[test]
fn bias_and_relu_in_one_pass_match_bias_then_relu() {
    let Some(h) = host() else { return };
    // 2 images × 3 channels of 7 values (planes of an odd size), a NaN and a -0.0.
    let (channels, planes, hw) = (3i32, 6i64, 7i32);
    let mut y = values((planes * hw as i64) as usize, 9);
    (y[5], y[20]) = (f32::NAN, -0.0);
    let b = [0.5f32, -0.25, 0.0];
    let mut want = y.clone();
    for (i, v) in want.iter_mut().enumerate() {
        let sum = *v + b[(i / hw as usize) % channels as usize];
        *v = if sum > 0.0 { sum } else { 0.0 };
    }
    let before = y.clone();
    let (yp, bp) = (y.as_mut_ptr(), b.as_ptr());
    launch!(h, "add_bias_relu"; yp, bp, channels, planes, hw);
    assert_close(&y, &want, 0.0, "add_bias_relu");
    assert!(y.iter().all(|v| *v >= 0.0), "ReLU output: {y:?}");

    // The same pass making the output's mask as well: the same values, and relu_mask_pack's
    // words of them. 42 values leave the last word partial; blocks of one warp (the
    // emulator's own) and of three.
    let mut want_bits = vec![0; relu::relu_mask_words(want.len())];
    relu::relu_mask_pack(&want, &mut want_bits);
    for (grid, block) in [(3, 32), (2, 96)] {
        let mut y = before.clone();
        let mut bits = vec![u32::MAX; want_bits.len()];
        let (yp, bitsp) = (y.as_mut_ptr(), bits.as_mut_ptr());
        let args = [
            yp.to_arg(),
            bp.to_arg(),
            bitsp.to_arg(),
            channels.to_arg(),
            planes.to_arg(),
            hw.to_arg(),
        ];
        // SAFETY: y holds planes·hw values, b one per channel, bits ⌈len/32⌉ words.
        unsafe { h.launch_exactly("add_bias_relu_mask", grid, block, &args) }.unwrap();
        assert_close(&y, &want, 0.0, "add_bias_relu_mask values");
        assert_eq!(
            bits, want_bits,
            "add_bias_relu_mask bits, {grid} blocks of {block}"
        );
    }
}

/// Every test above again, with the kernels under AddressSanitizer (each host array's end
/// is guarded, so a kernel reading one value past it fails) and under ThreadSanitizer (a
/// missing `__syncthreads`, or the mask kernels' shared array without its double buffer,
/// is a reported race even when the threads happened to run in a harmless order). Both
/// mutations, tried, fail this test.
#[test]
fn the_kernels_pass_under_address_and_thread_sanitizers() {
    common::rerun_under_sanitizers(&["the_kernels_pass_under_address_and_thread_sanitizers"]);
}
