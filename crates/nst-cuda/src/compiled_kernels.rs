//! The kernels compiled for the GPU at hand, kept on disk between runs, so that a run after
//! the first starts without compiling them.
//!
//! Without this, every process compiles `kernels.cu` to PTX with NVRTC (0.32–0.47 s on this
//! 2-core CPU, NVRTC 13.5), and the driver then compiles that PTX to the GPU's machine code (a
//! pass as long as NVRTC's own for CUBIN, 1.3–2.3 s here, which the driver keeps in its own
//! JIT cache when that is on). Compiling straight to the GPU's machine code (CUBIN,
//! `--gpu-architecture=sm_XY`) once, and keeping it, lets later runs load the kernels from a
//! 280 KB file. The first run pays one CUBIN compile instead of PTX plus the driver's pass.
//!
//! One file per architecture, `kernels-sm_XY.cubin` in the cache folder ([`crate::cache_dir`]): a
//! first line saying what the code was compiled from ([`key`]: NVRTC's version, the architecture,
//! the options, and the source's length and hash), a second with the code's checksum, then the
//! code. A file whose first line is not this build's, or whose checksum fails, is compiled afresh
//! and replaced, so two nst versions on one machine take turns (each costing a compile), and a
//! damaged file is never loaded. It is written to a new file that is then renamed over the old one,
//! so it is never torn. (NVRTC gives its version as major.minor only: after a patch release of
//! NVRTC, code from the one before is still loaded. The folder is trusted as the binary is: the
//! checksum finds damage, not forgery.)
//!
//! Without a cache folder (`NST_CACHE_DIR=` empty) or one that cannot be written, where NVRTC
//! cannot compile for the GPU's architecture (a GPU newer than NVRTC), or where the driver
//! refuses the CUBIN, the kernels are PTX, as before.

use crate::kernels;
use std::path::{Path, PathBuf};

/// The kernels' code and where it came from.
pub struct Kernels {
    /// CUBIN or PTX.
    pub code: Code,
    /// Cached, compiled now, or PTX and why.
    pub origin: Origin,
}

/// Code for the driver's module loader.
pub enum Code {
    /// Machine code for the GPU's architecture.
    Cubin(Vec<u8>),
    /// PTX, which the driver compiles for its GPU.
    Ptx(cudarc::nvrtc::Ptx),
}

impl Code {
    /// The code as cudarc's module loader takes it.
    pub fn for_driver(self) -> cudarc::nvrtc::Ptx {
        match self {
            Code::Cubin(code) => cudarc::nvrtc::Ptx::from_binary(code),
            Code::Ptx(ptx) => ptx,
        }
    }
}

/// Where [`Kernels::code`] came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A file an earlier run compiled (CUBIN).
    Cache,
    /// Compiled now for the GPU's architecture (CUBIN), and kept if `kept`.
    Compiled {
        /// Whether the code was written to the cache folder.
        kept: bool,
    },
    /// Compiled now to PTX, for the reason given (no cache folder or one that cannot be
    /// written, no CUBIN for this architecture, or CUBIN the driver refused).
    Ptx(String),
}

impl Origin {
    /// A few words for the profile table.
    pub fn describe(&self) -> String {
        match self {
            Origin::Cache => "kernels from the cache".into(),
            Origin::Compiled { kept: true } => "kernels compiled by NVRTC (kept)".into(),
            Origin::Compiled { kept: false } => "kernels compiled by NVRTC (not kept)".into(),
            Origin::Ptx(_) => "kernels compiled by NVRTC to PTX".into(),
        }
    }
}

/// The kernels for compute capability `arch`: from `dir` when an earlier run compiled them
/// with the same NVRTC, options and source, else compiled now (and kept in `dir`). Errors
/// (no NVRTC, a source NVRTC rejects) are one line.
pub fn load(dir: Option<&Path>, arch: (i32, i32)) -> Result<Kernels, String> {
    let Some(dir) = dir else {
        return ptx("no cache folder".into());
    };
    let Some(nvrtc) = kernels::nvrtc_version() else {
        return ptx("NVRTC did not give its version".into());
    };
    let key = key(nvrtc, arch);
    let file = file(dir, arch);
    if let Some(code) = read(&file, &key) {
        return Ok(Kernels {
            code: Code::Cubin(code),
            origin: Origin::Cache,
        });
    }
    // CUBIN that cannot be kept would be compiled again by every run (1.3–2.3 s here), where
    // the driver keeps what it compiles from PTX in its own cache.
    if !crate::cache_dir::writable(dir) {
        return ptx("the cache folder cannot be written".into());
    }
    compile_and_keep(&file, &key, arch)
}

