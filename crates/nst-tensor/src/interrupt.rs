//! Stopping a long computation from another thread (Ctrl-C, a cancelled job) without waiting
//! for it to finish.
//!
//! Inside [`interruptible`], the expensive ops (convolutions, matrix products, Gram matrices)
//! and every step of a backward pass first look at the flag, and once it is raised they
//! return [`TensorError::Interrupted`] instead of running. The caller's `?` then unwinds the
//! evaluation, dropping its partial graph. Why not only between iterations: at large sizes one
//! evaluation of VGG-19 on a CPU takes minutes (at 4096² about 30 convolutions of seconds
//! each, forward and backward), and a user who pressed Ctrl-C waited for all of it. Now
//! they wait for one op.
//!
//! The flag is per thread, like [`no_grad`](crate::no_grad): ops are dispatched from the
//! caller's thread (rayon's workers only run inside one op), so that is where it is read.
//! Call it, like `no_grad`, from a thread outside rayon's pool: a pool thread waiting inside
//! an op may run other queued work on its stack, which would then see this flag.

use crate::{Result, TensorError};
use std::sync::atomic::{AtomicBool, Ordering};

scoped_tls::scoped_thread_local!(static FLAG: AtomicBool);

/// Runs `f` so that once `flag` is raised, the next convolution, matrix product, Gram
/// matrix or backward step on this thread returns [`TensorError::Interrupted`]. Nests (the
/// innermost flag counts) and restores the outer one afterwards, also if `f` panics.
///
/// ```
/// use nst_tensor::{interruptible, Device, Tensor, TensorError};
/// use std::sync::atomic::AtomicBool;
/// let a = Tensor::from_vec(vec![1.0, 2.0], &[1, 2], &Device::Cpu).unwrap();
/// let b = Tensor::from_vec(vec![3.0, 4.0], &[2, 1], &Device::Cpu).unwrap();
/// let stop = AtomicBool::new(true);
/// let product = interruptible(&stop, || a.matmul(&b));
/// assert_eq!(product.unwrap_err(), TensorError::Interrupted);
/// ```
pub fn interruptible<R>(flag: &AtomicBool, f: impl FnOnce() -> R) -> R {
    FLAG.set(flag, f)
}

/// `Err(Interrupted)` if this thread runs inside [`interruptible`] and its flag is raised.
pub(crate) fn check() -> Result<()> {
    if FLAG.is_set() && FLAG.with(|flag| flag.load(Ordering::Relaxed)) {
        return Err(TensorError::Interrupted);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{test_device, Device, Tensor};

    fn net(dev: &Device) -> (Tensor, Tensor) {
        let x = Tensor::variable((0..16).map(|i| i as f32).collect(), &[1, 1, 4, 4], dev);
        let w = Tensor::from_vec(vec![0.5; 9], &[1, 1, 3, 3], dev);
        (x.unwrap(), w.unwrap())
    }

    fn a_raised_flag_stops_the_expensive_ops_and_backward(dev: &Device) {
        let (x, w) = net(dev);
        let raised = AtomicBool::new(true);
        let stopped = |r: Result<Tensor>| assert_eq!(r.unwrap_err(), TensorError::Interrupted);
        interruptible(&raised, || {
            stopped(x.conv2d(&w, None, 1, 1));
            stopped(x.reshape(&[4, 4]).and_then(|m| m.matmul(&m)));
            stopped(x.gram(1.0));
            // Cheap ops still run: they cannot hold a user up.
            assert!(x.scale(2.0).is_ok());
        });
        // Outside the scope the flag means nothing.
        assert!(x.conv2d(&w, None, 1, 1).is_ok());

        // A graph built before the flag was raised: its backward stops at the first step,
        // and the device is still usable afterwards.
        let lowered = AtomicBool::new(false);
        let loss = x
            .conv2d(&w, None, 1, 1)
            .unwrap()
            .square()
            .unwrap()
            .sum()
            .unwrap();
        interruptible(&lowered, || {
            lowered.store(true, Ordering::Relaxed);
            assert_eq!(loss.backward().unwrap_err(), TensorError::Interrupted);
        });
        let again = x.conv2d(&w, None, 1, 1).unwrap().sum().unwrap().backward();
        // ∂/∂x of Σ conv(x, w) with 0.5 everywhere in w: 0.5 × how many outputs see each x.
        let dx = again.unwrap().get(&x).unwrap().to_vec().unwrap();
        assert_eq!((dx[0], dx[5]), (0.5 * 4.0, 0.5 * 9.0));
    }
    test_device!(a_raised_flag_stops_the_expensive_ops_and_backward);

    fn the_innermost_flag_counts_and_the_outer_one_is_restored(dev: &Device) {
        let (x, w) = net(dev);
        let (raised, lowered) = (AtomicBool::new(true), AtomicBool::new(false));
        interruptible(&raised, || {
            assert!(interruptible(&lowered, || x.conv2d(&w, None, 1, 1)).is_ok());
            assert!(x.conv2d(&w, None, 1, 1).is_err());
        });
        let grads = interruptible(&lowered, || {
            let loss = x.conv2d(&w, None, 1, 1)?.square()?.sum()?;
            loss.backward()
        });
        assert!(grads.unwrap().get(&x).is_some());
    }
    test_device!(the_innermost_flag_counts_and_the_outer_one_is_restored);
}
