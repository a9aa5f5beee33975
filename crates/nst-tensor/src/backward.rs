//! Reverse-mode sweep over the tape.

use crate::error::TensorError;
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

impl Tensor {
    /// ∂self/∂v for every variable `v` that `self` (a one-element tensor) depends on.
    ///
    /// The sweep visits recorded tensors newest first (the tape in reverse), so each node's
    /// gradient is complete before it is propagated; intermediate gradients are freed as soon
    /// as they have been used.
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
            if let Some(op) = &t.0.op {
                stack.extend(op.inputs().into_iter().cloned());
            }
            tape.insert(t.id(), t);
        }

        let mut pending: HashMap<u64, Vec<f32>> = HashMap::new();
        pending.insert(self.id(), vec![1.0]);
        let mut grads = Grads::default();
        for (id, node) in tape.into_iter().rev() {
            let Some(grad) = pending.remove(&id) else {
                continue;
            };
            match &node.0.op {
                Some(op) => {
                    for (input, g) in op.backward(&node, &grad)? {
                        match pending.get_mut(&input.id()) {
                            Some(acc) => nst_cpu::elementwise::add_assign(acc, &g),
                            None => {
                                pending.insert(input.id(), g);
                            }
                        }
                    }
                }
                None => {
                    let g = Tensor::from_vec(grad, node.dims(), node.device())?;
                    grads.by_id.insert(id, g);
                }
            }
        }
        Ok(grads)
    }
}
