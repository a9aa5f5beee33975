//! When a convolution library picks an algorithm for a shape, and how: the rule shared by
//! cuDNN ([`crate::cudnn`]) and the emulator's stand-in library, so that it is tested on the
//! CPU (the cuDNN calls themselves need a GPU).
//!
//! Each shape, direction (forward, backward-data) and precision is chosen for once, and the
//! choice is kept:
//! - a **measured** choice (every candidate run once, the fastest kept: `cudnnFind*`) serves
//!   every later call;
//! - a **heuristic** choice (the library's own ranking, nothing run: `cudnnGet*_v7`) serves
//!   heuristic calls only. The first measured call of that shape searches, and its result
//!   replaces the heuristic one. A heuristic choice that fails falls back to a search, and a
//!   search that fails (cuDNN's allocates operands of its own, which the largest shapes may
//!   not have memory for) to the heuristic pick, for good.
//! - a choice **measured in an earlier run** ([`crate::algorithm_cache`]) serves a call that
//!   wants a search (or whose heuristics failed) instead of the search, once the library says
//!   it still runs it and with what workspace. Heuristic calls never take it, so what a run
//!   computes does not depend on what earlier runs measured.
//!
//! Why both: a search runs every candidate (about eight per direction) on the real operands,
//! synchronising around each, so it pays only for a shape used many times: the iterations
//! of the final scale. An image's features computed once (the style and content targets) and
//! the early scales of a multi-scale run take the heuristic pick. The README example (5
//! scales) searched 141 times when every shape searched (each scale's distinct shapes: the
//! image's forward and backward-data, the style's and the colour conversion's forward); with
//! this rule it searches 20 times and takes 132 heuristic picks (counted on the emulator,
//! `NST_CUDA_PROFILE=1`, `--iters 1`). What that saves on a GPU has not been measured yet:
//! the README example took 11 s on an H200 where its iterations add up to about 2.5 s, and
//! these searches are the main suspect.

use crate::algorithm_cache::AlgorithmCache;
use crate::profile::conv_name;
use crate::runtime::{GpuResult, Runtime};
use nst_params::{AlgorithmSearch, Conv2dParams, Layout};
use std::fmt;

/// Which of a convolution's two computations a choice is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// `y = conv(x, w)`.
    Forward,
    /// `dx += ∂L/∂x` from `dy`.
    BackwardData,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Direction::Forward => "forward",
            Direction::BackwardData => "backward-data",
        })
    }
}

/// What a choice is made for: a shape, its precision and the direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct ChoiceKey {
    pub p: Conv2dParams,
    pub tf32: bool,
    pub layout: Layout,
    pub direction: Direction,
}

/// A library's algorithm as the number [`AlgorithmCache`] keeps.
pub(crate) trait AlgorithmId: Copy {
    /// The algorithm's number.
    fn id(self) -> u32;
    /// The algorithm numbered `id`, if there is one.
    fn from_id(id: u32) -> Option<Self>;
}

/// An algorithm chosen for one shape and direction: the algorithm, its workspace in bytes,
/// and how it was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Chosen<A> {
    pub algo: A,
    pub workspace: usize,
    by: AlgorithmSearch,
}

/// The algorithm and workspace for a call that wants `wanted` for `key`: the one in `slot`
/// when it serves (see the module docs); else, for a heuristic call, the `heuristic` pick;
/// else (a call that wants a search, or failed heuristics) one measured in an earlier run
/// (`cache`) that the library can still run (`workspace_of` gives its workspace, or `None`),
/// else a new search by `measure`, kept in `cache`. The result is stored in `slot`. Time
/// `measure` and `heuristic` with [`timed`]; a choice from the cache is counted in the
/// profile as `conv algorithm remembered: …`, taking no time.
///
/// Only calls that want a search take a remembered choice: a heuristic call takes the
/// heuristic pick whatever the cache holds, so that what a run computes does not depend on
/// what earlier runs measured (at the final scale, the content's features have the image's
/// shapes and are computed first, with the heuristic pick, in every run).
pub(crate) fn choose_once<A: AlgorithmId>(
    slot: &mut Option<Chosen<A>>,
    wanted: AlgorithmSearch,
    (cache, key): (&AlgorithmCache, &ChoiceKey),
    (measure, heuristic, workspace_of): (
        impl FnOnce() -> GpuResult<(A, usize)>,
        impl FnOnce() -> GpuResult<(A, usize)>,
        impl FnOnce(A) -> Option<usize>,
    ),
) -> GpuResult<(A, usize)> {
    if let Some(c) = *slot {
        if c.by == AlgorithmSearch::Measured || wanted == AlgorithmSearch::Heuristic {
            return Ok((c.algo, c.workspace));
        }
    }
    // Asked at most once: by a heuristic call, or after a failed search.
    let mut heuristic = Some(heuristic);
    let mut ask_heuristics = || heuristic.take().map_or(Err(String::new()), |h| h());
    let heuristic_pick = match wanted {
        AlgorithmSearch::Heuristic => ask_heuristics().ok(),
        AlgorithmSearch::Measured => None,
    };
    let remembered = || {
        let (id, _) = cache.get(key)?;
        let algo = A::from_id(id)?;
        Some((algo, workspace_of(algo)?))
    };
    let (by, (algo, workspace)) = match heuristic_pick {
        Some(pick) => (AlgorithmSearch::Heuristic, pick),
        None => match remembered() {
            Some(pick) => {
                let name = || {
                    let shape = conv_name(&key.p);
                    format!("conv algorithm remembered: {} {shape}", key.direction)
                };
                crate::profile::record(name, std::time::Duration::ZERO);
                (AlgorithmSearch::Measured, pick)
            }
            None => match measure() {
                Ok((algo, workspace)) => {
                    cache.put(key, algo.id(), workspace);
                    (AlgorithmSearch::Measured, (algo, workspace))
                }
                // cuDNN's search allocates operands of its own: for the largest shapes it
                // can run out of memory. The heuristic pick then stands in for its result
                // for good (not kept on disk), so later calls do not search again.
                Err(e) if wanted == AlgorithmSearch::Measured => match ask_heuristics() {
                    Ok(pick) => (AlgorithmSearch::Measured, pick),
                    Err(_) => return Err(e),
                },
                Err(e) => return Err(e),
            },
        },
    };
    *slot = Some(Chosen {
        algo,
        workspace,
        by,
    });
    Ok((algo, workspace))
}

