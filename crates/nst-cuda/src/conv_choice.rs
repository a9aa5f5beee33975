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
//!   replaces the heuristic one. A heuristic choice that fails falls back to a search.
//!
//! Why both: a search runs every candidate (about eight per direction) on the real operands,
//! synchronising around each, so it pays only for a shape used many times: the iterations
//! of the final scale. An image's features computed once (the style and content targets) and
//! the early scales of a multi-scale run take the heuristic pick. A 5-scale run like the
//! README example chooses 152 times (each scale's distinct shapes: the image's forward and
//! backward-data, the style's and the colour conversion's forward); with this rule 20 of
//! them search (counted on the emulator, `NST_CUDA_PROFILE=1`). What that saves on a GPU has
//! not been measured yet: the README example took 11 s on an H200 where its iterations add up
//! to about 2.5 s, and these searches are the main suspect.

use crate::profile::conv_name;
use crate::runtime::{GpuResult, Runtime};
use nst_params::{AlgorithmSearch, Conv2dParams};
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

/// An algorithm chosen for one shape and direction: the algorithm, its workspace in bytes,
/// and how it was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Chosen<A> {
    pub algo: A,
    pub workspace: usize,
    by: AlgorithmSearch,
}

/// The algorithm and workspace for a call that wants `wanted`: the one in `slot` when it
/// serves (see the module docs), else a new choice by `measure` or `heuristic`, stored in
/// `slot`. Time both with [`timed`].
pub(crate) fn choose_once<A: Copy>(
    slot: &mut Option<Chosen<A>>,
    wanted: AlgorithmSearch,
    measure: impl FnOnce() -> GpuResult<(A, usize)>,
    heuristic: impl FnOnce() -> GpuResult<(A, usize)>,
) -> GpuResult<(A, usize)> {
    if let Some(c) = *slot {
        if c.by == AlgorithmSearch::Measured || wanted == AlgorithmSearch::Heuristic {
            return Ok((c.algo, c.workspace));
        }
    }
    let heuristic_pick = match wanted {
        AlgorithmSearch::Heuristic => heuristic().ok(),
        AlgorithmSearch::Measured => None,
    };
    let (by, (algo, workspace)) = match heuristic_pick {
        Some(pick) => (AlgorithmSearch::Heuristic, pick),
        None => (AlgorithmSearch::Measured, measure()?),
    };
    *slot = Some(Chosen {
        algo,
        workspace,
        by,
    });
    Ok((algo, workspace))
}

/// `choose`, timed when profiling as `conv algorithm search: …` (`how` Measured) or
/// `conv algorithm heuristics: …`, with the direction and the shape.
pub(crate) fn timed<T>(
    runtime: &dyn Runtime,
    (how, direction, p): (AlgorithmSearch, Direction, &Conv2dParams),
    choose: impl FnOnce() -> GpuResult<T>,
) -> GpuResult<T> {
    let how = match how {
        AlgorithmSearch::Measured => "search",
        AlgorithmSearch::Heuristic => "heuristics",
    };
    let name = || format!("conv algorithm {how}: {direction} {}", conv_name(p));
    crate::profile::timed(runtime, name, choose)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    /// Runs [`choose_once`] on `slot`, counting the searches and heuristic picks it makes in
    /// `counts`; a search picks algorithm 1, the heuristics algorithm 2 (or fail when
    /// `fails`).
    fn run(
        slot: &mut Option<Chosen<u32>>,
        wanted: AlgorithmSearch,
        fails: bool,
        counts: &(Cell<u32>, Cell<u32>),
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
        choose_once(slot, wanted, measure, heuristic).unwrap().0
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
