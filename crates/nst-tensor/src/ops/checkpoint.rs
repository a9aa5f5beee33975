//! Recomputation ("gradient checkpointing"): a function of some tensors whose intermediate
//! values are not kept for the backward pass but computed again there.
//!
//! Forward: `y = f(inputs)`, run without recording, so nothing `f` makes outlives the call
//! except `y`. The tape keeps the inputs and `f`. Backward: `f` runs again on the same input
//! values, this time recorded, and the incoming `∂L/∂y` is propagated through that fresh
//! graph to the inputs.
//!
//! It trades compute for memory where a value is large and cheap to make again. Style
//! transfer's use: relu1_1's style term, `J_s^1(relu1_1(x))`. Its features are the largest
//! the losses read (64 channels at full resolution, 4 GiB at 4096²) and would otherwise stay
//! alive from the forward pass to the end of the backward pass, through the memory peak at its
//! start. Recomputing them costs conv1_1 (3 input channels, the cheapest layer) twice more
//! forward (the checkpoint's own forward pass, and again in backward) and once more backward
//! per evaluation.

use crate::grad_mode::with_grad;
use crate::op::{InputGrad, Op};
use crate::storage::Storage;
use crate::{no_grad, Result, Tensor, TensorError};
use std::sync::Arc;

/// The function a checkpoint recomputes.
pub(crate) type Recompute = Arc<dyn Fn(&[Tensor]) -> Result<Tensor> + Send + Sync>;

impl Tensor {
    /// `f(inputs)`, differentiable with respect to the inputs, keeping none of the values `f`
    /// computes on the way: the backward pass calls `f` again. `f` must compute the same
    /// function every time (it is given tensors with the same values).
    ///
    /// ```
    /// use nst_tensor::{Device, Tensor};
    /// # fn main() -> nst_tensor::Result<()> {
    /// let x = Tensor::variable(vec![1.0, -2.0, 3.0], &[3], &Device::Cpu)?;
    /// // Σ relu(2x)²: the intermediate 2x and its ReLU are not kept for backward.
    /// let y = Tensor::checkpoint(&[&x], |t| t[0].scale(2.0)?.relu()?.square()?.sum())?;
    /// assert_eq!(y.to_scalar()?, 40.0);
    /// assert_eq!(y.backward()?.get(&x).unwrap().to_vec()?, vec![8.0, 0.0, 24.0]);
    /// # Ok(()) }
    /// ```
    pub fn checkpoint(
        inputs: &[&Tensor],
        f: impl Fn(&[Tensor]) -> Result<Tensor> + Send + Sync + 'static,
    ) -> Result<Tensor> {
        let values: Vec<Tensor> = inputs.iter().map(|t| t.detach()).collect();
        let y = no_grad(|| f(&values))?;
        if !Tensor::will_record(inputs) {
            return Ok(y);
        }
        let f: Recompute = Arc::new(f);
        Ok(Tensor::from_shared_op(y.value(), y.dims(), inputs, || {
            Op::Checkpoint {
                inputs: inputs.iter().map(|&t| t.clone()).collect(),
                f,
            }
        }))
    }
}

/// Recomputes `f` on the saved inputs with recording on, then propagates `dy` through it.
pub(crate) fn backward(inputs: &[Tensor], f: &Recompute, dy: Storage) -> Result<Vec<InputGrad>> {
    // Leaves sharing the inputs' data: variables where a gradient is wanted, constants
    // elsewhere (so `f`'s graph reaches only what needs it).
    let leaves: Vec<Tensor> = inputs
        .iter()
        .map(|t| {
            if t.requires_grad() {
                t.to_variable()
            } else {
                t.detach()
            }
        })
        .collect();
    let y = with_grad(|| f(&leaves))?;
    if !y.requires_grad() {
        return Ok(vec![]);
    }
    if y.elem_count() != dy.len() {
        return Err(TensorError::ShapeMismatch {
            op: "checkpoint (the recomputed value changed shape)",
            lhs: y.dims().to_vec(),
            rhs: vec![dy.len()],
        });
    }
    let mut grads = y.backward_from(dy)?;
    inputs
        .iter()
        .zip(&leaves)
        .filter_map(|(input, leaf)| {
            grads
                .remove(leaf)
                .map(|g| Ok((input.node(), g.into_storage()?)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use crate::{no_grad, Device, Tensor};
    use std::sync::{Arc, Mutex, Weak};

    fn ramp(n: usize, s: f32) -> Vec<f32> {
        (0..n).map(|i| ((i as f32) * s).sin()).collect()
    }

    /// A style-like term, `Σ gram(relu(conv(x, w)))²`, with and without a checkpoint: the
    /// same value and the same gradients for x and for a learnable w, and the checkpointed
    /// features are not kept between the passes.
    #[test]
    fn recomputes_the_same_gradients_without_keeping_the_intermediates() {
        let dev = Device::Cpu;
        let x = Tensor::variable(ramp(2 * 9 * 7, 0.37), &[1, 2, 9, 7], &dev).unwrap();
        let w = Tensor::variable(ramp(4 * 2 * 9, 0.23), &[4, 2, 3, 3], &dev).unwrap();
        let term = |t: &[Tensor]| {
            t[0].conv2d(&t[1], None, 1, 1)?
                .relu()?
                .gram(0.5)?
                .square()?
                .sum()
        };

        let plain = term(&[x.clone(), w.clone()]).unwrap();
        let plain_grads = plain.backward().unwrap();

        // The features the checkpoint makes, seen through a weak reference.
        let features: Arc<Mutex<Vec<Weak<crate::storage::Storage>>>> = Arc::default();
        let seen = features.clone();
        let checkpointed = Tensor::checkpoint(&[&x, &w], move |t| {
            let f = t[0].conv2d(&t[1], None, 1, 1)?.relu()?;
            seen.lock().unwrap().push(Arc::downgrade(&f.storage));
            f.gram(0.5)?.square()?.sum()
        })
        .unwrap();
        assert!(
            features.lock().unwrap()[0].upgrade().is_none(),
            "the forward pass kept the checkpointed features"
        );
        assert_eq!(
            checkpointed.to_scalar().unwrap(),
            plain.to_scalar().unwrap()
        );
        let grads = checkpointed.backward().unwrap();
        assert_eq!(
            features.lock().unwrap().len(),
            2,
            "backward recomputes once"
        );
        for v in [&x, &w] {
            assert_eq!(
                grads.get(v).unwrap().to_vec().unwrap(),
                plain_grads.get(v).unwrap().to_vec().unwrap()
            );
        }
    }

    /// Constants stay constants, and without recording the checkpoint is just `f`.
    #[test]
    fn only_inputs_that_need_a_gradient_get_one() {
        let dev = Device::Cpu;
        let x = Tensor::variable(vec![1.0, 2.0], &[2], &dev).unwrap();
        let c = Tensor::from_vec(vec![3.0, -1.0], &[2], &dev).unwrap();
        let y = Tensor::checkpoint(&[&x, &c], |t| t[0].mul(&t[1])?.sum()).unwrap();
        let grads = y.backward().unwrap();
        assert_eq!(grads.get(&x).unwrap().to_vec().unwrap(), vec![3.0, -1.0]);
        assert!(grads.get(&c).is_none());
        let y = no_grad(|| Tensor::checkpoint(&[&x, &c], |t| t[0].mul(&t[1])?.sum())).unwrap();
        assert!(!y.requires_grad());
        assert_eq!(y.to_scalar().unwrap(), 1.0);
    }
}
