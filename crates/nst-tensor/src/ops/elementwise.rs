//! Elementwise arithmetic on tensors of equal shape.

use crate::backend::BinaryOp;
use crate::op::{if_needed, needed, InputGrad, Op};
use crate::storage::Storage;
use crate::tensor::NodeRef;
use crate::{Result, Tensor};

impl Tensor {
    fn binary(
        &self,
        other: &Tensor,
        name: &'static str,
        kind: BinaryOp,
        op: impl FnOnce() -> Op,
    ) -> Result<Tensor> {
        self.same_shape(other, name)?;
        let out = self.storage().binary(other.storage(), kind, name)?;
        Ok(Tensor::from_op(out, self.dims(), &[self, other], op))
    }

    /// `self + other`.
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, "add", BinaryOp::Add, || Op::Add {
            a: self.node(),
            b: other.node(),
        })
    }

    /// `self − other`.
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, "sub", BinaryOp::Sub, || Op::Sub {
            a: self.node(),
            b: other.node(),
        })
    }

    /// `self ⊙ other` (elementwise product).
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, "mul", BinaryOp::Mul, || Op::Mul {
            a: self.clone(),
            b: other.clone(),
        })
    }

    /// `s · self`.
    pub fn scale(&self, s: f32) -> Result<Tensor> {
        let out = self.storage().scale(s)?;
        Ok(Tensor::from_op(out, self.dims(), &[self], || Op::Scale {
            x: self.node(),
            s,
        }))
    }

    /// `self²` elementwise.
    pub fn square(&self) -> Result<Tensor> {
        let out = self.storage().square()?;
        Ok(Tensor::from_op(out, self.dims(), &[self], || Op::Square {
            x: self.clone(),
        }))
    }
}

/// `g` to both operands; it is copied only when both need a gradient.
pub(crate) fn add_backward(a: &NodeRef, b: &NodeRef, g: Storage) -> Result<Vec<InputGrad>> {
    Ok(match (a.requires_grad(), b.requires_grad()) {
        (true, true) => {
            let gb = g.try_clone()?;
            vec![(a.clone(), g), (b.clone(), gb)]
        }
        (true, false) => vec![(a.clone(), g)],
        (false, true) => vec![(b.clone(), g)],
        (false, false) => vec![],
    })
}

/// `g` to `a`, `−g` to `b`.
pub(crate) fn sub_backward(a: &NodeRef, b: &NodeRef, g: Storage) -> Result<Vec<InputGrad>> {
    let gb = if_needed(b, || g.scale(-1.0))?;
    let ga = a.requires_grad().then_some(g);
    Ok(needed([(a.clone(), ga), (b.clone(), gb)]))
}

pub(crate) fn mul_backward(a: &Tensor, b: &Tensor, g: &Storage) -> Result<Vec<InputGrad>> {
    let da = if_needed(&a.node, || g.scaled_mul(b.storage(), 1.0))?;
    let db = if_needed(&b.node, || g.scaled_mul(a.storage(), 1.0))?;
    Ok(needed([(a.node(), da), (b.node(), db)]))
}

pub(crate) fn scale_backward(x: &NodeRef, s: f32, g: &Storage) -> Result<Vec<InputGrad>> {
    Ok(vec![(x.clone(), g.scale(s)?)])
}

/// `d(x²) = 2·x·g`.
pub(crate) fn square_backward(x: &Tensor, g: &Storage) -> Result<Vec<InputGrad>> {
    Ok(vec![(x.node(), g.scaled_mul(x.storage(), 2.0)?)])
}
