//! The CUDA kernels of `kernels.cu`, compiled as C++ for the host through a small shim
//! (`host/cuda_host.h`, `host/launch.cpp`) and run on the CPU against the nst-cpu kernels.
//! This checks their indexing, grid-stride loops, shared-memory reductions, atomics and
//! argument order without a GPU (what NVRTC in CI cannot: it only compiles them). Arguments
//! are passed as cuLaunchKernel takes them, an array of pointers to each value.
//!
//! Needs `g++` (C++20); without it the tests print SKIPPED and the reason.

use nst_cpu::{conv, elementwise, pool, relu, AdamParams, Conv2dParams, ConvAlgorithm};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr, CString};
use std::io::Write;
use std::path::PathBuf;
use std::sync::OnceLock;

type Launch = unsafe extern "C" fn(*const c_char, c_uint, c_uint, *mut *mut c_void) -> c_int;

/// The compiled shim, loaded once per test process.
struct Host {
    lib: libloading::Library,
}

fn host() -> Option<&'static Host> {
    static HOST: OnceLock<Result<Host, String>> = OnceLock::new();
    let host = HOST.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("host");
        let lib = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("libnst_cuda_host.so");
        let out = std::process::Command::new("g++")
            .args([
                "-std=c++20",
                "-O1",
                "-shared",
                "-fPIC",
                "-pthread",
                "-Wall",
                "-Werror",
                "-o",
            ])
            .arg(&lib)
            .arg(dir.join("launch.cpp"))
            .output()
            .map_err(|e| format!("cannot run g++: {e}"))?;
        if !out.status.success() {
            panic!(
                "the shim does not compile:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        // SAFETY: our own library, built just above; its initialisers do nothing unusual.
        let lib = unsafe { libloading::Library::new(&lib) }.map_err(|e| e.to_string())?;
        Ok(Host { lib })
    });
    match host {
        Ok(h) => Some(h),
        Err(why) => {
            let _ = writeln!(std::io::stderr().lock(), "SKIPPED host shim: {why}");
            None
        }
    }
}