/// CUBIN compiled now and written to `file` under `key`; PTX where no CUBIN compiles.
fn compile_and_keep(file: &Path, key: &str, arch: (i32, i32)) -> Result<Kernels, String> {
    match kernels::compile_cubin(arch) {
        Ok(code) => {
            let kept = crate::cache_dir::replace_file(file, &contents(key, &code)).is_ok();
            Ok(Kernels {
                code: Code::Cubin(code),
                origin: Origin::Compiled { kept },
            })
        }
        // A source error fails the PTX compile too, and that error is the one to report.
        Err(why) => ptx(why),
    }
}

/// The kernels as PTX, compiled now, for the reason `why` (also for when the driver refuses
/// CUBIN, cached or fresh: it compiles PTX itself).
pub fn ptx(why: String) -> Result<Kernels, String> {
    Ok(Kernels {
        code: Code::Ptx(kernels::compile()?),
        origin: Origin::Ptx(why),
    })
}

/// The cache file for compute capability `arch`.
pub fn file(dir: &Path, (major, minor): (i32, i32)) -> PathBuf {
    dir.join(format!("kernels-sm_{major}{minor}.cubin"))
}

/// What code compiled by NVRTC `nvrtc` for `arch` depends on, as one line: a file written
/// under another key is not this build's code.
pub fn key((nvrtc_major, nvrtc_minor): (i32, i32), (major, minor): (i32, i32)) -> String {
    format!(
        "nst kernels v1; nvrtc {nvrtc_major}.{nvrtc_minor}; sm_{major}{minor}; {}; \
         source {} bytes, fnv1a64 {:016x}",
        kernels::OPTIONS.join(" "),
        kernels::SOURCE.len(),
        fnv1a64(kernels::SOURCE.as_bytes())
    )
}

/// A cache file's bytes: the key, the code's checksum, the code.
fn contents(key: &str, code: &[u8]) -> Vec<u8> {
    let mut out = format!("{key}\n{:016x}\n", fnv1a64(code)).into_bytes();
    out.extend_from_slice(code);
    out
}

/// The code in `file` if it was written under `key` and is whole.
fn read(file: &Path, key: &str) -> Option<Vec<u8>> {
    let bytes = std::fs::read(file).ok()?;
    let header = format!("{key}\n");
    let rest = bytes.strip_prefix(header.as_bytes())?;
    let (sum, code) = (rest.get(..16)?, rest.get(17..)?);
    let whole = rest[16] == b'\n'
        && std::str::from_utf8(sum).ok() == Some(&format!("{:016x}", fnv1a64(code)))
        // Machine code for the driver is an ELF image.
        && code.starts_with(b"\x7fELF");
    whole.then(|| code.to_vec())
}

