//! The `Tensor` type: shape, shared storage (which knows its device), and the op that
//! produced it.

use crate::device::Device;
use crate::error::TensorError;
use crate::grad_mode::is_grad_enabled;
use crate::op::Op;
use crate::storage::Storage;
use crate::Result;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Creation order of tensors. The autodiff tape is the set of recorded tensors ordered by
/// this id: an op's output is always newer than its inputs, so walking ids downwards is a
/// valid reverse topological order.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// An f32 array on a [`Device`], contiguous and row-major. Cheap to clone.
#[derive(Clone)]
pub struct Tensor(pub(crate) Arc<Inner>);

pub(crate) struct Inner {
    pub(crate) id: u64,
    pub(crate) shape: Vec<usize>,
    /// The data; its variant is the device (there is no separate device field to disagree).
    pub(crate) storage: Arc<Storage>,
    /// A leaf whose gradient `backward` reports.
    pub(crate) is_variable: bool,
    /// Whether an op was recorded for autodiff (it stays true after backward consumed it).
    pub(crate) recorded: bool,
    /// How this tensor was computed, until `backward` takes it (freeing what it saved).
    pub(crate) op: Mutex<Option<Op>>,
}

fn check_len(len: usize, shape: &[usize]) -> Result<()> {
    let want: usize = shape.iter().product();
    if len != want {
        return Err(TensorError::DataLength {
            shape: shape.to_vec(),
            got: len,
            want,
        });
    }
    Ok(())
}

impl Tensor {
    fn build(storage: Arc<Storage>, shape: &[usize], is_variable: bool, op: Option<Op>) -> Self {
        debug_assert_eq!(storage.len(), shape.iter().product::<usize>());
        Tensor(Arc::new(Inner {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shape: shape.to_vec(),
            storage,
            is_variable,
            recorded: op.is_some(),
            op: Mutex::new(op),
        }))
    }

    /// A constant tensor (no gradient) holding `data` in row-major order, on `device`.
    pub fn from_vec(data: Vec<f32>, shape: &[usize], device: &Device) -> Result<Self> {
        check_len(data.len(), shape)?;
        let storage = Storage::from_vec(data, device)?;
        Ok(Self::build(Arc::new(storage), shape, false, None))
    }

    /// A leaf that requires a gradient: [`Tensor::backward`] reports ∂loss/∂self.
    pub fn variable(data: Vec<f32>, shape: &[usize], device: &Device) -> Result<Self> {
        Ok(Self::from_vec(data, shape, device)?.to_variable())
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize], device: &Device) -> Result<Self> {
        Self::full(0.0, shape, device)
    }

    /// A tensor filled with `value`.
    pub fn full(value: f32, shape: &[usize], device: &Device) -> Result<Self> {
        let storage = Storage::full(value, shape.iter().product(), device)?;
        Ok(Self::build(Arc::new(storage), shape, false, None))
    }

    /// A scalar (shape `[]`).
    pub fn scalar(value: f32, device: &Device) -> Result<Self> {
        Self::full(value, &[], device)
    }

    /// The same data as a fresh leaf that requires a gradient (shares storage).
    pub fn to_variable(&self) -> Self {
        Self::build(self.0.storage.clone(), &self.0.shape, true, None)
    }

    /// The same data cut off from the graph: a constant (shares storage).
    pub fn detach(&self) -> Self {
        Self::build(self.0.storage.clone(), &self.0.shape, false, None)
    }

    /// A constant copy on `device` (the same tensor, detached, if it is there already). Call
    /// [`Tensor::to_variable`] on the copy to differentiate with respect to it there.
    pub fn to_device(&self, device: &Device) -> Result<Self> {
        if self.device() == device {
            return Ok(self.detach());
        }
        Self::from_vec(self.to_vec()?, self.dims(), device)
    }

    /// The output of an op: records `op` on the tape when gradients are enabled and any of
    /// `inputs` requires a gradient.
    pub(crate) fn from_op(
        storage: Storage,
        shape: &[usize],
        inputs: &[&Tensor],
        op: impl FnOnce() -> Op,
    ) -> Self {
        Self::from_shared_op(Arc::new(storage), shape, inputs, op)
    }

    /// [`Tensor::from_op`] for an output that shares its input's storage (reshape).
    pub(crate) fn from_shared_op(
        storage: Arc<Storage>,
        shape: &[usize],
        inputs: &[&Tensor],
        op: impl FnOnce() -> Op,
    ) -> Self {
        let record = is_grad_enabled() && inputs.iter().any(|t| t.requires_grad());
        Self::build(storage, shape, false, record.then(op))
    }

    /// A constant made from storage an op or the backward pass computed.
    pub(crate) fn from_storage(storage: Storage, shape: &[usize]) -> Self {
        Self::build(Arc::new(storage), shape, false, None)
    }

    /// Dimensions, outermost first.
    pub fn dims(&self) -> &[usize] {
        &self.0.shape
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.0.shape.iter().product()
    }

    /// The device holding the data.
    pub fn device(&self) -> &Device {
        self.0.storage.device()
    }

    /// True for a variable, or for a result that depends on one through recorded ops.
    pub fn requires_grad(&self) -> bool {
        self.0.is_variable || self.0.recorded
    }

    /// A unique id (creation order); [`crate::Grads`] is keyed by it.
    pub fn id(&self) -> u64 {
        self.0.id
    }

    /// The data copied into a host vector (from any device).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.0.storage.to_vec()
    }

    /// The value of a one-element tensor.
    pub fn to_scalar(&self) -> Result<f32> {
        if self.elem_count() != 1 {
            return Err(TensorError::NotScalar {
                op: "to_scalar",
                shape: self.dims().to_vec(),
            });
        }
        Ok(self.to_vec()?[0])
    }

    pub(crate) fn storage(&self) -> &Storage {
        &self.0.storage
    }

    pub(crate) fn same_shape(&self, other: &Tensor, op: &'static str) -> Result<()> {
        if self.device() != other.device() {
            return Err(TensorError::DeviceMismatch { op });
        }
        if self.dims() != other.dims() {
            return Err(TensorError::ShapeMismatch {
                op,
                lhs: self.dims().to_vec(),
                rhs: other.dims().to_vec(),
            });
        }
        Ok(())
    }
}

impl fmt::Debug for Tensor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Tensor({:?}, {:?}, requires_grad={})",
            self.dims(),
            self.device(),
            self.requires_grad()
        )
    }
}
