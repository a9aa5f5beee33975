//! End-to-end tests of the `nst` binary at tiny sizes: outputs, the JSON report, colour
//! modes, and every kind of bad input (one-line error, non-zero exit, no output file).

mod common;

use common::*;
use std::path::Path;
use std::process::Command;

fn mean_and_finite(path: &Path) -> f64 {
    let img = image::open(path).unwrap().to_rgb8();
    img.as_raw().iter().map(|&v| v as f64).sum::<f64>() / img.as_raw().len() as f64
}

#[test]
fn transfers_style_and_writes_report() {
    let dir = tempfile::tempdir().unwrap();
    let (out, report) = (dir.path().join("out.png"), dir.path().join("report.json"));
    run_ok(&with(
        tiny(&out),
        &[
            "--iters",
            "8",
            "--report",
            path_str(&report),
            "--tv-weight",
            "0.5",
        ],
    ));
    let img = image::open(&out).unwrap();
    // 451×300 with the longest side 64 → 64×43.
    assert_eq!((img.width(), img.height()), (64, 43));
    let mean = mean_and_finite(&out);
    assert!(mean > 20.0 && mean < 235.0, "suspicious image mean {mean}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["interrupted"], false);
    let trace = r["trace"].as_array().unwrap();
    assert_eq!(trace.len(), 9, "trace[0..=iters]");
    let scales = r["timing"]["scales"].as_array().unwrap().len();
    assert_eq!(r["trace_scale"], scales, "the final scale's trace");
    let s = &r["settings"];
    let (a, b, g) = (
        s["content_weight"].as_f64().unwrap(),
        s["style_weight"].as_f64().unwrap(),
        s["tv_weight"].as_f64().unwrap(),
    );
    for (k, t) in trace.iter().enumerate() {
        assert_eq!(t["iter"].as_u64().unwrap() as usize, k);
        let (total, c, st, tv) = (
            t["total"].as_f64().unwrap(),
            t["content"].as_f64().unwrap(),
            t["style"].as_f64().unwrap(),
            t["tv"].as_f64().unwrap(),
        );
        let want = a * c + b * st + g * tv;
        assert!(
            (total - want).abs() <= 1e-4 * want.abs(),
            "total {total} vs α·c + β·s + γ·tv = {want}"
        );
    }
    let (first, last) = (
        trace[0]["total"].as_f64().unwrap(),
        trace[8]["total"].as_f64().unwrap(),
    );
    assert!(last < 0.8 * first, "loss did not fall: {first} → {last}");
    assert!(r["timing"]["ms_per_iter_median"].as_f64().unwrap() > 0.0);
    let total_s = r["timing"]["total_s"].as_f64().unwrap();
    assert!(total_s > 0.0);
    // Where the time went: the setup and each scale, within the whole.
    let scales = r["timing"]["scales"].as_array().unwrap();
    assert_eq!(scales.len(), s["scale_sides"].as_array().unwrap().len());
    let setup_s = r["timing"]["setup_s"].as_f64().unwrap();
    let scales_s: f64 = scales.iter().map(|t| t["total_s"].as_f64().unwrap()).sum();
    assert!(
        setup_s > 0.0 && setup_s + scales_s <= total_s,
        "{setup_s} + {scales_s} > {total_s}"
    );
    for t in scales {
        assert_eq!(t["iterations"], 8, "{t}");
        let before = t["before_first_iter_s"].as_f64().unwrap();
        assert!(
            before > 0.0 && before < t["total_s"].as_f64().unwrap(),
            "{t}"
        );
        assert!(t["ms_per_iter_median"].as_f64().unwrap() > 0.0, "{t}");
    }
    let last = scales.last().unwrap();
    assert_eq!(
        (&last["width"], &last["height"]),
        (&serde_json::json!(64), &serde_json::json!(43))
    );
    assert!(r["device"].as_str().unwrap().starts_with("cpu"));
    // The process's peak memory: more than the 80 MB of weights, less than this machine has.
    let peak = r["peak_rss_bytes"].as_u64().unwrap();
    assert!(peak > 80 << 20 && peak < 24 << 30, "{peak}");
    assert_eq!(r["output"], serde_json::json!([64, 43]));
    assert_eq!(r["memory_mode"], "fast");
    assert_eq!(s["style_layers"][2], "relu3_1");
    // No temporary files are left beside the output.
    assert_eq!(files_in(dir.path()), vec![out, report]);
}

#[test]
fn output_formats_save_every_and_scales() {
    let dir = tempfile::tempdir().unwrap();
    for ext in ["jpg", "jpeg", "webp"] {
        let out = dir.path().join(format!("out.{ext}"));
        run_ok(&tiny(&out));
        let img = image::open(&out).unwrap();
        assert_eq!((img.width(), img.height()), (64, 43), "{ext}");
    }
    let sub = dir.path().join("every");
    std::fs::create_dir(&sub).unwrap();
    let out = sub.join("o.png");
    run_ok(&with(
        tiny(&out),
        &[
            "--size",
            "96",
            "--scales",
            "2",
            "--iters",
            "4",
            "--save-every",
            "2",
        ],
    ));
    let names: Vec<String> = files_in(&sub)
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into())
        .collect();
    assert_eq!(
        names,
        [
            "o.png",
            "o_s1_0002.png",
            "o_s1_0004.png",
            "o_s2_0002.png",
            "o_s2_0004.png"
        ]
    );
    for n in &names {
        let img = image::open(sub.join(n)).unwrap();
        assert_eq!(
            (img.width(), img.height()),
            (96, 64),
            "{n}: intermediates are written at the output size"
        );
    }
}

