//! Helpers shared by the end-to-end test files: the binary, the example images, argument
//! lists and the failure contract (one-line error, non-zero exit, no output file).
#![allow(dead_code)] // each test file uses a different subset

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const NST: &str = env!("CARGO_BIN_EXE_nst");
pub const CONTENT: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/content_chelsea.png"
);
pub const STYLE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../examples/style_vangogh_starry_night.jpg"
);

pub fn nst(args: &[&str]) -> Output {
    Command::new(NST)
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("run nst")
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

pub fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    v.sort();
    v
}

/// Runs nst with bad input and checks the failure contract; returns the error line.
pub fn expect_failure(args: &[&str], out: &Path, needle: &str) -> String {
    let o = nst(args);
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(
        !o.status.success(),
        "expected failure for {args:?}, got success"
    );
    assert!(
        !stderr.contains("panicked") && !stderr.contains("stack backtrace"),
        "panic for {args:?}: {stderr}"
    );
    assert!(!out.exists(), "a failed run left {} behind", out.display());
    let first = stderr.lines().next().unwrap_or_default().to_string();
    assert!(
        first.to_lowercase().contains(&needle.to_lowercase()),
        "error for {args:?} should mention '{needle}': {stderr}"
    );
    if o.status.code() == Some(1) {
        // Our own errors are exactly one line; clap's usage errors (exit 2) add usage hints.
        assert_eq!(
            stderr.trim_end().lines().count(),
            1,
            "not one line: {stderr}"
        );
        assert!(first.starts_with("error: "), "{first}");
    }
    first
}

pub fn tiny(out: &Path) -> Vec<String> {
    [
        "-c",
        CONTENT,
        "-s",
        STYLE,
        "-o",
        path_str(out),
        "--size",
        "64",
        "--iters",
        "6",
        "-q",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `args` with `extra` flag/value pairs replacing earlier values of the same flag (clap
/// rejects repeats), except `-s`, which is repeatable and appends.
pub fn with(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    let mut i = 0;
    while i < extra.len() {
        let flag = extra[i];
        let name = flag.split('=').next().unwrap();
        let value = if flag.contains('=') {
            None
        } else {
            extra
                .get(i + 1)
                .filter(|v| !v.starts_with("--") || v.parse::<f64>().is_ok())
        };
        if name != "-s" {
            if let Some(pos) = args.iter().position(|a| a == name) {
                let had_value = args
                    .get(pos + 1)
                    .is_some_and(|v| !v.starts_with('-') || v.parse::<f64>().is_ok());
                args.drain(pos..pos + 1 + usize::from(had_value));
            }
        }
        args.push(flag.to_string());
        if let Some(v) = value {
            args.push(v.to_string());
            i += 1;
        }
        i += 1;
    }
    args
}

pub fn run_ok(args: &[String]) -> Output {
    let o = Command::new(NST).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "nst {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}
