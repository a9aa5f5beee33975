//! Measured convolution-algorithm choices kept on disk between runs, so that a run at sizes
//! seen before skips cuDNN's algorithm search, and picks the same algorithms as before (the
//! same bits, run after run). MIOpen's find-db and TensorRT's timing cache do the same.
//!
//! One text file, `conv-algorithms-v2.tsv` in the cache folder ([`crate::cache_dir::default_dir`]),
//! one line a choice: the library (GPU, driver and cuDNN versions: a choice is valid only where it
//! was measured), the shape, the algorithm's number and its workspace in bytes. Lines that do not
//! parse are skipped, and a remembered algorithm the library no longer runs for its shape is
//! searched for again (see [`crate::conv_choice`]). A process writes only what it measured itself,
//! into the file as it is at that moment, through a new temporary file renamed over the old one: a
//! crash never leaves a torn file, and a concurrent run loses at most a line (no lock), which only
//! costs a search. A cache that cannot be read or written changes nothing but speed: it is never an
//! error (`NST_CUDNN_LOG=1` says why it was not written).

use crate::conv_choice::ChoiceKey;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The file's name in the cache folder (the version changes with its format).
pub const FILE_NAME: &str = "conv-algorithms-v2.tsv";

/// Most lines the file keeps; past this it starts again from this process's choices (a
/// run adds about 20, so this is hundreds of distinct sizes).
const MOST_LINES: usize = 10_000;

/// The choices one library measured, by shape: what this process found in the file, plus
/// what it measured since.
pub(crate) struct AlgorithmCache {
    /// The file, or `None` for a cache that keeps nothing.
    file: Option<PathBuf>,
    /// The library's identity: the first field of its lines.
    library: String,
    entries: Mutex<Known>,
}

/// What a process knows: algorithm number and workspace bytes by [`key_text`], and the keys
/// it measured itself (the lines it writes).
#[derive(Default)]
struct Known {
    choices: HashMap<String, (u32, usize)>,
    measured_here: HashSet<String>,
}

impl Default for AlgorithmCache {
    /// [`AlgorithmCache::none`].
    fn default() -> Self {
        AlgorithmCache::none()
    }
}

impl AlgorithmCache {
    /// A cache that keeps nothing on disk.
    pub(crate) fn none() -> AlgorithmCache {
        AlgorithmCache {
            file: None,
            library: String::new(),
            entries: Mutex::default(),
        }
    }

    /// The choices `library` made before, from the file in `dir` (none when `dir` is
    /// `None` or the file is missing or unreadable).
    pub(crate) fn open(dir: Option<&Path>, library: &str) -> AlgorithmCache {
        // Tabs and newlines would break the format; a GPU name has none, but be sure.
        let library: String = library
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        let file = dir.map(|d| d.join(FILE_NAME));
        let entries = file
            .as_deref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .map(|text| parse(&text, &library))
            .unwrap_or_default();
        AlgorithmCache {
            file,
            library,
            entries: Mutex::new(Known {
                choices: entries,
                measured_here: HashSet::new(),
            }),
        }
    }

    /// The algorithm number and workspace measured for `key`, if any.
    pub(crate) fn get(&self, key: &ChoiceKey) -> Option<(u32, usize)> {
        let entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.choices.get(&key_text(key)).copied()
    }

    /// Keeps a choice this process measured, in memory and in the file (merged with what is
    /// there now).
    pub(crate) fn put(&self, key: &ChoiceKey, algo: u32, workspace: usize) {
        let mut known = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let key = key_text(key);
        known.choices.insert(key.clone(), (algo, workspace));
        known.measured_here.insert(key);
        if let Some(file) = &self.file {
            let mine = known.measured_here.iter().map(|k| (k, known.choices[k]));
            if let Err(e) = self.write(file, mine.collect()) {
                if std::env::var("NST_CUDNN_LOG").is_ok_and(|v| v == "1") {
                    eprintln!("cuDNN: could not keep the algorithm choices in {file:?}: {e}");
                }
            }
        }
    }

    /// The file as it is now, with `mine` (this process's measurements) over the same keys
    /// of this library.
    fn write(&self, file: &Path, mine: HashMap<&String, (u32, usize)>) -> std::io::Result<()> {
        let mut lines: Vec<String> = std::fs::read_to_string(file)
            .unwrap_or_default()
            .lines()
            .filter(|l| {
                split(l).is_some_and(|(lib, key, ..)| {
                    !(lib == self.library && mine.contains_key(&key.to_string()))
                })
            })
            .map(|l| format!("{l}\n"))
            .collect();
        if lines.len() + mine.len() > MOST_LINES {
            lines.clear();
        }
        let mut ours: Vec<String> = mine
            .iter()
            .map(|(key, (algo, ws))| format!("{}\t{key}\t{algo}\t{ws}\n", self.library))
            .collect();
        ours.sort();
        lines.extend(ours);
        crate::cache_dir::replace_file(file, lines.concat().as_bytes())
    }
}

/// A line's fields: library, key, algorithm number, workspace bytes.
fn split(line: &str) -> Option<(&str, &str, u32, usize)> {
    let mut fields = line.split('\t');
    let (lib, key, algo, ws) = (
        fields.next()?,
        fields.next()?,
        fields.next()?,
        fields.next()?,
    );
    if fields.next().is_some() {
        return None;
    }
    Some((lib, key, algo.parse().ok()?, ws.parse().ok()?))
}

/// `library`'s choices in a file's text (lines that do not parse are skipped).
fn parse(text: &str, library: &str) -> HashMap<String, (u32, usize)> {
    text.lines()
        .filter_map(split)
        .filter(|(lib, ..)| *lib == library)
        .map(|(_, key, algo, ws)| (key.to_string(), (algo, ws)))
        .collect()
}

