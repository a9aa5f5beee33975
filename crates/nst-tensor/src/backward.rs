//! Reverse-mode sweep over the tape.

use crate::error::TensorError;
use crate::storage::Storage;
use crate::tensor::{Node, NodeRef, Tensor};
use crate::Result;
use std::collections::{BTreeMap, HashMap};

/// Gradients of a scalar with respect to the variables it depends on, keyed by tensor id.
#[derive(Debug, Default)]
pub struct Grads {
    by_id: HashMap<u64, Tensor>,
}

impl Grads {
    /// ∂loss/∂`var`, or `None` if `var` is not a variable the loss depends on.
    pub fn get(&self, var: &Tensor) -> Option<&Tensor> {
        self.by_id.get(&var.id())
    }

    /// Takes the gradient out, avoiding a copy.
    pub fn remove(&mut self, var: &Tensor) -> Option<Tensor> {
        self.by_id.remove(&var.id())
    }
}

/// Gradients not yet propagated, by node id. An op may add into one in place
/// ([`Pending::get_mut`]) instead of returning a contribution, saving a buffer of its size.
#[derive(Default)]
pub(crate) struct Pending(HashMap<u64, Storage>);

impl Pending {
    /// Adds a contribution to node `id`'s gradient.
    fn add(&mut self, id: u64, g: Storage) -> Result<()> {
        match self.0.get_mut(&id) {
            Some(acc) => acc.add_assign(&g),
            None => {
                self.0.insert(id, g);
                Ok(())
            }
        }
    }

    /// Takes node `id`'s complete gradient out, to propagate it.
    fn take(&mut self, id: u64) -> Option<Storage> {
        self.0.remove(&id)
    }

    /// Node `id`'s gradient so far, if another use already contributed one.
    pub(crate) fn get_mut(&mut self, id: u64) -> Option<&mut Storage> {
        self.0.get_mut(&id)
    }
}

/// The op slot of a node (a poisoned lock only means another backward panicked mid-way).
fn lock(node: &Node) -> std::sync::MutexGuard<'_, Option<crate::op::Op>> {
    node.op.lock().unwrap_or_else(|e| e.into_inner())
}

impl Tensor {
    /// ∂self/∂v for every variable `v` that `self` (a one-element tensor) depends on.
    ///
    /// The sweep visits recorded tensors newest first (the tape in reverse), so each node's
    /// gradient is complete before it is propagated; intermediate gradients are freed as soon
    /// as they have been used.
    ///
    /// Like PyTorch's default (`retain_graph=False`), the sweep frees the graph as it goes:
    /// each op's record, and with it the activations it saved, is dropped once its gradients
    /// are computed, so the deep layers' activations are gone before the shallow, large
    /// gradients are formed (at 2048² this is gigabytes). Activations the caller still holds
    /// stay alive. A second `backward` through the same ops is an error.
    pub fn backward(&self) -> Result<Grads> {
        if self.elem_count() != 1 {
            return Err(TensorError::NotScalar {
                op: "backward",
                shape: self.dims().to_vec(),
            });
        }
        self.backward_from(Storage::full(1.0, 1, self.device())?)
    }

    /// The sweep of [`Tensor::backward`] from a given gradient of self (`seed` = ∂L/∂self,
    /// self's size): how a checkpoint propagates through its recomputed graph.
    pub(crate) fn backward_from(&self, seed: Storage) -> Result<Grads> {
        if !self.requires_grad() {
            return Err(TensorError::NoGraph);
        }
        // Collect the tape segment reachable from self, ordered by creation id. Only nodes:
        // the values ops need are in their records.
        let mut tape: BTreeMap<u64, NodeRef> = BTreeMap::new();
        let mut stack = vec![self.node()];
        while let Some(node) = stack.pop() {
            if !node.requires_grad() || tape.contains_key(&node.id) {
                continue;
            }
            if let Some(op) = &*lock(&node) {
                stack.extend(op.inputs().into_iter().cloned());
            }
            tape.insert(node.id, node);
        }

        // Gradients not yet propagated, as storage on the loss's device; contributions from
        // several uses of a tensor accumulate through the backend.
        let mut pending = Pending::default();
        pending.add(self.id(), seed)?;
        let mut grads = Grads::default();
        for (id, node) in tape.into_iter().rev() {
            let Some(grad) = pending.take(id) else {
                continue;
            };
            crate::interrupt::check()?;
            let op = lock(&node).take();
            match op {
                Some(op) => {
                    crate::memory_trace::set_phase(op.backward_label(), node.dims());
                    for (input, g) in op.backward(grad, &mut pending)? {
                        pending.add(input.id, g)?;
                    }
                }
                None if node.recorded => return Err(TensorError::GraphFreed),
                None => {
                    grads
                        .by_id
                        .insert(id, Tensor::from_storage(grad, node.dims()));
                }
            }
        }
        Ok(grads)
    }
}

#[cfg(test)]
mod tests {
    use crate::{Device, Tensor, TensorError};
    use std::sync::Arc;

