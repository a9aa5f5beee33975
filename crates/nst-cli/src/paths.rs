//! The files a run writes — the output image, its snapshots (`--save-every`) and the report —
//! checked before the run starts: each one's folder must exist and take a new file, and none
//! may be another of them or an input. A run can take hours; finding at its end that the
//! report's folder is missing loses the report, and a report written over the output image, or
//! an output written over the content photo, loses a picture without a word.

use anyhow::{anyhow, bail, ensure, Result};
use std::path::{Path, PathBuf};

/// `out.png` → `out_s3_0050.png`: the snapshot of scale 3, iteration 50.
pub fn snapshot_path(output: &Path, scale: usize, iter: u32) -> PathBuf {
    let (stem, ext) = stem_and_extension(output);
    output.with_file_name(format!("{stem}_s{scale}_{iter:04}.{ext}"))
}

/// The snapshots a run writes with `--save-every`: every `every` iterations up to `iters`,
/// at each of at most `scales` scales.
#[derive(Clone, Copy, Debug)]
pub struct Snapshots {
    /// `--save-every`.
    pub every: u32,
    /// Iterations per scale.
    pub iters: u32,
    /// The most scales the run can have (a plan may drop the smallest).
    pub scales: usize,
}

impl Snapshots {
    /// Whether `path` is one of the snapshots of `output` this run writes.
    fn include(&self, output: &Path, path: &Path) -> bool {
        let (stem, ext) = stem_and_extension(output);
        let Some(name) = path.file_name().map(|n| n.to_string_lossy()) else {
            return false;
        };
        let numbers = name
            .strip_prefix(&format!("{stem}_s"))
            .and_then(|r| r.strip_suffix(&format!(".{ext}")))
            .and_then(|r| r.split_once('_'))
            .and_then(|(s, i)| Some((s.parse::<usize>().ok()?, i.parse::<u32>().ok()?)));
        let Some((scale, iter)) = numbers else {
            return false;
        };
        let written = (1..=self.scales).contains(&scale)
            && (1..=self.iters).contains(&iter)
            && iter.is_multiple_of(self.every);
        // The name as the run spells it (`_0050`, not `_50`), beside the output.
        written && same_file(&snapshot_path(output, scale, iter), path)
    }
}

fn stem_and_extension(path: &Path) -> (String, String) {
    let part = |p: Option<&std::ffi::OsStr>| p.map(|s| s.to_string_lossy().into_owned());
    (
        part(path.file_stem()).unwrap_or_default(),
        part(path.extension()).unwrap_or_default(),
    )
}

/// `path` (which need not exist) with its folder resolved (links, `..`), for comparing.
fn resolved(path: &Path) -> Option<PathBuf> {
    let folder = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(folder) => folder.canonicalize().ok()?,
        None => std::env::current_dir().ok()?,
    };
    let resolved = folder.join(path.file_name()?);
    // An existing file may itself be a link to another.
    Some(resolved.canonicalize().unwrap_or(resolved))
}

/// Whether `a` and `b` name the same file (existing or not).
fn same_file(a: &Path, b: &Path) -> bool {
    match (resolved(a), resolved(b)) {
        (Some(a), Some(b)) => a == b,
        _ => a == b,
    }
}

