//! The optimisation loop with the safeguards a long run needs: the best iterate (lowest
//! finite loss) is kept, a NaN or infinite loss or gradient stops the run at once (an
//! optimizer would only wander off from there), an interrupt flag is honoured between
//! iterations and within an evaluation (through [`nst_tensor::interruptible`]: at large sizes
//! one evaluation takes minutes on a CPU), and an error after the start (a device out of
//! memory, a failing callback) ends the run with the best iterate and the error both
//! returned, so that a caller can always write out the best image found so far.

use crate::{Evaluation, Optimizer, Step};
use nst_tensor::{interruptible, Tensor, TensorError};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

/// How a run of [`minimize`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    /// All iterations ran, or the optimizer converged.
    Finished,
    /// The interrupt flag was raised (between iterations, or during an evaluation, which
    /// was then abandoned).
    Interrupted,
    /// The loss or its gradient became NaN or infinite at this iterate.
    NonFinite {
        /// The iterate number (0 is the start).
        iter: u32,
    },
    /// Computing the step after this iterate failed ([`Minimized::error`] says why).
    Failed {
        /// The last iterate reached.
        iter: u32,
    },
}

/// What [`minimize`] found.
#[derive(Debug)]
pub struct Minimized<E = TensorError> {
    /// The iterate with the lowest finite loss; `None` only if even the start was not finite,
    /// or the run was interrupted while the start was evaluated.
    pub best: Option<Tensor>,
    /// Its loss (+∞ when there is none).
    pub best_loss: f64,
    /// Why the run stopped.
    pub stop: StopReason,
    /// The error that ended the run, with [`StopReason::Failed`]. With
    /// [`StopReason::Interrupted`], the error of the evaluation that was abandoned:
    /// [`TensorError::Interrupted`] as `E`, unless something else failed at the same moment
    /// (a caller that cares can tell them apart); `None` if the flag stopped the run between
    /// iterations.
    pub error: Option<E>,
}

/// Sees each finite iterate: `(k, x_k, f(x_k), ms of the step that produced x_k)`.
pub type OnIterate<'a, E> = dyn FnMut(u32, &Tensor, &Evaluation, Option<f64>) -> Result<(), E> + 'a;

