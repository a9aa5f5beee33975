//! Replays every committed fuzzing input — the seeds (`fuzz/seeds/<target>`), the corpus the
//! fuzzer grew from them (`fuzz/corpus/<target>`) and the inputs of bugs it found
//! (`fuzz/regressions/<target>`) — through the harnesses, so that no fixed crash returns.
//! Takes seconds; the fuzzing itself is `fuzz/README.md`.

use std::path::PathBuf;

const FUZZ: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../fuzz");

/// Every file under `fuzz/{seeds,corpus,regressions}/<target>`.
fn inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for kind in ["seeds", "corpus", "regressions"] {
        let dir = PathBuf::from(format!("{FUZZ}/{kind}/{target}"));
        if let Ok(entries) = std::fs::read_dir(&dir) {
            files.extend(entries.map(|e| e.unwrap().path()));
        }
    }
    files.sort();
    files
}

fn replay(target: &str, harness: fn(&[u8])) {
    let files = inputs(target);
    assert!(files.len() >= 5, "{target}: only {} inputs", files.len());
    for f in &files {
        let data = std::fs::read(f).unwrap();
        let run = std::panic::catch_unwind(|| harness(&data));
        assert!(run.is_ok(), "{target}: {} fails", f.display());
    }
    eprintln!("{target}: {} inputs replayed", files.len());
}

#[test]
fn image_inputs() {
    replay("image", nst_fuzz::image);
}

#[test]
fn weights_inputs() {
    replay("weights", nst_fuzz::weights);
}

#[test]
fn args_inputs() {
    replay("args", nst_fuzz::args);
}