/// A file `flag` will write: not a folder; a device or pipe (`/dev/null`), which is written
/// in place; else a file whose folder (through a link, the folder of the file it names)
/// exists, is a folder and takes a new file (tried by creating and removing one), since it
/// is written beside it and renamed into place (see [`nst_image::write_atomic`]).
pub fn check_writable(flag: &str, path: &Path) -> Result<()> {
    ensure!(
        !path.is_dir(),
        "{flag} {} is a folder, not a file",
        path.display()
    );
    if std::fs::metadata(path).is_ok_and(|m| !m.is_file()) {
        return Ok(());
    }
    let path = &nst_image::written_file(path);
    let folder = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !folder.is_dir() {
        if folder.exists() {
            bail!("{flag}: {} is not a folder", folder.display());
        }
        bail!("{flag}: folder {} does not exist", folder.display());
    }
    let probe = folder.join(format!(".nst-write-test.{}", std::process::id()));
    std::fs::File::create(&probe)
        .map_err(|e| anyhow!("{flag}: cannot write in folder {}: {e}", folder.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

/// No file the run writes (`outputs`, as `(flag, path)`; the first is the output image, whose
/// `snapshots` count too) is another of them or one of the `inputs`.
pub fn check_no_overwrite(
    outputs: &[(&str, &Path)],
    snapshots: Option<Snapshots>,
    inputs: &[(&str, &Path)],
) -> Result<()> {
    for (i, &(flag, path)) in outputs.iter().enumerate() {
        for &(other, input) in inputs {
            ensure!(
                !same_file(path, input),
                "{flag} {} would overwrite the {other} (give another file name)",
                path.display()
            );
        }
        for &(other, earlier) in &outputs[..i] {
            ensure!(
                !same_file(path, earlier),
                "{flag} and {other} are the same file, {} (give each its own)",
                path.display()
            );
        }
    }
    if let (Some(snapshots), Some(&(flag, output))) = (snapshots, outputs.first()) {
        for &(other, path) in outputs[1..].iter().chain(inputs) {
            ensure!(
                !snapshots.include(output, path),
                "the --save-every snapshots of {flag} {} would overwrite the {other}, {} (give another file name)",
                output.display(),
                path.display()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshots_are_named_beside_the_output_and_recognised() {
        let out = Path::new("/tmp/x/out.png");
        let s = snapshot_path(out, 3, 50);
        assert_eq!(s, Path::new("/tmp/x/out_s3_0050.png"));
        // Every 10 iterations of 100, at 3 scales.
        let snapshots = Snapshots {
            every: 10,
            iters: 100,
            scales: 3,
        };
        assert!(snapshots.include(out, &s));
        assert!(snapshots.include(out, Path::new("/tmp/x/out_s1_0100.png")));
        for other in [
            "/tmp/x/out_s3_0050.jpg",
            "/tmp/y/out_s3_0050.png",
            "/tmp/x/out_s_0050.png",
            "/tmp/x/out_sa_0050.png",
            "/tmp/x/out_s3_50.png",   // not how the run spells it
            "/tmp/x/out_s3_0055.png", // not a multiple of 10
            "/tmp/x/out_s3_0110.png", // past the last iteration
            "/tmp/x/out_s4_0050.png", // past the last scale
            "/tmp/x/out_s0_0050.png",
        ] {
            assert!(!snapshots.include(out, Path::new(other)), "{other}");
        }
    }

    #[test]
    fn a_run_writes_over_no_input_and_no_other_output() {
        let dir = std::env::temp_dir().join(format!("nst-paths-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        let photo = dir.join("photo.png");
        std::fs::write(&photo, b"x").unwrap();
        let out = dir.join("out.png");
        let inputs = [("content image", photo.as_path())];
        let every_one = Snapshots {
            every: 1,
            iters: 6,
            scales: 1,
        };
        let ok = check_no_overwrite(
            &[("-o", &out), ("--report", &dir.join("r.json"))],
            Some(every_one),
            &inputs,
        );
        assert!(ok.is_ok(), "{ok:?}");

        // The same file by another spelling, through `..`.
        let again = dir.join("sub/../photo.png");
        let err = check_no_overwrite(&[("-o", &again)], None, &inputs).unwrap_err();
        assert!(
            err.to_string()
                .contains("would overwrite the content image"),
            "{err}"
        );
        let err = check_no_overwrite(&[("-o", &out), ("--report", &out)], None, &inputs)
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--report and -o are the same file"),
            "{err}"
        );
        // A report named like a snapshot: refused only when there are snapshots.
        let snapshot_named = dir.join("out_s1_0001.png");
        let outputs = [("-o", out.as_path()), ("--report", &snapshot_named)];
        let err = check_no_overwrite(&outputs, Some(every_one), &inputs)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--save-every snapshots of -o"), "{err}");
        assert!(check_no_overwrite(&outputs, None, &inputs).is_ok());
        // Nor when the run stops before that snapshot (6 iterations, every 2: 2, 4, 6).
        let every_two = Snapshots {
            every: 2,
            iters: 6,
            ..every_one
        };
        let late = dir.join("out_s1_0008.png");
        let outputs = [("-o", out.as_path()), ("--report", &late)];
        assert!(check_no_overwrite(&outputs, Some(every_two), &inputs).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_file_to_write_needs_a_folder_that_takes_it() {
        let dir = std::env::temp_dir().join(format!("nst-writable-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(check_writable("-o", &dir.join("out.png")).is_ok());
        assert!(check_writable("-o", Path::new("out.png")).is_ok());
        let err = check_writable("--report", &dir.join("none/r.json"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("--report: folder") && err.ends_with("does not exist"),
            "{err}"
        );
        let file = dir.join("file.png");
        std::fs::write(&file, b"x").unwrap();
        let err = check_writable("-o", &file.join("x.png"))
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("file.png is not a folder"), "{err}");
        let err = check_writable("-o", &dir).unwrap_err().to_string();
        assert!(err.ends_with("is a folder, not a file"), "{err}");
        // /proc takes no new file (as root too).
        let err = check_writable("-o", Path::new("/proc/x.png"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("-o: cannot write in folder /proc: "),
            "{err}"
        );
        assert!(!dir
            .join(format!(".nst-write-test.{}", std::process::id()))
            .exists());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
