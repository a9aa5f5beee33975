//! Reruns a kernel test binary on the emulator with the kernels compiled under
//! AddressSanitizer, then ThreadSanitizer (`nst_cuda::emulator::Sanitizer`): what
//! `compute-sanitizer --tool memcheck` and `--tool racecheck` check on a GPU, checked on the
//! CPU. A sanitizer's runtime has to be in the process from its start, so the test binary
//! runs itself again with the runtime in `LD_PRELOAD`.
//!
//! - ASan: `detect_leaks=0`, since the emulator's block threads are never freed by design.
//! - TSan: `ignore_noninstrumented_modules=1`, so only accesses made by the kernels are
//!   checked. Rust's code is not instrumented: its own synchronisation is invisible to TSan,
//!   and the copies it makes would otherwise be reported as races with each other.

use nst_cuda::emulator::Sanitizer;
use std::process::{Command, Output};

/// Whether this process is such a rerun: the GPU is left out of it (a GPU driver under a
/// preloaded sanitizer is another matter), and the rerunning test does nothing.
pub fn in_sanitized_rerun() -> bool {
    Sanitizer::from_env().is_ok_and(|s| s != Sanitizer::Undefined)
}

/// Runs this test binary's tests again under ASan and under TSan, skipping `skip` (the
/// calling test, and tests that need a GPU or NVRTC). Panics with the sanitizer's report
/// if either finds something or a test fails there. Skips (printing why) where there is no
/// g++ or no runtime, unless `NST_REQUIRE_EMULATOR` is set.
pub fn rerun_under_sanitizers(skip: &[&str]) {
    if in_sanitized_rerun() {
        return;
    }
    if let Err(why) = nst_cuda::emulator::available() {
        assert!(
            std::env::var_os("NST_REQUIRE_EMULATOR").is_none(),
            "NST_REQUIRE_EMULATOR is set but {why}"
        );
        eprintln!("SKIPPED sanitizers: {why}");
        return;
    }
    for sanitizer in [Sanitizer::Address, Sanitizer::Thread] {
        let runtime = match runtime_path(sanitizer) {
            Ok(path) => path,
            Err(why) if std::env::var_os("NST_REQUIRE_EMULATOR").is_some() => {
                panic!("NST_REQUIRE_EMULATOR is set but {why}")
            }
            Err(why) => {
                eprintln!("SKIPPED {}: {why}", sanitizer.name());
                continue;
            }
        };
        let mut out = rerun(sanitizer, &runtime, skip, false);
        // Some kernels map memory where an older sanitizer's shadow must go (TSan: "unexpected
        // memory mapping"); without address randomisation the layout is the classic one.
        if !out.status.success() && cannot_map_shadow(&out) {
            out = rerun(sanitizer, &runtime, skip, true);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "the tests under the {} sanitizer failed ({}):\n{}\n{}",
            sanitizer.name(),
            out.status,
            tail(&stdout, 30),
            report(&stderr),
        );
        eprintln!("{} sanitizer: {}", sanitizer.name(), last_result(&stdout));
    }
}

/// The runtime library's path, as g++ gives it (it prints the bare name if it has none).
fn runtime_path(sanitizer: Sanitizer) -> Result<String, String> {
    let name = sanitizer
        .runtime_library()
        .expect("ASan and TSan have runtimes");
    let out = Command::new("g++")
        .arg(format!("-print-file-name={name}"))
        .output()
        .map_err(|e| format!("cannot run g++: {e}"))?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || !std::path::Path::new(&path).is_absolute() {
        return Err(format!("g++ has no {name} (Debian: libgcc-12-dev)"));
    }
    Ok(path)
}

fn rerun(sanitizer: Sanitizer, runtime: &str, skip: &[&str], no_aslr: bool) -> Output {
    let exe = std::env::current_exe().expect("the test binary's path");
    let mut cmd = if no_aslr {
        let mut c = Command::new("setarch");
        c.args([std::env::consts::ARCH, "-R"]).arg(exe);
        c
    } else {
        Command::new(exe)
    };
    for test in skip {
        cmd.args(["--skip", test]);
    }
    cmd.env(Sanitizer::VARIABLE, sanitizer.name())
        // The GPU's blocks of 256 threads (8 warps), not the emulator's usual 32.
        .env("NST_EMULATOR_FULL_BLOCKS", "1")
        .env("LD_PRELOAD", runtime)
        .env("ASAN_OPTIONS", "detect_leaks=0")
        .env(
            "TSAN_OPTIONS",
            "ignore_noninstrumented_modules=1 halt_on_error=1 exitcode=66",
        )
        .env_remove("NST_REQUIRE_CUDA")
        .env_remove("NST_REQUIRE_NVRTC")
        .output()
        .expect("cannot rerun the test binary")
}

fn cannot_map_shadow(out: &Output) -> bool {
    let stderr = String::from_utf8_lossy(&out.stderr);
    stderr.contains("unexpected memory mapping") || stderr.contains("Shadow memory range")
}

/// The sanitizer's report (its first 30 lines: what, where, which threads) or a failed
/// test's message, else the end of the output.
fn report(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().collect();
    let first = lines.iter().position(|l| {
        [
            "ERROR: AddressSanitizer",
            "WARNING: ThreadSanitizer",
            "runtime error:",
            "panicked",
        ]
        .iter()
        .any(|mark| l.contains(mark))
    });
    match first {
        Some(i) => lines[i..lines.len().min(i + 30)].join("\n"),
        None => tail(stderr, 40),
    }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn last_result(stdout: &str) -> &str {
    stdout
        .lines()
        .rfind(|l| l.starts_with("test result"))
        .unwrap_or("no test result")
}
