//! Convergence on standard test problems.

use nst_optim::*;
use nst_tensor::{Device, Tensor, TensorError};

type Objective = dyn Fn(&Tensor) -> Result<Evaluation, TensorError>;

fn run(opt: &mut Optimizer, f: &Objective, x0: Vec<f32>, iters: usize) -> (Tensor, usize, usize) {
    let mut x = Tensor::from_vec(x0.clone(), &[x0.len()], &Device::Cpu).unwrap();
    let mut evals = 0;
    let mut counted = |x: &Tensor| {
        evals += 1;
        f(x)
    };
    let mut at_x = counted(&x).unwrap();
    let mut done = 0;
    for k in 0..iters {
        done = k + 1;
        match opt.step(&x, &at_x, &mut counted).unwrap() {
            Step::Moved { x: nx, eval } => {
                x = nx;
                at_x = match eval {
                    Some(e) => e,
                    None => counted(&x).unwrap(),
                };
            }
            Step::Converged => break,
        }
    }
    (x, done, evals)
}

/// f(a, b) = (1 − a)² + 100 (b − a²)², minimum 0 at (1, 1).
fn rosenbrock(x: &Tensor) -> Result<Evaluation, TensorError> {
    let v = x.to_vec().unwrap();
    let (a, b) = (v[0] as f64, v[1] as f64);
    let loss = (1.0 - a).powi(2) + 100.0 * (b - a * a).powi(2);
    let grad = vec![
        (-2.0 * (1.0 - a) - 400.0 * a * (b - a * a)) as f32,
        (200.0 * (b - a * a)) as f32,
    ];
    Ok(Evaluation {
        parts: vec![],
        loss,
        grad: Tensor::from_vec(grad, &[2], x.device())?,
    })
}

/// f(x) = ½ Σ λᵢ xᵢ² − Σ xᵢ with λ from 1 to 1000 (condition number 1000); minimum at 1/λᵢ.
fn ill_conditioned(x: &Tensor) -> Result<Evaluation, TensorError> {
    let v = x.to_vec().unwrap();
    let n = v.len();
    let lam = |i: usize| 1000f64.powf(i as f64 / (n - 1) as f64);
    let loss = v
        .iter()
        .enumerate()
        .map(|(i, &x)| 0.5 * lam(i) * (x as f64).powi(2) - x as f64)
        .sum();
    let grad = v
        .iter()
        .enumerate()
        .map(|(i, &x)| (lam(i) * x as f64 - 1.0) as f32)
        .collect();
    Ok(Evaluation {
        parts: vec![],
        loss,
        grad: Tensor::from_vec(grad, &[n], x.device())?,
    })
}

#[test]
fn lbfgs_strong_wolfe_solves_rosenbrock() {
    let mut opt = Optimizer::Lbfgs(Lbfgs::new(LbfgsConfig {
        line_search: LineSearch::StrongWolfe,
        ..Default::default()
    }));
    let (x, iters, evals) = run(&mut opt, &rosenbrock, vec![-1.2, 1.0], 200);
    let v = x.to_vec().unwrap();
    assert!(
        (v[0] - 1.0).abs() < 1e-3 && (v[1] - 1.0).abs() < 2e-3,
        "ended at {v:?} after {iters} iterations"
    );
    assert!(iters < 100, "took {iters} iterations ({evals} evaluations)");
}

#[test]
fn lbfgs_without_line_search_solves_ill_conditioned_quadratic() {
    let n = 50;
    let mut opt = Optimizer::Lbfgs(Lbfgs::new(LbfgsConfig::default()));
    let (x, iters, evals) = run(&mut opt, &ill_conditioned, vec![0.0; n], 300);
    // One evaluation per iteration (the last, converged step evaluates nothing).
    assert!(
        evals == iters || evals == iters + 1,
        "no line search: {evals} evaluations in {iters} iterations"
    );
    let lam = |i: usize| 1000f64.powf(i as f64 / (n - 1) as f64);
    let err = x
        .to_vec()
        .unwrap()
        .iter()
        .enumerate()
        .map(|(i, &v)| (v as f64 - 1.0 / lam(i)).abs())
        .fold(0.0, f64::max);
    assert!(err < 1e-4, "max error {err:.2e} after {iters} iterations");
}

