//! Reverse-mode sweep over the tape.

use crate::error::TensorError;
use crate::storage::Storage;
use crate::tensor::Tensor;
use crate::Result;
use std::collections::{BTreeMap, HashMap};

/// Gradients of a scalar with respect to the variables it depends on, keyed by tensor id.
#[derive(Default)]
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

/// The op slot of a node (a poisoned lock only means another backward panicked mid-way).
fn lock(t: &Tensor) -> std::sync::MutexGuard<'_, Option<crate::op::Op>> {
    t.0.op.lock().unwrap_or_else(|e| e.into_inner())
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
        if !self.requires_grad() {
            return Err(TensorError::NoGraph);
        }
        // Collect the tape segment reachable from self, ordered by creation id.
        let mut tape: BTreeMap<u64, Tensor> = BTreeMap::new();
        let mut stack = vec![self.clone()];
        while let Some(t) = stack.pop() {
            if !t.requires_grad() || tape.contains_key(&t.id()) {
                continue;
            }
            if let Some(op) = &*lock(&t) {
                stack.extend(op.inputs().into_iter().cloned());
            }
            tape.insert(t.id(), t);
        }

        // Gradients not yet propagated, as storage on the loss's device; contributions from
        // several uses of a tensor accumulate through the backend.
        let mut pending: HashMap<u64, Storage> = HashMap::new();
        pending.insert(self.id(), Storage::full(1.0, 1, self.device())?);
        let mut grads = Grads::default();
        for (id, node) in tape.into_iter().rev() {
            let Some(grad) = pending.remove(&id) else {
                continue;
            };
            let op = lock(&node).take();
            match op {
                Some(op) => {
                    for (input, g) in op.backward(&node, grad)? {
                        match pending.get_mut(&input.id()) {
                            Some(acc) => acc.add_assign(&g)?,
                            None => {
                                pending.insert(input.id(), g);
                            }
                        }
                    }
                }
                None if node.0.recorded => return Err(TensorError::GraphFreed),
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
        let a_weak = Arc::downgrade(&a.0);
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
}