#[test]
fn input_already_at_size_is_used_unresampled() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    run_ok(&with(
        tiny(&out),
        &[
            "--size",
            "451",
            "--scales",
            "1",
            "--iters",
            "1",
            "--style-weight",
            "0",
        ],
    ));
    // With no style weight and the content as the start, one step barely moves the image:
    // the output must equal the original pixels almost exactly (no resampling blur).
    let (a, b) = (
        image::open(&out).unwrap().to_rgb8(),
        image::open(CONTENT).unwrap().to_rgb8(),
    );
    assert_eq!(a.dimensions(), b.dimensions());
    let diff: f64 = a
        .as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(&x, &y)| (x as f64 - y as f64).abs())
        .sum::<f64>()
        / a.as_raw().len() as f64;
    assert!(diff < 0.5, "mean abs difference {diff}");
}

#[test]
fn colour_modes_blending_inits_and_grayscale_stay_finite() {
    let dir = tempfile::tempdir().unwrap();
    let gray = dir.path().join("gray.png");
    image::open(CONTENT)
        .unwrap()
        .to_luma8()
        .save(&gray)
        .unwrap();
    let gray_style = dir.path().join("gray_style.png");
    image::open(STYLE)
        .unwrap()
        .to_luma8()
        .save(&gray_style)
        .unwrap();
    let cases: Vec<Vec<&str>> = vec![
        vec!["--preserve-colors", "luminance"],
        vec!["--preserve-colors", "match"],
        vec!["--preserve-colors", "match", "-c", path_str(&gray)],
        vec![
            "--preserve-colors",
            "luminance",
            "-c",
            path_str(&gray),
            "-s",
            path_str(&gray_style),
        ],
        vec!["--preserve-colors", "match", "-s", path_str(&gray_style)],
        vec!["-s", path_str(&gray_style), "--style-blend", "3,1"],
        vec!["--init", "noise", "--seed", "7"],
        vec!["--init", STYLE],
        vec!["--optimizer", "adam"],
        vec![
            "--pooling",
            "avg",
            "--style-layers",
            "relu1_1,relu2_1",
            "--content-layers",
            "relu2_2,relu3_1",
        ],
    ];
    for (i, extra) in cases.iter().enumerate() {
        let out = dir.path().join(format!("o{i}.png"));
        let report = dir.path().join(format!("r{i}.json"));
        run_ok(&with(
            tiny(&out),
            &[extra.as_slice(), &["--report", path_str(&report)]].concat(),
        ));
        let mean = mean_and_finite(&out);
        assert!(mean > 10.0 && mean < 245.0, "{extra:?}: image mean {mean}");
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        let t = r["trace"].as_array().unwrap();
        let (first, last) = (
            t[0]["total"].as_f64().unwrap(),
            t.last().unwrap()["total"].as_f64().unwrap(),
        );
        assert!(
            last.is_finite() && last < first,
            "{extra:?}: loss {first} → {last}"
        );
    }
    // Luminance mode keeps the content's colours: its chroma matches the content's closely.
    let lum = image::open(dir.path().join("o0.png")).unwrap().to_rgb8();
    let content = image::imageops::resize(
        &image::open(CONTENT).unwrap().to_rgb8(),
        64,
        43,
        image::imageops::FilterType::Lanczos3,
    );
    let chroma = |img: &image::RgbImage| -> f64 {
        img.pixels().map(|p| p[0] as f64 - p[2] as f64).sum::<f64>() / img.pixels().len() as f64
    };
    assert!(
        (chroma(&lum) - chroma(&content)).abs() < 8.0,
        "R−B balance {} vs content {}",
        chroma(&lum),
        chroma(&content)
    );
}