#[test]
fn lbfgs_strong_wolfe_solves_ill_conditioned_quadratic_faster_than_gradient_descent_could() {
    let n = 50;
    let mut opt = Optimizer::Lbfgs(Lbfgs::new(LbfgsConfig {
        line_search: LineSearch::StrongWolfe,
        ..Default::default()
    }));
    let (x, iters, _) = run(&mut opt, &ill_conditioned, vec![0.0; n], 300);
    let f = ill_conditioned(&x).unwrap().loss;
    let fmin: f64 = (0..n)
        .map(|i| -0.5 / 1000f64.powf(i as f64 / (n - 1) as f64))
        .sum();
    assert!((f - fmin).abs() < 1e-6 * fmin.abs(), "f = {f}, min {fmin}");
    // Steepest descent needs O(κ) = thousands of iterations here.
    assert!(iters < 120, "{iters} iterations");
}

#[test]
fn adam_converges_on_quadratic() {
    let mut opt = Optimizer::Adam(Adam::new(AdamConfig {
        lr: 0.05,
        ..Default::default()
    }));
    let f = |x: &Tensor| -> Result<Evaluation, TensorError> {
        let v = x.to_vec().unwrap();
        let loss = v
            .iter()
            .enumerate()
            .map(|(i, &x)| (i as f64 + 1.0) * (x as f64 - 2.0).powi(2))
            .sum();
        let g = v
            .iter()
            .enumerate()
            .map(|(i, &x)| (2.0 * (i as f64 + 1.0) * (x as f64 - 2.0)) as f32)
            .collect();
        Ok(Evaluation {
            parts: vec![],
            loss,
            grad: Tensor::from_vec(g, &[v.len()], x.device())?,
        })
    };
    let (x, _, _) = run(&mut opt, &f, vec![-1.0, 0.0, 5.0], 2000);
    for v in x.to_vec().unwrap() {
        assert!((v - 2.0).abs() < 1e-2, "{v}");
    }
}

#[test]
fn converged_at_a_stationary_point() {
    let mut opt = Optimizer::Lbfgs(Lbfgs::new(LbfgsConfig::default()));
    let f = |x: &Tensor| -> Result<Evaluation, TensorError> {
        Ok(Evaluation {
            parts: vec![],
            loss: 0.0,
            grad: Tensor::zeros(x.dims(), x.device())?,
        })
    };
    let (_, iters, _) = run(&mut opt, &f, vec![1.0; 3], 10);
    assert_eq!(iters, 1);
}

/// f(x) = 1e7 + ½ Σ xᵢ², its loss rounded to f32 like a real objective's. The first step
/// (length 1/‖g‖₁) lowers the loss by ‖g‖²/‖g‖₁ ≈ 0.04, below the f32 spacing at 1e7 (1.0),
/// so the reported loss does not change: L-BFGS must go on, not call that convergence.
#[test]
fn lbfgs_continues_when_the_first_step_is_below_loss_resolution() {
    let f = |x: &Tensor| -> Result<Evaluation, TensorError> {
        let v = x.to_vec().unwrap();
        let loss = 1e7 + 0.5 * v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>();
        Ok(Evaluation {
            parts: vec![],
            loss: loss as f32 as f64,
            grad: x.clone(),
        })
    };
    let x0: Vec<f32> = (0..1000).map(|i| 0.01 * (i % 7 + 1) as f32).collect();
    let mut opt = Optimizer::Lbfgs(Lbfgs::new(LbfgsConfig::default()));
    let (x, iters, _) = run(&mut opt, &f, x0, 10);
    assert!(iters >= 2, "stopped after {iters} iteration(s)");
    assert!(
        x.abs_max().unwrap() < 1e-4,
        "max |x| = {} after {iters} iterations",
        x.abs_max().unwrap()
    );
}
