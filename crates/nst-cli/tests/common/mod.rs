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

/// `args` without `-q`: for tests of what a run prints.
pub fn loud(args: &[String]) -> Vec<&str> {
    args.iter()
        .map(String::as_str)
        .filter(|a| *a != "-q")
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
    run_ok_with_env(args, &[])
}

/// [`run_ok`] with extra environment variables.
pub fn run_ok_with_env(args: &[String], env: &[(&str, &str)]) -> Output {
    let o = Command::new(NST)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "nst {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// A PNG whose header claims `w × h` pixels (a decompression bomb): valid signature and
/// IHDR with a correct CRC, then a tiny IDAT and IEND.
pub fn png_with_size(w: u32, h: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut c = 0xFFFF_FFFFu32;
        for &b in bytes {
            c ^= b as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xEDB8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
        }
        !c
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend((data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend(data);
        out.extend(&body);
        out.extend(crc32(&body).to_be_bytes());
    }
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend(w.to_be_bytes());
    ihdr.extend(h.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]);
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(
        &mut png,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut png, b"IEND", &[]);
    png
}

/// `nst serve --port 0` on a gallery folder, stopped (SIGTERM) when dropped.
pub struct Server {
    child: std::process::Child,
    /// `http://127.0.0.1:PORT`, no trailing slash.
    pub url: String,
    /// `127.0.0.1:PORT`.
    pub addr: String,
}

impl Server {
    /// Starts a server and waits for the address it prints.
    pub fn start(dir: &Path, env: &[(&str, &str)]) -> Self {
        use std::io::BufRead;
        let mut child = Command::new(NST)
            .args(["serve", "--port", "0", "--dir", path_str(dir)])
            .envs(env.iter().copied())
            .env("RUST_BACKTRACE", "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start nst serve");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        let addr = line
            .split("http://")
            .nth(1)
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .to_string();
        Self {
            child,
            url: format!("http://{addr}"),
            addr,
        }
    }

    /// SIGTERM, then the exit status (waiting at most 30 s).
    pub fn stop(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "nst serve did not stop"
            );
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tmpfs mounted for one test, unmounted when dropped.
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// Mounts a tmpfs of `size` (e.g. "160k") at `dir`, or explains why not.
    pub fn mount(dir: &Path, size: &str) -> Option<Tmpfs> {
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status();
        match status {
            Ok(s) if s.success() => Some(Tmpfs(dir.to_path_buf())),
            _ => {
                // Past the harness's capture, so a run without root says what it skipped.
                let _ = std::io::Write::write_all(
                    &mut std::io::stderr().lock(),
                    format!(
                        "SKIPPED: cannot mount a tmpfs at {} (needs root)\n",
                        dir.display()
                    )
                    .as_bytes(),
                );
                None
            }
        }
    }

    pub fn remount_read_only(&self) {
        let ok = Command::new("mount")
            .args(["-o", "remount,ro"])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(ok.success(), "remount read-only");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
