//! Faults during a real run of the `nst` binary: signals, a disk that fills up or turns
//! read-only under it, and weights files that cannot be used. The contract in every case:
//! a one-line error (or the interruption message), a non-zero exit, no partial or corrupt
//! file left behind, and an earlier output file untouched unless a complete new one replaced
//! it.
//!
//! The file-system faults need a small tmpfs, which needs root (as CI and the development
//! machines have); without it those tests print `SKIPPED` and the reason. Permission bits
//! cannot make a file unreadable for root, so "unreadable" is a directory where the weights
//! file should be.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Lines};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Stdio};

/// Starts nst with plain progress lines and returns once the first scale is running.
fn start_running(args: &[String]) -> (Child, Lines<BufReader<ChildStderr>>) {
    let mut child = Command::new(NST)
        .args(loud(args))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    for line in lines.by_ref() {
        if line.unwrap().starts_with("scale 1/1") {
            break;
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    (child, lines)
}

fn send(child: &Child, signal: &str) {
    let ok = Command::new("kill")
        .args([&format!("-{signal}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(ok.success());
}

/// Starts nst with plain progress lines on the CPU (where `auto` lands with no device
/// visible, even on a GPU machine, so that the sizes below take seconds).
fn start_on_the_cpu(args: &[String]) -> (Child, Lines<BufReader<ChildStderr>>) {
    let mut child = Command::new(NST)
        .args(loud(args))
        .env("CUDA_VISIBLE_DEVICES", "")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(child.stderr.take().unwrap()).lines();
    (child, lines)
}

/// Sends SIGINT and returns the rest of stderr, checking that the run ended as interrupted
/// (exit code 130, the last line saying what it wrote).
fn interrupt(mut child: Child, lines: Lines<BufReader<ChildStderr>>) -> Vec<String> {
    send(&child, "INT");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    assert_eq!(child.wait().unwrap().code(), Some(130), "{rest:?}");
    assert!(
        rest.last().unwrap().starts_with("interrupted: wrote"),
        "{rest:?}"
    );
    rest
}

/// A `--report` file.
fn read_report(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Files in `dir` that are not complete, decodable images (partial or temporary files).
fn broken_files(dir: &Path) -> Vec<PathBuf> {
    files_in(dir)
        .into_iter()
        .filter(|p| image::open(p).is_err())
        .collect()
}

/// A long run at 128 px, one scale.
fn long_run(out: &Path) -> Vec<String> {
    with(
        tiny(out),
        &["--size", "128", "--iters", "100000", "--scales", "1"],
    )
}

/// SIGINT and SIGTERM once two iterations have run (their snapshots are written): the best
/// image so far is written (atomically: nothing but it, the report and the snapshots is left
/// in the folder) and the exit code is 128 + the signal (130, 143).
#[test]
fn signals_write_the_best_image_and_exit_128_plus_signal() {
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("o.png");
        let report = dir.path().join("r.json");
        let args = with(
            long_run(&out),
            &["--report", path_str(&report), "--save-every", "1"],
        );
        let (mut child, lines) = start_running(&args);
        while !dir.path().join("o_s1_0002.png").exists() {
            assert!(child.try_wait().unwrap().is_none(), "nst ended early");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        send(&child, signal);
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(code), "SIG{signal}: {rest:?}");
        assert!(rest.iter().any(|l| l.contains("interrupted")), "{rest:?}");
        let img = image::open(&out).expect("best image written on interrupt");
        assert_eq!((img.width(), img.height()), (128, 85));
        // The report of the iterations so far, marked as interrupted: the start and at least
        // the two iterations whose snapshots were written.
        let written = read_report(&report);
        assert_eq!(written["interrupted"], true, "{written}");
        assert!(written["trace"].as_array().unwrap().len() >= 3, "{written}");
        let snapshot = |p: &PathBuf| {
            let name = p.file_name().unwrap().to_str().unwrap();
            name.starts_with("o_s1_") && name.ends_with(".png")
        };
        let files = files_in(dir.path());
        let others: Vec<_> = files.iter().filter(|p| !snapshot(p)).collect();
        assert_eq!(others, vec![&out, &report], "SIG{signal}: stray files");
        for snapshot in files.iter().filter(|p| snapshot(p)) {
            image::open(snapshot).expect("snapshots are whole images");
        }
    }
}

/// SIGINT while a scale is set up (its targets, computed before the first iteration): heard
/// at once, and the run stops before its first evaluation, writing the start image, which is
/// all there is so far.
#[test]
fn a_signal_during_the_setup_stops_before_the_first_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    // 1024 px at one scale: seconds of targets on a CPU (where `auto` lands with no device
    // visible, even on a GPU machine), so the signal lands before they are done.
    let report = dir.path().join("r.json");
    let args = with(
        long_run(&out),
        &["--size", "1024", "--report", path_str(&report)],
    );
    let (child, mut lines) = start_on_the_cpu(&args);
    // The device is named once the plan stands, just before the targets.
    let device = lines.next().unwrap().unwrap();
    assert!(device.starts_with("device: "), "{device}");
    let rest = interrupt(child, lines);
    assert!(
        rest[0].starts_with("stopping: writing the best image so far"),
        "{rest:?}"
    );
    assert!(!rest.iter().any(|l| l.starts_with("scale 1/1")), "{rest:?}");
    let img = image::open(&out).expect("the start image written on interrupt");
    assert_eq!((img.width(), img.height()), (1024, 681));
    // The report too, saying so: no trace and no scale's timing (no iteration ran).
    let report = read_report(&report);
    assert_eq!(report["interrupted"], true, "{report}");
    assert_eq!(report["trace"].as_array().unwrap().len(), 0, "{report}");
    assert_eq!(
        report["timing"]["scales"].as_array().unwrap().len(),
        0,
        "{report}"
    );
    assert_eq!(files_in(dir.path()).len(), 2, "stray files");
}

/// SIGINT during the second scale's first evaluation (VGG-19 forward and backward at 1024
/// px: seconds on a CPU, where the signal lands within milliseconds of the scale's start):
/// the evaluation is abandoned, not finished, so the second scale records no iterate. Its
/// start, the first scale's result resized, is written, and the report's trace is the first
/// scale's, saying so.
#[test]
fn a_signal_during_an_evaluation_abandons_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("o.png");
    let report = dir.path().join("r.json");
    let args = with(
        tiny(&out),
        &["--size", "1024", "--scales", "2", "--iters", "2"],
    );
    let args = with(args, &["--report", path_str(&report)]);
    let (child, mut lines) = start_on_the_cpu(&args);
    // "scale 2/2" comes after the targets, just before the first evaluation.
    for line in lines.by_ref() {
        if line.unwrap().starts_with("scale 2/2") {
            break;
        }
    }
    interrupt(child, lines);
    let img = image::open(&out).expect("the start image written on interrupt");
    assert_eq!((img.width(), img.height()), (1024, 681));
    // Without the evaluation's own check, the second scale's start would be evaluated and
    // its trace would replace the first scale's.
    let report = read_report(&report);
    assert_eq!(report["interrupted"], true, "{report}");
    assert_eq!(report["trace_scale"], 1, "{report}");
    let trace = report["trace"].as_array().unwrap();
    let iters: Vec<u64> = trace.iter().map(|t| t["iter"].as_u64().unwrap()).collect();
    assert_eq!(iters, [0, 1, 2], "{report}");
    let scales = report["timing"]["scales"].as_array().unwrap();
    let taken: Vec<u64> = scales
        .iter()
        .map(|s| s["iterations"].as_u64().unwrap())
        .collect();
    assert_eq!(taken, [2, 0], "{report}");
    assert_eq!(files_in(dir.path()).len(), 2, "stray files");
}

/// `--save-every 1` into a small file system that fills up: a one-line error naming the
/// file, no partial file, and the earlier output untouched.
#[test]
fn full_disk_is_a_clear_error_without_partial_files() {
    let dir = tempfile::tempdir().unwrap();
    let Some(_fs) = Tmpfs::mount(dir.path(), "160k") else {
        return;
    };
    let out = dir.path().join("out.png");
    let earlier = image::RgbImage::from_pixel(64, 43, image::Rgb([1, 2, 3]));
    earlier.save(&out).unwrap();
    let before = std::fs::read(&out).unwrap();
    let args = with(tiny(&out), &["--iters", "60", "--save-every", "1"]);
    let o = Command::new(NST).args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        std::fs::read(&out).unwrap(),
        before,
        "earlier output changed"
    );
    assert!(
        files_in(dir.path()).len() > 2,
        "some intermediates fit before the disk filled"
    );
    assert_eq!(broken_files(dir.path()), Vec::<PathBuf>::new());
}

/// The output folder turns read-only mid-run; then Ctrl-C asks for the best image. It cannot
/// be written: a one-line error, exit 1, the earlier output untouched, nothing else written.
#[test]
fn read_only_output_folder_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let Some(fs) = Tmpfs::mount(dir.path(), "1m") else {
        return;
    };
    let out = dir.path().join("out.png");
    image::RgbImage::from_pixel(8, 8, image::Rgb([9, 9, 9]))
        .save(&out)
        .unwrap();
    let before = std::fs::read(&out).unwrap();
    let (mut child, lines) = start_running(&long_run(&out));
    fs.remount_read_only();
    send(&child, "INT");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(1), "{rest:?}");
    let errors: Vec<&String> = rest.iter().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{rest:?}");
    assert!(errors[0].contains("Read-only file system"), "{rest:?}");
    assert_eq!(std::fs::read(&out).unwrap(), before);
    assert_eq!(files_in(dir.path()), vec![out]);
}