/// Non-finite from the first evaluation: a clear error and no file. (Stopping later, with the
/// last finite image kept, is tested on `nst_optim::minimize` directly.)
#[test]
fn non_finite_loss_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    let o = Command::new(NST)
        .args(with(tiny(&out), &["--style-weight", "3e38"]))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.starts_with("error: the loss became non-finite") && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(!out.exists());
}

/// With less memory than the size needs (NST_MEMORY_LIMIT stands in for a small machine),
/// the run stops before optimising with the estimate and the largest size that fits, and
/// that size then runs. (512×341 is estimated at about 470 MB in the fast mode and 370 MB in
/// the lean one.)
#[test]
fn memory_preflight_refuses_a_size_that_does_not_fit() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    let args = with(
        tiny(&out),
        &["--size", "512", "--scales", "1", "--iters", "2"],
    );
    let o = Command::new(NST)
        .args(&args)
        .env("NST_MEMORY_LIMIT", "300M")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains("--size 512 needs about") && stderr.contains("but 300 MiB is available"),
        "{stderr}"
    );
    assert!(!out.exists());
    let suggested: u32 = stderr
        .split("the largest --size that fits is about ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no suggested size in {stderr}"));
    assert!((64..512).contains(&suggested), "{suggested}");
    let o = Command::new(NST)
        .args(with(args, &["--size", &suggested.to_string()]))
        .env("NST_MEMORY_LIMIT", "300M")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.exists());
}

/// Memory for the lean mode but not the fast one: the run goes ahead lean, and the report
/// names the mode.
#[test]
fn memory_preflight_falls_back_to_the_lean_mode() {
    let dir = tempfile::tempdir().unwrap();
    let (out, report) = (dir.path().join("o.png"), dir.path().join("r.json"));
    let args = with(
        tiny(&out),
        &["--size", "512", "--scales", "1", "--iters", "2"],
    );
    let o = Command::new(NST)
        .args(with(args, &["--report", path_str(&report)]))
        .env("NST_MEMORY_LIMIT", "420M")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["memory_mode"], "lean");
    assert!(mean_and_finite(&out) > 20.0);
}

/// Memory for neither mode's whole-image pass at 768×511 (about 500 MiB lean) but for
/// tiles (about 460 MiB in the smallest): the network runs tile by tile, the report names
/// the tile side, and the loss at the start is the whole image's (a run with ample memory,
/// side by side) up to summation order.
#[test]
fn memory_preflight_runs_the_network_in_tiles_where_only_tiles_fit() {
    let dir = tempfile::tempdir().unwrap();
    let args = |name: &str| {
        let (out, report) = (
            dir.path().join(format!("{name}.png")),
            dir.path().join(name),
        );
        let size = [
            "--size",
            "768",
            "--style-size",
            "256",
            "--scales",
            "1",
            "--iters",
            "1",
        ];
        let args = with(tiny(&out), &size);
        (with(args, &["--report", path_str(&report)]), out, report)
    };
    let run = |name: &str, limit: &str| {
        let (args, out, report) = args(name);
        let o = Command::new(NST)
            .args(&args)
            .env("NST_MEMORY_LIMIT", limit)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(mean_and_finite(&out) > 20.0);
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        r
    };
    let (tiled, whole) = (run("tiled", "480M"), run("whole", "8G"));
    assert_eq!(tiled["memory_mode"], "lean");
    let side = tiled["tile_side"].as_u64().unwrap();
    assert!((256..768).contains(&side) && side % 16 == 0, "{side}");
    assert!(whole["tile_side"].is_null());
    let start = |r: &serde_json::Value| r["trace"][0]["total"].as_f64().unwrap();
    let e = (start(&tiled) - start(&whole)).abs() / start(&whole);
    assert!(
        e <= 1e-6,
        "{} tiled vs {} whole",
        start(&tiled),
        start(&whole)
    );
}

