//! The `Tensor` type: a place in the autodiff graph ([`Node`]: id, shape, the op that
//! produced it) and the data (shared storage, which knows its device).
//!
//! The two are held separately so that an op's record keeps only what its backward rule
//! needs. It always keeps its inputs' nodes (to route gradients), but their *values* only
//! where the rule reads them: a Gram matrix or a product keeps its operands, a frozen
//! convolution keeps neither its input nor its output (the input gradient needs only the
//! weights; a fused ReLU keeps a one-bit mask), max pooling keeps its winners. An activation
//! nothing else holds is then freed as soon as the next layer has read it (issue 12: a
//! VGG-19 pass at 2048² no longer keeps every layer's output as floats).

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
pub struct Tensor {
    pub(crate) node: NodeRef,
    /// The data; its variant is the device (there is no separate device field to disagree).
    pub(crate) storage: Arc<Storage>,
}

/// A tensor's place in the autodiff graph, without its data.
pub(crate) struct Node {
    pub(crate) id: u64,
    pub(crate) shape: Vec<usize>,
    /// A leaf whose gradient `backward` reports.
    pub(crate) is_variable: bool,
    /// Whether an op was recorded for autodiff (it stays true after backward consumed it).
    pub(crate) recorded: bool,
    /// How this tensor was computed, until `backward` takes it (freeing what it saved).
    pub(crate) op: Mutex<Option<Op>>,
}

/// What an op's record holds of an input whose value its backward rule does not read.
pub(crate) type NodeRef = Arc<Node>;

impl Node {
    /// True for a variable, or for a result that depends on one through recorded ops.
    pub(crate) fn requires_grad(&self) -> bool {
        self.is_variable || self.recorded
    }

    /// Dimensions, outermost first.
    pub(crate) fn dims(&self) -> &[usize] {
        &self.shape
    }

    /// Number of elements.
    pub(crate) fn elem_count(&self) -> usize {
        self.shape.iter().product()
    }
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
        let node = Arc::new(Node {
            id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
            shape: shape.to_vec(),
            is_variable,
            recorded: op.is_some(),
            op: Mutex::new(op),
        });
        Tensor { node, storage }
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
        Self::build(self.storage.clone(), self.dims(), true, None)
    }

    /// The same data cut off from the graph: a constant (shares storage).
    pub fn detach(&self) -> Self {
        Self::build(self.storage.clone(), self.dims(), false, None)
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

    /// Whether an op on `inputs` is recorded on the tape now (what [`Tensor::from_op`]
    /// decides): gradients are enabled and an input requires one. Ops whose record costs
    /// work to make (a ReLU's mask) check first.
    pub(crate) fn will_record(inputs: &[&Tensor]) -> bool {
        is_grad_enabled() && inputs.iter().any(|t| t.requires_grad())
    }

    /// [`Tensor::from_op`] for an output that shares its input's storage (reshape).
    pub(crate) fn from_shared_op(
        storage: Arc<Storage>,
        shape: &[usize],
        inputs: &[&Tensor],
        op: impl FnOnce() -> Op,
    ) -> Self {
        Self::build(storage, shape, false, Self::will_record(inputs).then(op))
    }

    /// A constant made from storage an op or the backward pass computed.
    pub(crate) fn from_storage(storage: Storage, shape: &[usize]) -> Self {
        Self::build(Arc::new(storage), shape, false, None)
    }

    /// The data, taken out without a copy where this is its only holder.
    pub(crate) fn into_storage(self) -> Result<Storage> {
        Arc::try_unwrap(self.storage).or_else(|shared| shared.try_clone())
    }

    /// Dimensions, outermost first.
    pub fn dims(&self) -> &[usize] {
        self.node.dims()
    }

    /// Number of elements.
    pub fn elem_count(&self) -> usize {
        self.node.elem_count()
    }

    /// The device holding the data.
    pub fn device(&self) -> &Device {
        self.storage.device()
    }

    /// True for a variable, or for a result that depends on one through recorded ops.
    pub fn requires_grad(&self) -> bool {
        self.node.requires_grad()
    }

    /// A unique id (creation order); [`crate::Grads`] is keyed by it.
    pub fn id(&self) -> u64 {
        self.node.id
    }

    /// The data copied into a host vector (from any device).
    pub fn to_vec(&self) -> Result<Vec<f32>> {
        self.storage.to_vec()
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
        &self.storage
    }

    /// This tensor's node, for an op's record that does not need its value.
    pub(crate) fn node(&self) -> NodeRef {
        self.node.clone()
    }

    /// The data, for an op's record that needs the value in its backward rule.
    pub(crate) fn value(&self) -> Arc<Storage> {
        self.storage.clone()
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