    #[test]
    fn backward_frees_saved_activations_and_refuses_a_second_pass() {
        let x = Tensor::variable(vec![1.0, -2.0, 3.0], &[3], &Device::Cpu).unwrap();
        let a = x.scale(2.0).unwrap();
        let loss = a.square().unwrap().sum().unwrap();
        let a_weak = Arc::downgrade(&a.storage);
        drop(a);
        // Still alive: the square op saved it for its gradient.
        assert!(a_weak.upgrade().is_some());
        let grads = loss.backward().unwrap();
        assert_eq!(
            grads.get(&x).unwrap().to_vec().unwrap(),
            vec![8.0, -16.0, 24.0]
        );
        assert!(
            a_weak.upgrade().is_none(),
            "the activation outlived backward"
        );
        assert!(matches!(loss.backward(), Err(TensorError::GraphFreed)));
    }

    /// A frozen network (only the image is a variable) keeps no activation it does not read
    /// in backward: the convolutions keep one-bit masks, max pooling its winners, and only
    /// the features a loss reads (here through a Gram matrix) stay alive. With a learnable
    /// weight, the layer's input is kept for `dw`.
    #[test]
    fn frozen_layers_keep_masks_not_activations() {
        let dev = Device::Cpu;
        let ramp = |n: usize, s: f32| (0..n).map(|i| ((i as f32) * s).sin()).collect::<Vec<_>>();
        let x = Tensor::variable(ramp(2 * 8 * 8, 0.37), &[1, 2, 8, 8], &dev).unwrap();
        let w1 = Tensor::from_vec(ramp(3 * 2 * 9, 0.11), &[3, 2, 3, 3], &dev).unwrap();
        let w2 = Tensor::from_vec(ramp(3 * 3 * 9, 0.13), &[3, 3, 3, 3], &dev).unwrap();

        let y1 = x.conv2d_relu(&w1, None, 1, 1).unwrap();
        let pooled = y1.max_pool2d().unwrap();
        let y2 = pooled.conv2d_relu(&w2, None, 1, 1).unwrap();
        let loss = y2.gram(1.0).unwrap().sum().unwrap();
        let (y1_data, pooled_data, y2_data) = (
            Arc::downgrade(&y1.storage),
            Arc::downgrade(&pooled.storage),
            Arc::downgrade(&y2.storage),
        );
        drop((y1, pooled, y2));
        assert!(y1_data.upgrade().is_none(), "conv output kept");
        assert!(pooled_data.upgrade().is_none(), "pooled activation kept");
        assert!(
            y2_data.upgrade().is_some(),
            "the Gram matrix reads its features"
        );
        assert!(loss.backward().unwrap().get(&x).is_some());

        // A learnable second layer needs its input for dw.
        let w2 = w2.to_variable();
        let pooled = x
            .conv2d_relu(&w1, None, 1, 1)
            .unwrap()
            .max_pool2d()
            .unwrap();
        let loss = pooled.conv2d(&w2, None, 1, 1).unwrap().sum().unwrap();
        let pooled_data = Arc::downgrade(&pooled.storage);
        drop(pooled);
        assert!(
            pooled_data.upgrade().is_some(),
            "dw needs the layer's input"
        );
        let grads = loss.backward().unwrap();
        assert!(grads.get(&w2).is_some() && grads.get(&x).is_some());
        assert!(
            pooled_data.upgrade().is_none(),
            "freed by the backward pass"
        );
    }

    /// A loss layer's features, once only the Gram record holds them, become their own
    /// gradient: no second buffer of their size at the start of the backward pass. The values
    /// are those of the out-of-place rule, which runs where the caller still holds F.
    #[test]
    fn gram_gradient_takes_the_features_buffer_when_nothing_else_reads_them() {
        use crate::storage::Storage;
        let data_ptr = |t: &Tensor| match &*t.storage {
            Storage::Cpu(s) => s.as_slice().as_ptr(),
            _ => unreachable!("a CPU test"),
        };
        let dev = Device::Cpu;
        // Positive values, so the ReLU passes everything and its gradient is masked in place.
        let values: Vec<f32> = (0..2 * 3 * 5 * 7)
            .map(|i| 0.1 + (i as f32 * 0.61).sin().abs())
            .collect();
        let x = Tensor::variable(values, &[2, 3, 5, 7], &dev).unwrap();
        let gradient = |keep_features: bool| {
            let f = x.relu().unwrap();
            let features_ptr = data_ptr(&f);
            let loss = f.gram(0.3).unwrap().square().unwrap().sum().unwrap();
            let kept = keep_features.then_some(f);
            let g = loss.backward().unwrap().remove(&x).unwrap();
            drop(kept);
            (data_ptr(&g) == features_ptr, g.to_vec().unwrap())
        };
        let (reused, in_place) = gradient(false);
        assert!(reused, "the gradient did not take the features' buffer");
        let (reused, out_of_place) = gradient(true);
        assert!(!reused, "the caller's features were overwritten");
        assert_eq!(in_place.len(), out_of_place.len());
        for (a, b) in in_place.iter().zip(&out_of_place) {
            assert!((a - b).abs() <= 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        }
    }
}