/// Memory for the lean mode with 5 L-BFGS pairs but not with the 20 asked for (`--iters 20`
/// at 192×128: 0.59 MB a pair): the run goes ahead with as many pairs as fit, and the report
/// says how many. The limit is the need the refusal names (the lean mode's with 5 pairs)
/// plus room for about 7 more pairs; with ample memory, all 20.
#[test]
fn memory_preflight_shortens_the_lbfgs_history_where_only_that_fits() {
    let dir = tempfile::tempdir().unwrap();
    let (out, report) = (dir.path().join("o.png"), dir.path().join("r.json"));
    let args = with(
        tiny(&out),
        &["--size", "192", "--scales", "1", "--iters", "20"],
    );
    let args = with(args, &["--report", path_str(&report)]);
    let run = |limit: &str| {
        let o = Command::new(NST)
            .args(&args)
            .env("NST_MEMORY_LIMIT", limit)
            .output()
            .unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    };
    let read_report = || -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap()
    };
    let history = || {
        let r = read_report();
        (
            r["lbfgs_history"].as_u64().unwrap(),
            r["memory_mode"].clone(),
        )
    };
    let (ok, stderr) = run("10M");
    assert!(!ok, "{stderr}");
    let need_mb: f64 = stderr
        .split("needs about ")
        .nth(1)
        .and_then(
            |rest| match rest.split_whitespace().take(2).collect::<Vec<_>>()[..] {
                [n, "MiB"] => n.parse().ok(),
                _ => None,
            },
        )
        .unwrap_or_else(|| panic!("no need in {stderr}"));
    let (ok, stderr) = run(&format!("{}M", need_mb + 4.0));
    assert!(ok, "{stderr}");
    let (pairs, mode) = history();
    assert!((6..20).contains(&pairs), "{pairs}");
    assert_eq!(mode, "lean");
    // The plan's estimate, in the report: within the limit, above the refusal's need.
    let estimate = read_report()["estimated_peak_bytes"].as_f64().unwrap() / (1 << 20) as f64;
    assert!(
        estimate > need_mb && estimate <= need_mb + 4.0,
        "{estimate} MiB"
    );
    assert!(mean_and_finite(&out) > 20.0);
    let (ok, stderr) = run("100G");
    assert!(ok, "{stderr}");
    assert_eq!(history(), (20, "fast".into()));
}

