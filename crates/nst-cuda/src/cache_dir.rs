//! Where nst keeps what it learned about a GPU between runs (the convolution algorithms a
//! search measured, [`crate::algorithm_cache`]; the kernels compiled for the GPU,
//! [`crate::compiled_kernels`]), and the one way a file gets there.
//!
//! Everything kept there only saves time: a folder that cannot be read or written changes
//! nothing else, and deleting it is always safe.

use std::ffi::OsString;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// The cache folder: `$NST_CACHE_DIR` (empty: no cache), else `$XDG_CACHE_HOME/nst`, else
/// `$HOME/.cache/nst`.
pub fn default_dir() -> Option<PathBuf> {
    dir_from(|name| std::env::var_os(name))
}

/// [`default_dir`] with the environment read through `var`.
fn dir_from(var: impl Fn(&str) -> Option<OsString>) -> Option<PathBuf> {
    let set = |name| var(name).filter(|v| !v.is_empty());
    match var("NST_CACHE_DIR") {
        Some(dir) if dir.is_empty() => None,
        Some(dir) => Some(PathBuf::from(dir)),
        None => set("XDG_CACHE_HOME")
            .map(|d| PathBuf::from(d).join("nst"))
            .or_else(|| set("HOME").map(|h| PathBuf::from(h).join(".cache/nst"))),
    }
}

/// Whether files can be made in `dir` (created if missing): a new file is made and removed.
pub(crate) fn writable(dir: &Path) -> bool {
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let made = std::fs::create_dir_all(dir).is_ok()
        && std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .is_ok();
    made && std::fs::remove_file(&probe).is_ok()
}

/// Puts `bytes` in `file` whole: written to a new temporary file beside it, then renamed over
/// it, so that a crash or a concurrent writer never leaves a torn file (the last rename wins).
pub(crate) fn replace_file(file: &Path, bytes: &[u8]) -> std::io::Result<()> {
    static WRITES: AtomicU64 = AtomicU64::new(0);
    std::fs::create_dir_all(file.parent().unwrap_or(Path::new(".")))?;
    // A name no one else uses, created new (never through a link someone planted).
    let n = WRITES.fetch_add(1, Ordering::Relaxed);
    let partial = file.with_extension(format!("partial-{}-{n}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&partial)
        .and_then(|mut f| f.write_all(bytes))
        .and_then(|()| std::fs::rename(&partial, file));
    if written.is_err() {
        let _ = std::fs::remove_file(&partial);
    }
    written
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An environment of `pairs` for [`dir_from`].
    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            let found = pairs.iter().find(|(n, _)| *n == name);
            found.map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn the_cache_folder_follows_the_environment() {
        let all = [
            ("NST_CACHE_DIR", "/x/nst-cache"),
            ("XDG_CACHE_HOME", "/x/cache"),
            ("HOME", "/home/u"),
        ];
        assert_eq!(dir_from(env(&all)), Some(PathBuf::from("/x/nst-cache")));
        let off = [("NST_CACHE_DIR", ""), ("HOME", "/home/u")];
        assert_eq!(dir_from(env(&off)), None);
        let xdg = [("XDG_CACHE_HOME", "/x/cache"), ("HOME", "/home/u")];
        assert_eq!(dir_from(env(&xdg)), Some(PathBuf::from("/x/cache/nst")));
        let home = [("XDG_CACHE_HOME", ""), ("HOME", "/home/u")];
        assert_eq!(
            dir_from(env(&home)),
            Some(PathBuf::from("/home/u/.cache/nst"))
        );
        assert_eq!(dir_from(env(&[])), None);
    }

    #[test]
    fn a_replaced_file_is_whole_and_leaves_nothing_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("deeper/f.bin");
        replace_file(&file, b"first").unwrap();
        replace_file(&file, b"second").unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), b"second");
        let names: Vec<_> = std::fs::read_dir(file.parent().unwrap()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
        // A folder that is a file: an error, and no partial file left.
        let blocked = dir.path().join("plain");
        std::fs::write(&blocked, "x").unwrap();
        assert!(replace_file(&blocked.join("f.bin"), b"y").is_err());
        assert!(!writable(&blocked));
        assert!(writable(&dir.path().join("new/folder")));
        let left: Vec<_> = std::fs::read_dir(dir.path().join("new/folder"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "the probe is removed: {left:?}");
    }
}