/// A choice's key as its line writes it: direction, precision, layout and every field of
/// the shape.
fn key_text(k: &ChoiceKey) -> String {
    let p = &k.p;
    format!(
        "{} {} {} n{} c{} h{} w{} k{} r{} s{} pad{} stride{}",
        k.direction,
        if k.tf32 { "tf32" } else { "fp32" },
        k.layout,
        p.batch,
        p.in_channels,
        p.in_h,
        p.in_w,
        p.out_channels,
        p.kernel_h,
        p.kernel_w,
        p.pad,
        p.stride
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv_choice::Direction;
    use nst_params::{Conv2dParams, Layout};

    fn key(h: usize, direction: Direction) -> ChoiceKey {
        ChoiceKey {
            p: Conv2dParams {
                batch: 1,
                in_channels: 3,
                in_h: h,
                in_w: 5,
                out_channels: 64,
                kernel_h: 3,
                kernel_w: 3,
                stride: 1,
                pad: 1,
            },
            tf32: true,
            layout: Layout::Nchw,
            direction,
        }
    }

    #[test]
    fn choices_come_back_in_another_process_for_the_same_library_only() {
        let dir = tempfile::tempdir().unwrap();
        let a = AlgorithmCache::open(Some(dir.path()), "GPU A, cuDNN 9.14.0");
        a.put(&key(4, Direction::Forward), 6, 4096);
        a.put(&key(4, Direction::BackwardData), 1, 0);
        // Another library's choices share the file without mixing.
        let b = AlgorithmCache::open(Some(dir.path()), "GPU B, cuDNN 9.14.0");
        assert_eq!(b.get(&key(4, Direction::Forward)), None);
        b.put(&key(4, Direction::Forward), 2, 8);

        let again = AlgorithmCache::open(Some(dir.path()), "GPU A, cuDNN 9.14.0");
        assert_eq!(again.get(&key(4, Direction::Forward)), Some((6, 4096)));
        assert_eq!(again.get(&key(4, Direction::BackwardData)), Some((1, 0)));
        assert_eq!(again.get(&key(8, Direction::Forward)), None);
        // An NHWC convolution of the same shape is another choice.
        let nhwc = ChoiceKey {
            layout: Layout::Nhwc,
            ..key(4, Direction::Forward)
        };
        assert_eq!(again.get(&nhwc), None);
        let b_again = AlgorithmCache::open(Some(dir.path()), "GPU B, cuDNN 9.14.0");
        assert_eq!(b_again.get(&key(4, Direction::Forward)), Some((2, 8)));
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(text.lines().count(), 3, "{text}");
    }

    #[test]
    fn a_new_measurement_replaces_the_old_line() {
        let dir = tempfile::tempdir().unwrap();
        let a = AlgorithmCache::open(Some(dir.path()), "GPU");
        a.put(&key(4, Direction::Forward), 6, 4096);
        let b = AlgorithmCache::open(Some(dir.path()), "GPU");
        b.put(&key(4, Direction::Forward), 7, 0);
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        let c = AlgorithmCache::open(Some(dir.path()), "GPU");
        assert_eq!(c.get(&key(4, Direction::Forward)), Some((7, 0)));
    }

    #[test]
    fn a_process_writes_only_what_it_measured() {
        let dir = tempfile::tempdir().unwrap();
        AlgorithmCache::open(Some(dir.path()), "GPU").put(&key(4, Direction::Forward), 6, 0);
        // a read the file before b measured the same shape again; a's own later write keeps
        // b's newer line.
        let a = AlgorithmCache::open(Some(dir.path()), "GPU");
        let b = AlgorithmCache::open(Some(dir.path()), "GPU");
        b.put(&key(4, Direction::Forward), 7, 0);
        a.put(&key(8, Direction::Forward), 1, 0);
        let c = AlgorithmCache::open(Some(dir.path()), "GPU");
        assert_eq!(c.get(&key(4, Direction::Forward)), Some((7, 0)));
        assert_eq!(c.get(&key(8, Direction::Forward)), Some((1, 0)));
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn lines_that_do_not_parse_are_skipped_and_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let good = format!("GPU\t{}\t3\t128\n", key_text(&key(4, Direction::Forward)));
        let junk = "GPU\tforward\t3\nGPU\tx\tnot a number\t1\n\u{0}\t\t\t\t\t\nGPU\ty\t1\t-5\n";
        std::fs::write(dir.path().join(FILE_NAME), format!("{junk}{good}")).unwrap();
        let a = AlgorithmCache::open(Some(dir.path()), "GPU");
        assert_eq!(a.get(&key(4, Direction::Forward)), Some((3, 128)));
        a.put(&key(9, Direction::Forward), 1, 0);
        let text = std::fs::read_to_string(dir.path().join(FILE_NAME)).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
    }

    #[test]
    fn an_unwritable_or_absent_cache_keeps_choices_in_memory() {
        let none = AlgorithmCache::none();
        none.put(&key(4, Direction::Forward), 1, 2);
        assert_eq!(none.get(&key(4, Direction::Forward)), Some((1, 2)));
        // A cache folder that is a file: nothing written, no error, still remembered here.
        let dir = tempfile::tempdir().unwrap();
        let not_a_dir = dir.path().join("file");
        std::fs::write(&not_a_dir, "x").unwrap();
        let c = AlgorithmCache::open(Some(&not_a_dir), "GPU");
        c.put(&key(4, Direction::Forward), 1, 2);
        assert_eq!(c.get(&key(4, Direction::Forward)), Some((1, 2)));
    }
}