/// Minimises `evaluate` from `start` with `optimizer` for up to `iters` iterations.
///
/// `on_iterate(k, x_k, f(x_k), ms)` sees every finite iterate, k = 0 (the start) up to
/// `iters`, with the milliseconds of the step that produced it (`None` for the start).
/// `interrupt` is polled before each step, and the evaluations run inside
/// [`nst_tensor::interruptible`] with it: an evaluation that fails once the flag is raised
/// (with [`TensorError::Interrupted`], or anything that error became in `E`) ends the run as
/// [`StopReason::Interrupted`], keeping the best iterate so far and the error (see
/// [`Minimized::error`]), and resets `optimizer`, whose state the abandoned step may have
/// left half-updated. Any other error evaluating the start is returned as `Err`; any later
/// error (from a step, an evaluation or `on_iterate`) ends the run as [`StopReason::Failed`],
/// with the best iterate so far and the error.
pub fn minimize<E: From<TensorError>>(
    start: Tensor,
    evaluate: &dyn Fn(&Tensor) -> Result<Evaluation, E>,
    optimizer: &mut Optimizer,
    iters: u32,
    interrupt: &AtomicBool,
    on_iterate: &mut OnIterate<'_, E>,
) -> Result<Minimized<E>, E> {
    let interrupted = || interrupt.load(Ordering::Relaxed);
    let mut x = start;
    let mut eval = match interruptible(interrupt, || evaluate(&x)) {
        Ok(eval) => eval,
        Err(e) if interrupted() => {
            return Ok(Minimized {
                best: None,
                best_loss: f64::INFINITY,
                stop: StopReason::Interrupted,
                error: Some(e),
            })
        }
        Err(e) => return Err(e),
    };
    let mut best: Option<(f64, Tensor)> = None;
    let mut step_ms = None;
    let mut k = 0u32;
    let mut error = None;
    let stop = loop {
        // One iteration; `Ok(Some(stop))` ends the run normally.
        let mut iteration = || -> Result<Option<StopReason>, E> {
            if !eval.loss.is_finite() || !eval.grad.all_finite()? {
                return Ok(Some(StopReason::NonFinite { iter: k }));
            }
            if best.as_ref().is_none_or(|(l, _)| eval.loss < *l) {
                best = Some((eval.loss, x.clone()));
            }
            on_iterate(k, &x, &eval, step_ms)?;
            if k == iters {
                return Ok(Some(StopReason::Finished));
            }
            if interrupted() {
                return Ok(Some(StopReason::Interrupted));
            }
            let t0 = Instant::now();
            let step = interruptible(interrupt, || -> Result<_, E> {
                Ok(
                    match optimizer.step(&x, &eval, &mut |x: &Tensor| evaluate(x))? {
                        Step::Moved {
                            x: next,
                            eval: known,
                        } => {
                            let eval = match known {
                                Some(e) => e,
                                None => evaluate(&next)?,
                            };
                            Some((next, eval))
                        }
                        Step::Converged => None,
                    },
                )
            });
            match step? {
                Some((next, next_eval)) => (x, eval) = (next, next_eval),
                None => return Ok(Some(StopReason::Finished)),
            }
            step_ms = Some(t0.elapsed().as_secs_f64() * 1e3);
            k += 1;
            Ok(None)
        };
        match iteration() {
            Ok(None) => {}
            Ok(Some(stop)) => break stop,
            // The flag made an op fail: the step was abandoned, not failed. The optimizer
            // may have updated its state for a point it never saw evaluated (L-BFGS's last
            // iterate, Adam's step count): forget it, so that it can be used again.
            Err(e) if interrupted() => {
                optimizer.reset();
                error = Some(e);
                break StopReason::Interrupted;
            }
            Err(e) => {
                error = Some(e);
                break StopReason::Failed { iter: k };
            }
        }
    };
    let (best_loss, best) = match best {
        Some((l, x)) => (l, Some(x)),
        None => (f64::INFINITY, None),
    };
    Ok(Minimized {
        best,
        best_loss,
        stop,
        error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Adam, AdamConfig, Lbfgs, LbfgsConfig};
    use nst_tensor::Device;

    type R<T> = Result<T, TensorError>;

    /// f(x) = Σ x², which turns NaN once any |x| drops below 0.3: the run must stop there and
    /// return the last finite iterate, which is also the best one.
    #[test]
    fn non_finite_stops_and_keeps_the_best_finite_iterate() {
        let evaluate = |x: &Tensor| -> R<Evaluation> {
            let v = x.to_vec()?;
            let loss: f64 = v.iter().map(|&a| (a as f64).powi(2)).sum();
            let loss = if v.iter().any(|a| a.abs() < 0.3) {
                f64::NAN
            } else {
                loss
            };
            Ok(Evaluation::new(loss, x.scale(2.0)?))
        };
        let mut opt = Optimizer::Adam(Adam::new(AdamConfig {
            lr: 0.25,
            ..Default::default()
        }));
        let start = Tensor::from_vec(vec![1.0, -1.5], &[2], &Device::Cpu).unwrap();
        let mut seen = Vec::new();
        let mut on_iterate = |k: u32, x: &Tensor, e: &Evaluation, _: Option<f64>| -> R<()> {
            seen.push((k, x.to_vec()?, e.loss));
            Ok(())
        };
        let run = minimize(
            start,
            &evaluate,
            &mut opt,
            50,
            &AtomicBool::new(false),
            &mut on_iterate,
        )
        .unwrap();
        let StopReason::NonFinite { iter } = run.stop else {
            panic!("expected a non-finite stop, got {:?}", run.stop)
        };
        assert_eq!(
            iter as usize,
            seen.len(),
            "stops at the first non-finite iterate"
        );
        let (_, last_x, last_loss) = seen.last().unwrap();
        assert!(seen
            .iter()
            .all(|(_, _, l)| l.is_finite() && *l >= *last_loss));
        assert_eq!(&run.best.unwrap().to_vec().unwrap(), last_x);
        assert_eq!(run.best_loss, *last_loss);
    }

    #[test]
    fn interrupt_stops_before_the_next_step() {
        let evaluate =
            |x: &Tensor| -> R<Evaluation> { Ok(Evaluation::new(x.dot(x)?, x.scale(2.0)?)) };
        let mut opt = Optimizer::Lbfgs(Lbfgs::new(LbfgsConfig::default()));
        let start = Tensor::from_vec(vec![3.0], &[1], &Device::Cpu).unwrap();
        let mut count = 0;
        let run = minimize(
            start,
            &evaluate,
            &mut opt,
            10,
            &AtomicBool::new(true),
            &mut |_, _, _, _| -> R<()> {
                count += 1;
                Ok(())
            },
        )
        .unwrap();
        assert_eq!((run.stop, count), (StopReason::Interrupted, 1));
        assert_eq!(run.best.unwrap().to_vec().unwrap(), vec![3.0]);
    }

    /// Raised during the fourth evaluation (in the middle of it: after the flag, its
    /// matrix product is refused), as Ctrl-C would be: the run ends as interrupted, not as
    /// failed, with the best of the three iterates evaluated in full. Raised during the
    /// start's evaluation, there is no iterate, and still no error.
    #[test]
    fn a_flag_raised_during_an_evaluation_abandons_it() {
        let calls = std::cell::Cell::new(0);
        let interrupt = AtomicBool::new(false);
        let evaluate = |x: &Tensor| -> R<Evaluation> {
            calls.set(calls.get() + 1);
            if calls.get() == 4 {
                interrupt.store(true, Ordering::Relaxed);
            }
            let loss = x.reshape(&[1, 1])?.matmul(&x.reshape(&[1, 1])?)?;
            Ok(Evaluation::new(loss.to_scalar()? as f64, x.scale(2.0)?))
        };
        let mut opt = Optimizer::Adam(Adam::new(AdamConfig {
            lr: 0.5,
            ..Default::default()
        }));
        let start = Tensor::from_vec(vec![3.0], &[1], &Device::Cpu).unwrap();
        let mut seen = Vec::new();
        let mut on_iterate = |_, x: &Tensor, e: &Evaluation, _| -> R<()> {
            seen.push((x.to_vec()?, e.loss));
            Ok(())
        };
        let run = minimize(
            start.clone(),
            &evaluate,
            &mut opt,
            10,
            &interrupt,
            &mut on_iterate,
        )
        .unwrap();
        assert_eq!(run.stop, StopReason::Interrupted);
        assert_eq!(run.error, Some(TensorError::Interrupted));
        assert_eq!(seen.len(), 3, "the start and two steps were evaluated");
        assert_eq!(run.best_loss, seen[2].1, "Adam's steps all went down here");
        assert_eq!(run.best.unwrap().to_vec().unwrap(), seen[2].0);

        // The abandoned step had moved Adam's count and moments on: they were reset, so the
        // optimizer now runs exactly as a new one does.
        let (calls_before, lowered) = (calls.replace(100), AtomicBool::new(false));
        let iterates = |opt: &mut Optimizer| {
            let mut xs = Vec::new();
            let run = minimize(
                start.clone(),
                &evaluate,
                opt,
                3,
                &lowered,
                &mut |_, x, _, _| {
                    xs.push(x.to_vec()?);
                    Ok(())
                },
            );
            assert_eq!(run.unwrap().stop, StopReason::Finished);
            xs
        };
        let fresh = iterates(&mut Optimizer::Adam(Adam::new(AdamConfig {
            lr: 0.5,
            ..Default::default()
        })));
        assert_eq!(iterates(&mut opt), fresh);
        calls.set(calls_before);

        calls.set(3);
        interrupt.store(false, Ordering::Relaxed);
        let run = minimize(
            start,
            &evaluate,
            &mut opt,
            10,
            &interrupt,
            &mut |_, _, _, _| panic!("no iterate was evaluated"),
        )
        .unwrap();
        assert_eq!(
            (run.stop, run.best_loss),
            (StopReason::Interrupted, f64::INFINITY)
        );
        assert!(run.best.is_none());
        assert_eq!(run.error, Some(TensorError::Interrupted));
    }

    /// A device error after a few iterations (here the fourth evaluation runs out of
    /// memory) ends the run with the best iterate so far and the error, not just the error.
    #[test]
    fn an_error_mid_run_keeps_the_best_iterate_and_the_error() {
        let calls = std::cell::Cell::new(0);
        let evaluate = |x: &Tensor| -> R<Evaluation> {
            calls.set(calls.get() + 1);
            if calls.get() == 4 {
                return Err(TensorError::CudaFailed {
                    message: "out of memory".into(),
                });
            }
            Ok(Evaluation::new(x.dot(x)?, x.scale(2.0)?))
        };
        let mut opt = Optimizer::Adam(Adam::new(AdamConfig {
            lr: 0.5,
            ..Default::default()
        }));
        let start = Tensor::from_vec(vec![3.0], &[1], &Device::Cpu).unwrap();
        let mut seen = Vec::new();
        let run = minimize(
            start,
            &evaluate,
            &mut opt,
            10,
            &AtomicBool::new(false),
            &mut |_, x, e, _| -> R<()> {
                seen.push((x.to_vec()?, e.loss));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(run.stop, StopReason::Failed { iter: 2 });
        assert_eq!(seen.len(), 3, "the start and two steps were evaluated");
        let (best_x, best_loss) = seen
            .iter()
            .min_by(|a, b| a.1.total_cmp(&b.1))
            .cloned()
            .unwrap();
        assert!(best_loss < 9.0);
        assert_eq!(run.best.unwrap().to_vec().unwrap(), best_x);
        assert_eq!(
            run.error.unwrap().to_string(),
            "out of memory",
            "the error comes back with the best iterate"
        );
    }

    #[test]
    fn runs_all_iterations_and_reports_each_with_its_time() {
        let evaluate =
            |x: &Tensor| -> R<Evaluation> { Ok(Evaluation::new(x.dot(x)?, x.scale(2.0)?)) };
        let mut opt = Optimizer::Adam(Adam::new(AdamConfig {
            lr: 0.1,
            ..Default::default()
        }));
        let start = Tensor::from_vec(vec![3.0, -2.0], &[2], &Device::Cpu).unwrap();
        let mut ks = Vec::new();
        let run = minimize(
            start,
            &evaluate,
            &mut opt,
            5,
            &AtomicBool::new(false),
            &mut |k, _, _, ms| -> R<()> {
                ks.push((k, ms.is_some()));
                Ok(())
            },
        )
        .unwrap();
        assert_eq!(run.stop, StopReason::Finished);
        assert_eq!(
            ks,
            [
                (0, false),
                (1, true),
                (2, true),
                (3, true),
                (4, true),
                (5, true)
            ]
        );
        // Adam's steps are at most lr (|m̂|/√v̂ ≤ 1 while the gradient keeps its sign and
        // shrinks) and close to it here: 5 steps move each coordinate by just under 0.5.
        let best = run.best.unwrap().to_vec().unwrap();
        let moved = [3.0 - best[0], best[1] + 2.0];
        assert!(
            moved.iter().all(|m| (0.45..=0.5 + 1e-6).contains(m)),
            "{best:?}"
        );
    }
}
