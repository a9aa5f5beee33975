//! The gallery folder (`--dir`): one subfolder per finished job, named by its id, holding
//! the result, the uploads and `settings.json`. Jobs are assembled in `.incoming/<id>/` and
//! renamed into place when they end, so the gallery only ever holds complete entries and a
//! restart finds exactly what had finished (leftovers of `.incoming` are removed at start).
//!
//! No name from a request reaches the file system: job ids are checked to be 16 hex digits
//! ([`JobId::parse`]) and files are served only from a fixed set of names
//! ([`is_entry_file`]), so `..`, slashes (encoded or not) and absolute paths have nothing
//! to match.

use anyhow::{Context, Result};
use serde_json::Value;
use std::fmt;
use std::path::{Path, PathBuf};

/// The gallery entry's description of the job.
pub const SETTINGS_FILE: &str = "settings.json";
/// The picture.
pub const RESULT_FILE: &str = "result.png";
/// Where jobs are assembled before they end.
const INCOMING: &str = ".incoming";

/// A job's id: 16 lowercase hex digits (64 random bits), so that it is unguessable, safe
/// as a folder name and checkable without touching the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct JobId(u64);

impl JobId {
    /// A fresh random id.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The id written as `s`, if `s` is exactly 16 lowercase hex digits.
    pub fn parse(s: &str) -> Option<Self> {
        let hex = |b: u8| b.is_ascii_digit() || (b'a'..=b'f').contains(&b);
        (s.len() == 16 && s.bytes().all(hex))
            .then(|| u64::from_str_radix(s, 16).ok().map(Self))
            .flatten()
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Whether `name` is one of the files a gallery entry may hold: the result, the settings,
/// `content.<ext>` or `style-<n>.<ext>` with an image extension. Nothing else is served.
pub fn is_entry_file(name: &str) -> bool {
    if name == RESULT_FILE || name == SETTINGS_FILE {
        return true;
    }
    let Some((stem, ext)) = name.split_once('.') else {
        return false;
    };
    let image_ext = matches!(ext, "png" | "jpg" | "webp");
    let upload_stem = stem == "content"
        || stem.strip_prefix("style-").is_some_and(|n| {
            !n.is_empty() && n.len() <= 2 && n.bytes().all(|b| b.is_ascii_digit())
        });
    image_ext && upload_stem
}

/// The gallery folder.
#[derive(Clone, Debug)]
pub struct Gallery {
    dir: PathBuf,
}

impl Gallery {
    /// Opens (creating it if needed) the gallery in `dir` and clears unfinished jobs left by
    /// an earlier server.
    pub fn open(dir: &Path) -> Result<Self> {
        anyhow::ensure!(
            !dir.exists() || dir.is_dir(),
            "--dir {} is a file, not a folder",
            dir.display()
        );
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create the gallery folder {}", dir.display()))?;
        let incoming = dir.join(INCOMING);
        if incoming.exists() {
            std::fs::remove_dir_all(&incoming)
                .with_context(|| format!("cannot clear {}", incoming.display()))?;
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    /// The gallery folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where job `id` is assembled (created).
    pub fn create_incoming(&self, id: JobId) -> Result<PathBuf> {
        let path = self.dir.join(INCOMING).join(id.to_string());
        std::fs::create_dir_all(&path)
            .with_context(|| format!("cannot create {}", path.display()))?;
        Ok(path)
    }

    /// Where job `id` is assembled.
    pub fn incoming(&self, id: JobId) -> PathBuf {
        self.dir.join(INCOMING).join(id.to_string())
    }

    /// Moves a finished job's folder into the gallery, after writing its settings.
    pub fn publish(&self, id: JobId, settings: &Value) -> Result<()> {
        let incoming = self.incoming(id);
        let json = serde_json::to_vec_pretty(settings)?;
        nst_image::write_atomic(&incoming.join(SETTINGS_FILE), |w| {
            std::io::Write::write_all(w, &json)
        })?;
        let entry = self.dir.join(id.to_string());
        std::fs::rename(&incoming, &entry)
            .with_context(|| format!("cannot move the result into {}", entry.display()))
    }

    /// Forgets an unfinished job's folder (refused, cancelled before it ran, failed).
    pub fn discard(&self, id: JobId) {
        let _ = std::fs::remove_dir_all(self.incoming(id));
    }

    /// The path of `file` in entry `id`, if both names are valid and the file exists.
    pub fn file(&self, id: JobId, file: &str) -> Option<PathBuf> {
        let path = self.dir.join(id.to_string()).join(file);
        (is_entry_file(file) && path.is_file()).then_some(path)
    }

    /// Removes entry `id`; false if there is none.
    pub fn remove(&self, id: JobId) -> Result<bool> {
        let entry = self.dir.join(id.to_string());
        if !entry.join(SETTINGS_FILE).is_file() {
            return Ok(false);
        }
        std::fs::remove_dir_all(&entry)
            .with_context(|| format!("cannot remove {}", entry.display()))?;
        Ok(true)
    }

    /// Every entry's settings, newest first. Folders that are not entries are skipped.
    pub fn entries(&self) -> Result<Vec<Value>> {
        let mut entries = Vec::new();
        let listing = std::fs::read_dir(&self.dir)
            .with_context(|| format!("cannot read {}", self.dir.display()))?;
        for item in listing.flatten() {
            let name = item.file_name();
            let Some(id) = name.to_str().and_then(JobId::parse) else {
                continue;
            };
            let Ok(bytes) = std::fs::read(item.path().join(SETTINGS_FILE)) else {
                continue;
            };
            if let Ok(Value::Object(mut settings)) = serde_json::from_slice(&bytes) {
                settings.insert("id".into(), Value::String(id.to_string()));
                entries.push(Value::Object(settings));
            }
        }
        let created = |v: &Value| v.get("created").and_then(Value::as_f64).unwrap_or(0.0);
        entries.sort_by(|a, b| created(b).total_cmp(&created(a)));
        Ok(entries)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_sixteen_hex_digits_only() {
        let id = JobId::random();
        assert_eq!(JobId::parse(&id.to_string()), Some(id));
        for bad in [
            "",
            "..",
            "../../etc/passwd",
            "0123456789abcdeF",
            "0123456789abcde",
            "0123456789abcdef0",
            "0123456789abcde/",
            "+123456789abcdef",
            "%2e%2e",
        ] {
            assert_eq!(JobId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn only_entry_files_are_named() {
        for good in [
            "result.png",
            "settings.json",
            "content.jpg",
            "style-1.webp",
            "style-12.png",
        ] {
            assert!(is_entry_file(good), "{good}");
        }
        for bad in [
            "",
            "..",
            "../result.png",
            "result.png/..",
            "/etc/passwd",
            "content.exe",
            "style-.png",
            "style-123.png",
            "style-1.png.png",
            "content",
            ".incoming",
        ] {
            assert!(!is_entry_file(bad), "{bad}");
        }
    }
}