impl Host {
    /// Runs kernel `name` on `grid` blocks of `block` threads.
    fn launch(&self, name: &str, grid: u32, block: u32, params: &mut [*mut c_void]) {
        // SAFETY: the symbol has the `Launch` signature (launch.cpp); `params` point at live
        // values of the kernel's argument types, checked by each call site below.
        let rc = unsafe {
            let f: libloading::Symbol<Launch> = self.lib.get(b"nst_launch").unwrap();
            f(
                CString::new(name).unwrap().as_ptr(),
                grid,
                block,
                params.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0, "unknown kernel {name}");
    }
}

/// `launch!(host, "name"; a, b, c)`: pointers to the (already bound) argument variables, in
/// order, as cuLaunchKernel takes them. 3 blocks of 32 threads: several blocks and a
/// grid-stride loop that wraps for every size used here.
macro_rules! launch {
    ($host:expr, $name:expr; $($arg:ident),*) => {{
        let mut params: Vec<*mut c_void> = vec![$(&$arg as *const _ as *mut c_void),*];
        $host.launch($name, 3, 32, &mut params)
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
    let Some(h) = host() else { return };
    // SAFETY: symbols of launch.cpp with these signatures.
    let names: Vec<String> = unsafe {
        let count: libloading::Symbol<unsafe extern "C" fn() -> c_int> =
            h.lib.get(b"nst_kernel_count").unwrap();
        let name: libloading::Symbol<unsafe extern "C" fn(c_int) -> *const c_char> =
            h.lib.get(b"nst_kernel_name").unwrap();
        (0..count())
            .map(|i| CStr::from_ptr(name(i)).to_string_lossy().into_owned())
            .collect()
    };
    let mut want: Vec<String> = nst_cuda::kernels::KERNEL_NAMES
        .iter()
        .map(|s| s.to_string())
        .collect();
    let mut got = names;
    want.sort();
    got.sort();
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

    launch!(h, "mul"; xp, yp, op, len);
    elementwise::mul(&x, &y, &mut want);
    assert_close(&out, &want, 0.0, "mul");

    launch!(h, "relu_forward"; xp, op, len);
    relu::relu_forward(&x, &mut want);
    assert_close(&out, &want, 0.0, "relu forward");
    // Backward from the ReLU's output (y = relu(x)), zero at x = 0 as on the CPU.
    let relu_y = want.clone();
    let ry = relu_y.as_ptr();
    launch!(h, "relu_backward"; ry, yp, op, len);
    relu::relu_backward(&relu_y, &y, &mut want);
    assert_close(&out, &want, 0.0, "relu backward");

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
    let (c1, c2) = (p.correction1(), p.correction2());
    launch!(h, "adam_update"; xsp, gp, mp, vp, lr, b1, b2, eps, c1, c2, len);
    elementwise::adam_update(&mut xc, &y, &mut mc, &mut vc, &p);
    assert_close(&xs, &xc, 0.0, "adam x");
    assert_close(&m, &mc, 0.0, "adam m");
    assert_close(&v, &vc, 0.0, "adam v");
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
        let mut out = 0.0f64;
        let (outp, op_c) = (&mut out as *mut f64, op);
        launch!(h, "reduce_sum"; ap, bp, outp, len, op_c);
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
    let (planes, hh, ww, oh, ow) = (
        p.planes as i64,
        p.in_h as i32,
        p.in_w as i32,
        p.out_h() as i32,
        p.out_w() as i32,
    );

    let mut y = vec![0.0f32; p.output_len()];
    let mut arg = vec![0i32; p.output_len()];
    let (yp, argp) = (y.as_mut_ptr(), arg.as_mut_ptr());
    launch!(h, "max_pool2x2_forward"; xp, yp, argp, planes, hh, ww, oh, ow);
    let (mut want_y, mut want_arg) = (vec![0.0; p.output_len()], vec![0u32; p.output_len()]);
    pool::max_pool_forward(&p, &x, &mut want_y, &mut want_arg);
    assert_close(&y, &want_y, 0.0, "max pool y");
    assert_eq!(
        arg.iter().map(|&a| a as u32).collect::<Vec<_>>(),
        want_arg,
        "max pool argmax"
    );

    let mut dx = vec![0.0f32; p.input_len()];
    let (argc, dxp) = (arg.as_ptr(), dx.as_mut_ptr());
    launch!(h, "max_pool2x2_backward"; dyp, argc, dxp, planes, hh, ww, oh, ow);
    let mut want_dx = vec![0.0; p.input_len()];
    pool::max_pool_backward(&p, &dy, &want_arg, &mut want_dx);
    assert_close(&dx, &want_dx, 0.0, "max pool dx");

    launch!(h, "avg_pool2x2_forward"; xp, yp, planes, hh, ww, oh, ow);
    pool::avg_pool_forward(&p, &x, &mut want_y);
    assert_close(&y, &want_y, 1e-7, "avg pool y");
    dx.fill(0.0);
    launch!(h, "avg_pool2x2_backward"; dyp, dxp, planes, hh, ww, oh, ow);
    pool::avg_pool_backward(&p, &dy, &mut want_dx);
    assert_close(&dx, &want_dx, 0.0, "avg pool dx");
}

/// The GPU runtime's convolution (`gpu::Gpu::conv2d_forward`): im2col, the cuBLAS call it
/// issues (run by `blas::Sgemm::run_reference`), the bias, against nst-cpu's convolution;
/// and the flipped kernel of the input gradient.
#[test]
fn convolution_pieces_match_nst_cpu() {
    let Some(h) = host() else { return };
    for (stride, pad) in [(1, 1), (2, 1), (1, 0)] {
        let c = Conv2dParams {
            batch: 1,
            in_channels: 3,
            in_h: 9,
            in_w: 8,
            out_channels: 5,
            kernel_h: 3,
            kernel_w: 3,
            stride,
            pad,
        };
        let (x, w, bias) = (
            values(c.input_len(), 9),
            values(c.weight_len(), 10),
            values(5, 11),
        );
        let (k, pos) = (c.patch_len(), c.out_h() * c.out_w());
        let mut cols = vec![f32::NAN; k * pos];
        let (xp, colsp) = (x.as_ptr(), cols.as_mut_ptr());
        let [cin, hh, ww, kh, kw, st, pd, oh, ow] = [
            c.in_channels,
            c.in_h,
            c.in_w,
            c.kernel_h,
            c.kernel_w,
            c.stride,
            c.pad,
            c.out_h(),
            c.out_w(),
        ]
        .map(|v| v as i32);
        launch!(h, "im2col"; xp, colsp, cin, hh, ww, kh, kw, st, pd, oh, ow);
        let mut y = vec![0.0f32; c.output_len()];
        // The product as the GPU runtime issues it to cuBLAS, run by the host reference.
        let call = nst_cuda::blas::Sgemm::row_major(c.out_channels, k, pos, false, false, 1.0, 0.0);
        call.run_reference(&cols, &w, &mut y);
        let (yp, bp, channels, planes, hw) =
            (y.as_mut_ptr(), bias.as_ptr(), 5i32, 5i64, pos as i32);
        launch!(h, "add_bias"; yp, bp, channels, planes, hw);
        let mut want = vec![0.0; c.output_len()];
        conv::conv2d_forward(&c, ConvAlgorithm::Im2col, &x, &w, Some(&bias), &mut want);
        assert_close(&y, &want, 1e-5, &format!("conv stride {stride} pad {pad}"));
    }
    let c = Conv2dParams {
        batch: 1,
        in_channels: 4,
        in_h: 5,
        in_w: 5,
        out_channels: 6,
        kernel_h: 3,
        kernel_w: 2,
        stride: 1,
        pad: 0,
    };
    let w = values(c.weight_len(), 12);
    let mut wf = vec![0.0f32; w.len()];
    let (wp, wfp) = (w.as_ptr(), wf.as_mut_ptr());
    let [cout, cin, kh, kw] = [6, 4, 3, 2];
    launch!(h, "flip_kernel"; wp, wfp, cout, cin, kh, kw);
    let mut want = vec![0.0; w.len()];
    conv::flip_kernel(&c, &w, &mut want);
    assert_close(&wf, &want, 0.0, "flip_kernel");
}