/// Weights that cannot be used: a folder instead of a file, a tensor of the wrong shape, NaN
/// values. Each is a one-line error naming the problem, before any optimisation.
#[test]
fn unusable_weights_files_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.png");
    let st = safetensors::SafeTensors::deserialize(nst_vgg::weights::shipped().unwrap()).unwrap();
    let replaced = |name: &str, shape: Vec<usize>, value: f32| -> PathBuf {
        let n: usize = shape.iter().product();
        let bytes: Vec<u8> = (0..n)
            .flat_map(|i| if i == 3 { value } else { 0.1f32 }.to_le_bytes())
            .collect();
        let mut tensors: Vec<_> = st
            .tensors()
            .into_iter()
            .filter(|(t, _)| t != name)
            .collect();
        tensors.push((
            name.to_string(),
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, &bytes).unwrap(),
        ));
        let path = dir.path().join(format!("{name}.safetensors"));
        std::fs::write(&path, safetensors::serialize(tensors, None).unwrap()).unwrap();
        path
    };
    let folder = dir.path().join("weights_dir");
    std::fs::create_dir(&folder).unwrap();
    let cases = [
        (folder, "cannot read weights".to_string()),
        (
            replaced("conv2_1.bias", vec![64], 0.1),
            "tensor conv2_1.bias has shape [64], expected [128]".to_string(),
        ),
        (
            replaced("conv4_2.bias", vec![512], f32::NAN),
            "tensor conv4_2.bias has a non-finite value (element 3)".to_string(),
        ),
    ];
    for (weights, needle) in &cases {
        let args = with(tiny(&out), &["--weights", path_str(weights)]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        expect_failure(&args, &out, needle);
    }
}
