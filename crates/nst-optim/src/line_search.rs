//! Strong-Wolfe line search (Nocedal & Wright, *Numerical Optimization*, Algorithms 3.5 and
//! 3.6) with safeguarded cubic interpolation.

use crate::Evaluation;
use nst_tensor::{Tensor, TensorError};

const C1: f64 = 1e-4;
const C2: f64 = 0.9;
const MAX_EVALS: usize = 25;

/// A trial point along the line: step t, loss, directional derivative, evaluation.
#[derive(Clone)]
struct Trial {
    t: f64,
    loss: f64,
    gtd: f64,
    eval: Evaluation,
}

/// Minimiser of the cubic through (t1, f1, g1) and (t2, f2, g2), kept inside the bracket with
/// a 10% margin; bisection when the cubic has no usable minimum.
fn cubic_min(a: &Trial, b: &Trial) -> f64 {
    let (lo, hi) = (a.t.min(b.t), a.t.max(b.t));
    let d1 = a.gtd + b.gtd - 3.0 * (a.loss - b.loss) / (a.t - b.t);
    let d2sq = d1 * d1 - a.gtd * b.gtd;
    let mid = 0.5 * (lo + hi);
    if d2sq < 0.0 || !d2sq.is_finite() {
        return mid;
    }
    let d2 = d2sq.sqrt();
    let t = if a.t <= b.t {
        b.t - (b.t - a.t) * ((b.gtd + d2 - d1) / (b.gtd - a.gtd + 2.0 * d2))
    } else {
        a.t - (a.t - b.t) * ((a.gtd + d2 - d1) / (a.gtd - b.gtd + 2.0 * d2))
    };
    let margin = 0.1 * (hi - lo);
    if t.is_finite() && t > lo + margin && t < hi - margin {
        t
    } else {
        mid
    }
}

/// Finds t satisfying the strong Wolfe conditions along direction `d` from `x`
/// (f(x) = `loss0`, ∇f(x)ᵀd = `gtd0` < 0), starting from `t0`. Returns the step and the
/// evaluation there; after 25 evaluations, the best point found.
pub(crate) fn strong_wolfe<E: From<TensorError>>(
    x: &Tensor,
    loss0: f64,
    gtd0: f64,
    d: &Tensor,
    t0: f64,
    f: &mut dyn FnMut(&Tensor) -> Result<Evaluation, E>,
) -> Result<(f64, Evaluation), E> {
    let mut evals = 0;
    let mut probe = |t: f64, evals: &mut usize| -> Result<Trial, E> {
        *evals += 1;
        let eval = f(&x.axpby(1.0, d, t as f32)?)?;
        let gtd = eval.grad.dot(d)?;
        Ok(Trial {
            t,
            loss: eval.loss,
            gtd,
            eval,
        })
    };
    let sufficient = |tr: &Trial| tr.loss <= loss0 + C1 * tr.t * gtd0 && tr.loss.is_finite();
    let curvature = |tr: &Trial| tr.gtd.abs() <= -C2 * gtd0;

    // Bracketing phase: grow t until a bracket [lo, hi] holds an acceptable point.
    let mut prev: Option<Trial> = None;
    let mut t = t0;
    let (mut lo, mut hi) = loop {
        let cur = probe(t, &mut evals)?;
        let worse_than_prev = prev.as_ref().is_some_and(|p| cur.loss >= p.loss);
        if !sufficient(&cur) || worse_than_prev {
            match prev {
                Some(p) => break (p, cur),
                // No accepted point yet: bracket between 0 and t by shrinking.
                None => {
                    if evals >= MAX_EVALS {
                        return Ok((cur.t, cur.eval));
                    }
                    t *= 0.5;
                    continue;
                }
            }
        }
        if curvature(&cur) {
            return Ok((cur.t, cur.eval));
        }
        if cur.gtd >= 0.0 {
            match prev {
                Some(p) => break (cur, p),
                None => return Ok((cur.t, cur.eval)),
            }
        }
        if evals >= MAX_EVALS {
            return Ok((cur.t, cur.eval));
        }
        t = cur.t * 2.0;
        prev = Some(cur);
    };
    // Zoom phase: `lo` satisfies sufficient decrease with the lowest loss so far.
    while evals < MAX_EVALS {
        let t = cubic_min(&lo, &hi);
        let cur = probe(t, &mut evals)?;
        if !sufficient(&cur) || cur.loss >= lo.loss {
            hi = cur;
        } else {
            if curvature(&cur) {
                return Ok((cur.t, cur.eval));
            }
            if cur.gtd * (hi.t - lo.t) >= 0.0 {
                hi = lo;
            }
            lo = cur;
        }
        if (hi.t - lo.t).abs() < 1e-12 * lo.t.abs().max(1e-12) {
            break;
        }
    }
    Ok((lo.t, lo.eval))
}