/// How a choice is made, in words: `search` or `heuristics`.
pub(crate) fn kind(how: AlgorithmSearch) -> &'static str {
    match how {
        AlgorithmSearch::Measured => "search",
        AlgorithmSearch::Heuristic => "heuristics",
    }
}

/// `choose`, timed when profiling as `conv algorithm search: …` (`how` Measured) or
/// `conv algorithm heuristics: …`, with the direction and the shape.
pub(crate) fn timed<T>(
    runtime: &dyn Runtime,
    (how, direction, p): (AlgorithmSearch, Direction, &Conv2dParams),
    choose: impl FnOnce() -> GpuResult<T>,
) -> GpuResult<T> {
    let name = || format!("conv algorithm {}: {direction} {}", kind(how), conv_name(p));
    crate::profile::timed(runtime, name, choose)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    impl AlgorithmId for u32 {
        fn id(self) -> u32 {
            self
        }
        fn from_id(id: u32) -> Option<u32> {
            (id < 8).then_some(id)
        }
    }

    fn key() -> ChoiceKey {
        ChoiceKey {
            p: Conv2dParams {
                batch: 1,
                in_channels: 2,
                in_h: 4,
                in_w: 5,
                out_channels: 3,
                kernel_h: 3,
                kernel_w: 3,
                stride: 1,
                pad: 1,
            },
            tf32: false,
            layout: Layout::Nchw,
            direction: Direction::Forward,
        }
    }

    /// Runs [`choose_once`] on `slot` with a cache that keeps nothing: see [`run_cached`].
    fn run(
        slot: &mut Option<Chosen<u32>>,
        wanted: AlgorithmSearch,
        fails: bool,
        counts: &(Cell<u32>, Cell<u32>),
    ) -> u32 {
        run_cached(slot, wanted, fails, counts, &AlgorithmCache::none())
    }

    /// Runs [`choose_once`] on `slot` and `cache`, counting the searches and heuristic picks
    /// it makes in `counts`; a search picks algorithm 1, the heuristics algorithm 2 (or fail
    /// when `fails`).
    fn run_cached(
        slot: &mut Option<Chosen<u32>>,
        wanted: AlgorithmSearch,
        fails: bool,
        counts: &(Cell<u32>, Cell<u32>),
        cache: &AlgorithmCache,
    ) -> u32 {
        let measure = || {
            counts.0.set(counts.0.get() + 1);
            Ok((1, 64))
        };
        let heuristic = || {
            counts.1.set(counts.1.get() + 1);
            if fails {
                Err("no heuristic".to_string())
            } else {
                Ok((2, 32))
            }
        };
        // The library runs every algorithm but 5, with a 16-byte workspace.
        let workspace_of = |algo: u32| (algo != 5).then_some(16);
        let ways = (measure, heuristic, workspace_of);
        choose_once(slot, wanted, (cache, &key()), ways).unwrap().0
    }

    #[test]
    fn a_choice_measured_before_serves_searches_only() {
        let dir = tempfile::tempdir().unwrap();
        let counts = (Cell::new(0), Cell::new(0));
        let first = AlgorithmCache::open(Some(dir.path()), "GPU");
        assert_eq!(
            run_cached(&mut None, AlgorithmSearch::Measured, false, &counts, &first),
            1
        );
        assert_eq!((counts.0.get(), counts.1.get()), (1, 0));
        // Another process: a search takes the measured choice, with the workspace the library
        // gives now; a heuristic call takes the heuristic pick all the same, so a run
        // computes the same whatever the cache holds.
        let later = AlgorithmCache::open(Some(dir.path()), "GPU");
        let mut slot = None;
        assert_eq!(
            run_cached(&mut slot, AlgorithmSearch::Measured, false, &counts, &later),
            1
        );
        assert_eq!(slot.unwrap().workspace, 16);
        assert_eq!(
            run_cached(
                &mut None,
                AlgorithmSearch::Heuristic,
                false,
                &counts,
                &later
            ),
            2
        );
        assert_eq!((counts.0.get(), counts.1.get()), (1, 1));
        // Failed heuristics take it too, as a search would.
        assert_eq!(
            run_cached(&mut None, AlgorithmSearch::Heuristic, true, &counts, &later),
            1
        );
        assert_eq!((counts.0.get(), counts.1.get()), (1, 2));
    }

    #[test]
    fn a_remembered_choice_the_library_cannot_run_is_searched_again() {
        let dir = tempfile::tempdir().unwrap();
        let counts = (Cell::new(0), Cell::new(0));
        // A number the library does not have, then one it no longer runs (5).
        for stale in [99, 5] {
            let cache = AlgorithmCache::open(Some(dir.path()), "GPU");
            cache.put(&key(), stale, 0);
            let cache = AlgorithmCache::open(Some(dir.path()), "GPU");
            assert_eq!(
                run_cached(&mut None, AlgorithmSearch::Measured, false, &counts, &cache),
                1
            );
            let after = AlgorithmCache::open(Some(dir.path()), "GPU");
            assert_eq!(after.get(&key()), Some((1, 64)));
        }
        assert_eq!((counts.0.get(), counts.1.get()), (2, 0));
    }

    #[test]
    fn a_measured_choice_serves_every_later_call() {
        let counts = (Cell::new(0), Cell::new(0));
        let mut slot = None;
        assert_eq!(run(&mut slot, AlgorithmSearch::Measured, false, &counts), 1);
        assert_eq!(
            run(&mut slot, AlgorithmSearch::Heuristic, false, &counts),
            1
        );
        assert_eq!(run(&mut slot, AlgorithmSearch::Measured, false, &counts), 1);
        assert_eq!((counts.0.get(), counts.1.get()), (1, 0));
    }

    #[test]
    fn a_heuristic_choice_serves_heuristic_calls_until_one_wants_a_search() {
        let counts = (Cell::new(0), Cell::new(0));
        let mut slot = None;
        assert_eq!(
            run(&mut slot, AlgorithmSearch::Heuristic, false, &counts),
            2
        );
        assert_eq!(
            run(&mut slot, AlgorithmSearch::Heuristic, false, &counts),
            2
        );
        assert_eq!((counts.0.get(), counts.1.get()), (0, 1));
        // The search replaces it, for good.
        assert_eq!(run(&mut slot, AlgorithmSearch::Measured, false, &counts), 1);
        assert_eq!(
            run(&mut slot, AlgorithmSearch::Heuristic, false, &counts),
            1
        );
        assert_eq!((counts.0.get(), counts.1.get()), (1, 1));
        assert_eq!(slot.unwrap().workspace, 64);
    }

    #[test]
    fn a_failed_search_takes_the_heuristic_pick_for_good() {
        let dir = tempfile::tempdir().unwrap();
        let cache = AlgorithmCache::open(Some(dir.path()), "GPU");
        let searches = Cell::new(0);
        let mut slot = None;
        for _ in 0..3 {
            let measure = || {
                searches.set(searches.get() + 1);
                Err::<(u32, usize), _>("out of memory".to_string())
            };
            let ways = (measure, || Ok((2, 32)), |_: u32| Some(16));
            let got = choose_once(&mut slot, AlgorithmSearch::Measured, (&cache, &key()), ways);
            assert_eq!(got, Ok((2, 32)));
        }
        assert_eq!(searches.get(), 1, "one failed search, not one a call");
        assert_eq!(
            AlgorithmCache::open(Some(dir.path()), "GPU").get(&key()),
            None
        );
        // Both failing: the search's error.
        let ways = (
            || Err::<(u32, usize), _>("out of memory".to_string()),
            || Err("no heuristic".to_string()),
            |_: u32| Some(16),
        );
        let got = choose_once(&mut None, AlgorithmSearch::Measured, (&cache, &key()), ways);
        assert_eq!(got, Err("out of memory".to_string()));
    }

    #[test]
    fn failed_heuristics_fall_back_to_a_search() {
        let counts = (Cell::new(0), Cell::new(0));
        let mut slot = None;
        assert_eq!(run(&mut slot, AlgorithmSearch::Heuristic, true, &counts), 1);
        assert_eq!((counts.0.get(), counts.1.get()), (1, 1));
        // Measured now: no second attempt at the heuristics.
        assert_eq!(run(&mut slot, AlgorithmSearch::Heuristic, true, &counts), 1);
        assert_eq!((counts.0.get(), counts.1.get()), (1, 1));
    }
}
