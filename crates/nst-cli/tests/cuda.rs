//! The whole `nst` run on the CUDA backend, on machines without a GPU: `--device
//! cuda-emulated` (hidden from `--help`) runs every CUDA kernel and cuBLAS call of the run —
//! VGG-19, the losses, their gradients, L-BFGS — through the emulator (`nst_cuda::emulator`).
//! It checks the pipeline's device plumbing end to end and the out-of-memory contract: a GPU
//! that runs out of memory at a larger scale gives a one-line error naming the size that
//! failed, and the previous scale's image is written.
//!
//! Needs g++ (the emulator compiles the kernels with it); without it the tests print SKIPPED.
//! On a GPU machine, `scripts/device-check.sh` runs the same image with `--device cuda`.

mod common;

use common::*;

fn emulator_or_skip(test: &str) -> bool {
    match nst_tensor::Device::cuda_emulated() {
        Ok(_) => true,
        Err(e) if std::env::var_os("NST_REQUIRE_EMULATOR").is_some() => {
            panic!("NST_REQUIRE_EMULATOR is set but {e}")
        }
        Err(e) => {
            eprintln!("SKIPPED {test}: {e}");
            false
        }
    }
}

fn report(path: &std::path::Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn total(report: &serde_json::Value, k: usize) -> f64 {
    report["trace"][k]["total"].as_f64().unwrap()
}

#[test]
fn the_cuda_path_matches_the_cpu_end_to_end() {
    if !emulator_or_skip("the_cuda_path_matches_the_cpu_end_to_end") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut reports = vec![];
    for (device, precision) in [
        ("cpu", "fp32"),
        ("cuda-emulated", "fp32"),
        ("cuda-emulated", "tf32"),
    ] {
        let (out, rep) = (
            dir.path().join(format!("{device}-{precision}.png")),
            dir.path().join(format!("{device}-{precision}.json")),
        );
        run_ok(&with(
            tiny(&out),
            &[
                "--device",
                device,
                "--precision",
                precision,
                "--report",
                path_str(&rep),
            ],
        ));
        assert_eq!(image::image_dimensions(&out).unwrap(), (64, 43));
        reports.push(report(&rep));
    }
    let (cpu, cuda, tf32) = (&reports[0], &reports[1], &reports[2]);
    assert_eq!(cuda["device"], "cuda emulator");
    assert_eq!(tf32["device"], "cuda emulator, tf32");
    // TF32 convolutions change the loss by their rounding (2⁻¹¹ relative per operand), no
    // more.
    let (a, b) = (total(cuda, 0), total(tf32, 0));
    let tf32_change = ((a - b) / a).abs();
    assert!(
        tf32_change > 1e-7 && tf32_change < 1e-2,
        "loss at the start: fp32 {a} vs tf32 {b}"
    );
    // The same start image: the loss there depends only on the kernels, and agrees to f32
    // rounding (the CPU's convolutions are Winograd, the CUDA path's im2col + SGEMM).
    let (a, b) = (total(cpu, 0), total(cuda, 0));
    assert!(
        ((a - b) / a).abs() <= 1e-4,
        "loss at the start: cpu {a} vs cuda {b}"
    );
    // Six L-BFGS steps amplify those differences a little, no more.
    let last = cpu["trace"].as_array().unwrap().len() - 1;
    let (a, b) = (total(cpu, last), total(cuda, last));
    assert!(
        ((a - b) / a).abs() <= 2e-2,
        "loss after {last} iterations: cpu {a} vs cuda {b}"
    );
    assert!(b < total(cuda, 0) * 0.9, "the CUDA run optimises: {b}");
}

/// `NST_CUDA_LAYOUT=nhwc` on a device with a convolution library (the emulator's stand-in for
/// cuDNN): the device line says so, and the run computes what the NCHW run does, up to the
/// summation order of its Gram matrices and losses. So does a library that takes only 100 000
/// values a tensor (cuDNN: 2³¹ − 1), where every convolution runs in groups of channels (of
/// the planes: the first two blocks; of the weights: the others). In fp32: TF32's rounding
/// noise makes L-BFGS's first steps erratic (see the README's `--precision`), and one run
/// with OpenBLAS's SGEMMs ended 10% apart after 6 tf32 iterations.
#[test]
fn nhwc_activations_and_convolutions_in_channel_groups_give_the_plain_run() {
    if !emulator_or_skip("nhwc_activations_and_convolutions_in_channel_groups_give_the_plain_run") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut reports = vec![];
    for (name, layout, most) in [
        ("nchw", "nchw", None),
        ("nhwc", "nhwc", None),
        ("groups", "nchw", Some("100000")),
    ] {
        let (out, rep) = (
            dir.path().join(format!("{name}.png")),
            dir.path().join(format!("{name}.json")),
        );
        let args = with(
            tiny(&out),
            &[
                "--device",
                "cuda-emulated",
                "--precision",
                "fp32",
                "--report",
                path_str(&rep),
            ],
        );
        let mut env = vec![
            ("NST_EMULATOR_CONV_LIBRARY", "1"),
            ("NST_CUDA_LAYOUT", layout),
            ("NST_CACHE_DIR", ""),
        ];
        env.extend(most.map(|m| ("NST_EMULATOR_LIBRARY_MAX_ELEMENTS", m)));
        run_ok_with_env(&args, &env);
        reports.push(report(&rep));
    }
    let nchw = &reports[0];
    assert_eq!(nchw["device"], "cuda emulator");
    assert_eq!(reports[1]["device"], "cuda emulator, nhwc");
    assert_eq!(
        reports[1]["settings"]["layout"], "nhwc",
        "{}",
        reports[1]["settings"]
    );
    for (name, other) in [("nhwc", &reports[1]), ("groups", &reports[2])] {
        let (a, b) = (total(nchw, 0), total(other, 0));
        assert!(
            ((a - b) / a).abs() <= 1e-5,
            "loss at the start: nchw {a} vs {name} {b}"
        );
        let last = nchw["trace"].as_array().unwrap().len() - 1;
        let (a, b) = (total(nchw, last), total(other, last));
        assert!(
            ((a - b) / a).abs() <= 2e-2,
            "after {last} iterations: nchw {a} vs {name} {b}"
        );
    }
    // The limit reaches the run: one below a channel's plane is a one-line error.
    let out = dir.path().join("small.png");
    let o = std::process::Command::new(NST)
        .args(with(tiny(&out), &["--device", "cuda-emulated"]))
        .env("NST_EMULATOR_CONV_LIBRARY", "1")
        .env("NST_EMULATOR_LIBRARY_MAX_ELEMENTS", "1000")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("one channel is over it"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // A layout name the run does not know is a one-line error.
    let out = dir.path().join("bad.png");
    let o = std::process::Command::new(NST)
        .args(tiny(&out))
        .env("NST_CUDA_LAYOUT", "nwhc")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("NST_CUDA_LAYOUT: unknown layout"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// 100 MB holds the weights and every buffer of the first scale (91×61) but not the second
/// (128×85): past the memory preflight (told there is plenty), the run must stop there with
/// the previous scale's image written.
#[test]
fn running_out_of_gpu_memory_keeps_the_previous_scale() {
    if !emulator_or_skip("running_out_of_gpu_memory_keeps_the_previous_scale") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let o = std::process::Command::new(NST)
        .args([
            "-c",
            CONTENT,
            "-s",
            STYLE,
            "-o",
            path_str(&out),
            "--size",
            "128",
            "--scales",
            "2",
            "--iters",
            "3",
            "--device",
            "cuda-emulated",
            "-q",
        ])
        .env("NST_EMULATOR_MEMORY_LIMIT", "100000000")
        // Past the preflight (which would refuse this size), to run out part-way.
        .env("NST_GPU_MEMORY_LIMIT", "100G")
        .env("RUST_BACKTRACE", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    for needle in [
        "error: the GPU could not allocate",
        "MiB",
        "try a smaller --size",
        "(scale 2, iteration 0)",
        "wrote the best image so far to",
    ] {
        assert!(stderr.contains(needle), "no {needle:?} in: {stderr}");
    }
    assert_eq!(image::image_dimensions(&out).unwrap(), (128, 85));
}

/// The memory preflight on a GPU: the emulator reports 100 MB free, less than the estimate for
/// 128 px, so the run is refused before it starts — one line naming the estimate, what is
/// free and the largest size that fits, no output — and a size that fits runs.
#[test]
fn the_gpu_memory_preflight_refuses_what_cannot_fit() {
    if !emulator_or_skip("the_gpu_memory_preflight_refuses_what_cannot_fit") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let args = with(
        tiny(&out),
        &[
            "--size",
            "128",
            "--scales",
            "1",
            "--device",
            "cuda-emulated",
        ],
    );
    let run = |limit: &str| {
        std::process::Command::new(NST)
            .args(&args)
            .env("NST_EMULATOR_MEMORY_LIMIT", limit)
            .env("RUST_BACKTRACE", "1")
            .output()
            .unwrap()
    };
    let o = run("100000000");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    for needle in [
        "error: --size 128 needs about",
        // With 10 iterations the history asked for is 10 pairs; the figures assume 5.
        "of GPU memory (estimated peak, with 5 L-BFGS pairs) but 95 MiB is available",
        "the largest --size that fits is about",
        "NST_GPU_MEMORY_LIMIT",
    ] {
        assert!(stderr.contains(needle), "no {needle:?} in: {stderr}");
    }
    assert!(!out.exists(), "a refused run wrote {}", out.display());
    let suggested: u32 = stderr
        .split("fits is about ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|s| s.parse().ok())
        .expect("a suggested size");
    assert!((16..128).contains(&suggested), "{stderr}");
    // The suggested size runs within the same limit.
    run_ok_with_env(
        &with(args.clone(), &["--size", &suggested.to_string()]),
        &[("NST_EMULATOR_MEMORY_LIMIT", "100000000")],
    );
}

#[test]
fn the_cuda_profile_is_printed_at_the_end_when_asked_for() {
    if !emulator_or_skip("the_cuda_profile_is_printed_at_the_end_when_asked_for") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let args = with(tiny(&out), &["--device", "cuda-emulated", "--iters", "2"]);
    let o = run_ok_with_env(&args, &[("NST_CUDA_PROFILE", "1")]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.starts_with("GPU time per operation (NST_CUDA_PROFILE): "),
        "{stderr}"
    );
    // A convolution's bias and ReLU, and L-BFGS's fused steps, are among the rows.
    for kernel in ["× add_bias_relu", "× axpy_coef_dot", "× sgemm "] {
        assert!(stderr.contains(kernel), "no {kernel} in {stderr}");
    }
    // Without the variable, nothing of it.
    let o = run_ok(&args);
    assert!(!String::from_utf8_lossy(&o.stderr).contains("GPU time"));
}

/// The convolution-algorithm choices in a run's profile (`NST_CUDA_PROFILE=1`): calls, then
/// the rest of the name after `conv algorithm ` (`search: forward 3→64 3×3 at 43×64`).
fn algorithm_choices(stderr: &str) -> Vec<(u64, String)> {
    stderr
        .lines()
        .filter_map(|l| l.split_once(" × conv algorithm "))
        .map(|(before, name)| {
            let calls = before.split_whitespace().last().unwrap().parse().unwrap();
            (calls, name.to_string())
        })
        .collect()
}

/// On a GPU, the image's convolutions search for their fastest algorithms (every candidate
/// run once) at the final scale only; the targets' features and the first scale take cuDNN's
/// heuristic pick. The emulator's stand-in library (`NST_EMULATOR_CONV_LIBRARY=1`) chooses
/// by the same rule, and the profile names each choice.
#[test]
fn algorithms_are_searched_for_at_the_final_scale_only() {
    if !emulator_or_skip("algorithms_are_searched_for_at_the_final_scale_only") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (out, rep) = (dir.path().join("out.png"), dir.path().join("out.json"));
    let args = with(
        tiny(&out),
        &[
            "--device",
            "cuda-emulated",
            "--scales",
            "2",
            "--iters",
            "1",
            "--report",
            path_str(&rep),
        ],
    );
    // No remembered choices (a developer's NST_CACHE_DIR would give the final scale's).
    let env = [
        ("NST_CUDA_PROFILE", "1"),
        ("NST_EMULATOR_CONV_LIBRARY", "1"),
        ("NST_CACHE_DIR", ""),
    ];
    let o = run_ok_with_env(&args, &env);
    let choices = algorithm_choices(&String::from_utf8_lossy(&o.stderr));
    let scales = report(&rep)["timing"]["scales"].clone();
    let first_conv = |scale: usize, direction: &str| {
        let (w, h) = (&scales[scale]["width"], &scales[scale]["height"]);
        format!("{direction} 3→64 3×3 at {h}×{w}")
    };
    let searched: Vec<&str> = choices
        .iter()
        .filter_map(|(_, n)| n.strip_prefix("search: "))
        .collect();
    let has = |how: &str, what: &str| choices.iter().any(|(_, n)| *n == format!("{how}: {what}"));

    // Each shape is searched once, in both directions, all at the final scale: its first
    // layer is among them, the first scale's is not.
    assert!(choices.iter().all(|(calls, _)| *calls == 1), "{choices:?}");
    let (forward, backward): (Vec<_>, Vec<_>) =
        searched.iter().partition(|n| n.starts_with("forward "));
    assert!(forward.len() >= 5, "{choices:?}");
    let shapes = |v: &[&&str]| -> Vec<String> {
        let mut s: Vec<_> = v
            .iter()
            .map(|n| n.split_once(' ').unwrap().1.into())
            .collect();
        s.sort();
        s
    };
    assert_eq!(shapes(&forward), shapes(&backward), "{choices:?}");
    assert!(has("search", &first_conv(1, "forward")), "{choices:?}");
    assert!(
        has("search", &first_conv(1, "backward-data")),
        "{choices:?}"
    );
    let (h0, w0) = (&scales[0]["height"], &scales[0]["width"]);
    assert!(
        !searched
            .iter()
            .any(|n| n.ends_with(&format!(" at {h0}×{w0}"))),
        "{choices:?}"
    );
    // The first scale's image, and the content's features at the final scale (computed before
    // the image's first step), took the heuristic pick.
    assert!(has("heuristics", &first_conv(0, "forward")), "{choices:?}");
    assert!(
        has("heuristics", &first_conv(0, "backward-data")),
        "{choices:?}"
    );
    assert!(has("heuristics", &first_conv(1, "forward")), "{choices:?}");

    // NST_SEARCH_EVERY_SCALE=1: every shape searches, the first scale's and the targets'.
    let env = [("NST_SEARCH_EVERY_SCALE", "1"), env[0], env[1], env[2]];
    let o = run_ok_with_env(&args, &env);
    let choices = algorithm_choices(&String::from_utf8_lossy(&o.stderr));
    let has = |how: &str, what: &str| choices.iter().any(|(_, n)| *n == format!("{how}: {what}"));
    assert!(
        has("search", &first_conv(0, "backward-data")),
        "{choices:?}"
    );
    assert!(
        has("search", &first_conv(1, "backward-data")),
        "{choices:?}"
    );
    let heuristic = choices.iter().find(|(_, n)| n.starts_with("heuristics: "));
    assert!(heuristic.is_none(), "{choices:?}");
}

/// A search's result is kept on disk (`NST_CACHE_DIR`, standing in for `~/.cache/nst`): the
/// next run at the same sizes and precision takes the remembered algorithms and searches
/// nothing; another precision searches afresh.
#[test]
fn measured_algorithms_are_remembered_by_the_next_run() {
    if !emulator_or_skip("measured_algorithms_are_remembered_by_the_next_run") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let out = dir.path().join("out.png");
    let args = with(
        tiny(&out),
        &["--device", "cuda-emulated", "--scales", "1", "--iters", "1"],
    );
    let env = [
        ("NST_CUDA_PROFILE", "1"),
        ("NST_EMULATOR_CONV_LIBRARY", "1"),
        ("NST_CACHE_DIR", path_str(&cache)),
    ];
    let count = |choices: &[(u64, String)], how: &str| {
        choices.iter().filter(|(_, n)| n.starts_with(how)).count()
    };
    let choices = |args: &[String]| {
        algorithm_choices(&String::from_utf8_lossy(
            &run_ok_with_env(args, &env).stderr,
        ))
    };

    let first = choices(&args);
    let searched = count(&first, "search: ");
    assert!(searched >= 10, "{first:?}");
    assert_eq!(count(&first, "remembered: "), 0, "{first:?}");
    let file = std::fs::read_to_string(cache.join("conv-algorithms-v2.tsv")).unwrap();
    assert_eq!(file.lines().count(), searched, "{file}");

    let second = choices(&args);
    assert_eq!(count(&second, "search: "), 0, "{second:?}");
    assert_eq!(count(&second, "remembered: "), searched, "{second:?}");
    // The heuristic picks (the targets' features, here the content's at the image's shapes
    // among them) are made as in the first run: what a run computes does not depend on what
    // earlier runs measured.
    let heuristics = |c: &[(u64, String)]| -> Vec<String> {
        let mut h: Vec<_> = c
            .iter()
            .filter(|(_, n)| n.starts_with("heuristics: "))
            .map(|(_, n)| n.clone())
            .collect();
        h.sort();
        h
    };
    assert!(!heuristics(&first).is_empty(), "{first:?}");
    assert_eq!(heuristics(&first), heuristics(&second));

    // The default is tf32; f32 convolutions are other choices.
    let fp32 = choices(&with(args.clone(), &["--precision", "fp32"]));
    assert_eq!(count(&fp32, "search: "), searched, "{fp32:?}");
    assert_eq!(count(&fp32, "remembered: "), 0, "{fp32:?}");
}