/// FNV-1a, 64 bits: a fixed hash (std's may change between Rust versions) for telling one
/// source or file from another, not for security.
fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The CUBIN in `k` (fails on PTX).
    fn cubin(k: Kernels) -> Vec<u8> {
        match k.code {
            Code::Cubin(code) => code,
            Code::Ptx(_) => panic!("PTX, not CUBIN ({:?})", k.origin),
        }
    }

    /// Stand-in machine code (an ELF header's first bytes and some more).
    fn code() -> Vec<u8> {
        let mut c = b"\x7fELF\x02\x01\x01".to_vec();
        c.extend((0..300u32).map(|i| (i * 7) as u8));
        c
    }

    #[test]
    fn fnv1a64_matches_the_published_test_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf29ce484222325);
        assert_eq!(fnv1a64(b"a"), 0xaf63dc4c8601ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x85944171f73967e8);
    }

    #[test]
    fn the_key_names_everything_the_code_depends_on() {
        let k = key((13, 5), (9, 0));
        assert!(k.contains("nvrtc 13.5; sm_90;"), "{k}");
        assert!(k.contains("--fmad=false"), "{k}");
        assert!(
            k.contains(&format!("source {} bytes", kernels::SOURCE.len())),
            "{k}"
        );
        assert_ne!(k, key((13, 6), (9, 0)));
        assert_ne!(k, key((13, 5), (8, 9)));
        assert!(!k.contains('\n'));
        assert_eq!(
            file(Path::new("/c"), (8, 9)),
            Path::new("/c/kernels-sm_89.cubin")
        );
    }

    #[test]
    fn code_comes_back_only_under_its_key_and_whole() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("k.cubin");
        let k = key((13, 5), (9, 0));
        crate::cache_dir::replace_file(&f, &contents(&k, &code())).unwrap();
        assert_eq!(read(&f, &k), Some(code()));
        // Another NVRTC, architecture or source: not this build's code.
        assert_eq!(read(&f, &key((13, 6), (9, 0))), None);
        assert_eq!(read(&f, &(k.clone() + "x")), None);
        // Damaged: one byte of the code changed, cut short, the checksum line torn, or not
        // machine code at all.
        let whole = std::fs::read(&f).unwrap();
        let mut flipped = whole.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let cut = whole[..whole.len() - 1].to_vec();
        let torn = whole[..k.len() + 10].to_vec();
        let not_elf = contents(&k, b"PTX text, not ELF");
        for damaged in [flipped, cut, torn, not_elf, vec![]] {
            std::fs::write(&f, &damaged).unwrap();
            assert_eq!(read(&f, &k), None);
        }
        assert_eq!(read(&dir.path().join("absent"), &k), None);
    }

    #[test]
    fn without_a_cache_folder_the_kernels_are_ptx() {
        if !kernels::nvrtc_present() {
            return; // needs NVRTC; the next test says so where CI requires it
        }
        let k = load(None, (9, 0)).unwrap();
        assert_eq!(k.origin, Origin::Ptx("no cache folder".into()));
        assert!(matches!(k.code, Code::Ptx(ptx) if ptx.to_src().contains(".entry im2col(")));
    }

    /// With NVRTC (CI installs it): the first load compiles and keeps CUBIN, the second
    /// loads the same bytes from the file, and a damaged file is compiled afresh.
    #[test]
    fn kernels_compiled_once_come_from_the_cache() {
        if !kernels::nvrtc_present() {
            assert!(
                std::env::var_os("NST_REQUIRE_NVRTC").is_none(),
                "NST_REQUIRE_NVRTC is set but libnvrtc.so.13 does not load"
            );
            eprintln!("skipped: libnvrtc.so.13 not found");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let arch = (9, 0);
        let first = load(Some(dir.path()), arch).unwrap();
        assert_eq!(first.origin, Origin::Compiled { kept: true });
        let code = cubin(first);
        assert!(code.starts_with(b"\x7fELF"), "CUBIN is an ELF image");
        let second = load(Some(dir.path()), arch).unwrap();
        assert_eq!(second.origin, Origin::Cache);
        assert_eq!(cubin(second), code);

        let f = file(dir.path(), arch);
        let mut damaged = std::fs::read(&f).unwrap();
        *damaged.last_mut().unwrap() ^= 1;
        std::fs::write(&f, damaged).unwrap();
        let third = load(Some(dir.path()), arch).unwrap();
        assert_eq!(third.origin, Origin::Compiled { kept: true });
        assert_eq!(cubin(third), code, "NVRTC is deterministic");
        assert_eq!(load(Some(dir.path()), arch).unwrap().origin, Origin::Cache);
        // An architecture NVRTC does not know: PTX, with NVRTC's reason (its error code).
        let unknown = load(Some(dir.path()), (1, 0)).unwrap();
        assert!(
            matches!(&unknown.origin, Origin::Ptx(why) if why.contains("NVRTC_ERROR")),
            "{:?}",
            unknown.origin
        );
        // A cache folder that cannot be written (a file): PTX, no error.
        let blocked = dir.path().join("plain");
        std::fs::write(&blocked, "x").unwrap();
        let unkept = load(Some(&blocked), arch).unwrap();
        assert_eq!(
            unkept.origin,
            Origin::Ptx("the cache folder cannot be written".into())
        );
    }
}