#[test]
fn bad_inputs_fail_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let out = d.join("never.png");
    let o = path_str(&out);
    let write = |name: &str, bytes: &[u8]| -> String {
        let p = d.join(name);
        std::fs::write(&p, bytes).unwrap();
        path_str(&p).to_string()
    };
    let empty = write("empty.png", b"");
    let corrupt = write(
        "corrupt.png",
        b"\x89PNG\r\n\x1a\nthis is not really a png file at all",
    );
    let png = std::fs::read(CONTENT).unwrap();
    let truncated_png = write("trunc.png", &png[..png.len() / 3]);
    let jpg = std::fs::read(STYLE).unwrap();
    let truncated_jpg = write("trunc.jpg", &jpg[..jpg.len() / 2]);
    let text = write("notes.txt", b"hello");
    let bomb = write("bomb.png", &png_with_size(100_000, 100_000));
    // Both sides allowed, but 108 megapixels: refused from the header.
    let huge = write("huge.png", &png_with_size(12_000, 9_000));
    let bad_weights = write("w.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":");
    let photo = write("photo.png", &png);

    let base = |c: &str| {
        vec![
            "-c".to_string(),
            c.to_string(),
            "-s".into(),
            STYLE.into(),
            "-o".into(),
            o.into(),
            "--size".into(),
            "64".into(),
            "--iters".into(),
            "2".into(),
            "-q".into(),
        ]
    };
    let opt = |extra: &[&str]| with(base(CONTENT), extra);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (base("/nonexistent/photo.jpg"), "/nonexistent/photo.jpg"),
        (base(&empty), "empty"),
        (base(&corrupt), "corrupt.png"),
        (base(&truncated_png), "trunc.png"),
        (base(&truncated_jpg), "truncated"),
        (base(&text), "not a PNG, JPEG or WebP"),
        (base(&bomb), "bomb.png"),
        (base(&huge), "108 megapixels"),
        (
            opt(&["--weights", "/nonexistent/w.safetensors"]),
            "/nonexistent/w.safetensors",
        ),
        (opt(&["--weights", bad_weights.as_str()]), "safetensors"),
        (opt(&["--style-layers", "relu1_1,relu9_9"]), "relu9_9"),
        (opt(&["--content-layers", "fc7"]), "fc7"),
        (
            opt(&["--style-layers", "relu1_1,relu2_1,relu1_1"]),
            "--style-layers: relu1_1 is listed twice",
        ),
        (opt(&["--size", "0"]), "--size"),
        (opt(&["--iters", "0"]), "--iters"),
        (opt(&["--size=-5"]), "--size"),
        (opt(&["--size", "100000"]), "too large"),
        (opt(&["--size", "8"]), "too small"),
        (opt(&["--style-weight", "nan"]), "--style-weight"),
        (opt(&["--content-weight", "inf"]), "--content-weight"),
        (opt(&["--tv-weight=-1"]), "--tv-weight"),
        // Negative values are values (named by our check or clap's), not unknown options.
        (opt(&["--style-weight", "-1e-3"]), "--style-weight must be"),
        (opt(&["--tv-weight", "-.5"]), "--tv-weight must be"),
        (opt(&["--style-blend", "-1"]), "--style-blend must be"),
        (opt(&["--seed", "-1"]), "for '--seed"),
        (opt(&["--content-weight", "1e40"]), "1e40 is too large"),
        (opt(&["--style-blend", "1,x"]), "\"x\" is not a number"),
        (opt(&["--lr", "NaN"]), "--lr"),
        (
            opt(&["--style-layer-weights", "1,2"]),
            "--style-layer-weights",
        ),
        (opt(&["--style-blend", "1,2"]), "--style-blend"),
        (opt(&["--init", "/nonexistent/init.png"]), "init"),
        (opt(&["--device", "cuda"]), "cuda"),
        (opt(&["--pooling", "min"]), "pooling"),
        (
            opt(&["-o", path_str(&d.join("missing_dir/out.png"))]),
            "does not exist",
        ),
        (opt(&["-o", path_str(&d.join("out.gif"))]), ".gif"),
        // Files the run would write over: refused before it starts.
        (opt(&["--report", o]), "--report and -o are the same file"),
        (
            opt(&["--report", path_str(&d.join("missing_dir/r.json"))]),
            "--report: folder",
        ),
        (
            opt(&[
                "--save-every",
                "1",
                "--report",
                path_str(&d.join("never_s1_0001.png")),
            ]),
            "--save-every snapshots of -o",
        ),
        (
            with(base(&photo), &["--init", &photo, "--report", &photo]),
            "would overwrite the content image",
        ),
    ];
    for (args, needle) in &cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        expect_failure(&args, &out, needle);
    }
    assert!(!d.join("out.gif").exists() && !d.join("missing_dir").exists());
    assert_eq!(
        std::fs::read(&photo).unwrap(),
        png,
        "the content photo was written over"
    );
    // Without -q, an error before the device is named is still the only line.
    let missing = [
        "-c",
        "/nonexistent/photo.jpg",
        "-s",
        STYLE,
        "-o",
        o,
        "--size",
        "64",
    ];
    expect_failure(&missing, &out, "/nonexistent/photo.jpg");
    let bad_weights_loud = with(base(CONTENT), &["--weights", &bad_weights]);
    expect_failure(&loud(&bad_weights_loud), &out, "--weights");
    // The output over the content photo.
    let over_photo = [
        "-c", &photo, "-s", STYLE, "-o", &photo, "--size", "64", "-q",
    ];
    expect_failure(&over_photo, &out, "-o");
    assert_eq!(
        std::fs::read(&photo).unwrap(),
        png,
        "the content photo was written over"
    );
}

/// `nst help` and `nst serve help` are the help; a run that ends early because L-BFGS has
/// nothing to gain (no style term: the content image is already the optimum) says so; a
/// report can go to /dev/null.
#[test]
fn help_words_and_an_early_convergence_are_answered() {
    for (args, usage) in [
        (&["help"][..], "Usage: nst [OPTIONS]"),
        (&["serve", "help"], "Usage: nst serve [OPTIONS]"),
        (&["help", "serve"], "Usage: nst serve [OPTIONS]"),
    ] {
        let o = nst(args);
        assert!(o.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&o.stdout).contains(usage),
            "{args:?}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    // The report to /dev/null, as people do: written into it, not renamed over it (which,
    // for root, put a regular file in its place).
    let extra = [
        "--style-weight",
        "0",
        "--device",
        "cpu",
        "--report",
        "/dev/null",
    ];
    let args = with(tiny(&out), &extra);
    let o = nst(&loud(&args));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(
        stderr.contains("scale 1: converged after 0 of 6 iterations"),
        "{stderr}"
    );
    use std::os::unix::fs::FileTypeExt;
    let null = std::fs::metadata("/dev/null").unwrap().file_type();
    assert!(null.is_char_device(), "/dev/null is no longer a device");
}
