//! Elementwise arithmetic on tensors of equal shape.

use crate::op::{needed, InputGrad, Op};
use crate::{Result, Tensor};
use nst_cpu::elementwise as k;

impl Tensor {
    fn binary(
        &self,
        other: &Tensor,
        name: &'static str,
        f: fn(&[f32], &[f32], &mut [f32]),
        op: impl FnOnce() -> Op,
    ) -> Result<Tensor> {
        self.same_shape(other, name)?;
        let mut out = vec![0.0; self.elem_count()];
        f(self.data(), other.data(), &mut out);
        Ok(Tensor::from_op(
            out,
            self.dims(),
            self.device(),
            &[self, other],
            op,
        ))
    }

    /// `self + other`.
    pub fn add(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, "add", k::add, || Op::Add {
            a: self.clone(),
            b: other.clone(),
        })
    }

    /// `self − other`.
    pub fn sub(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, "sub", k::sub, || Op::Sub {
            a: self.clone(),
            b: other.clone(),
        })
    }

    /// `self ⊙ other` (elementwise product).
    pub fn mul(&self, other: &Tensor) -> Result<Tensor> {
        self.binary(other, "mul", k::mul, || Op::Mul {
            a: self.clone(),
            b: other.clone(),
        })
    }

    /// `s · self`.
    pub fn scale(&self, s: f32) -> Result<Tensor> {
        let mut out = vec![0.0; self.elem_count()];
        k::scale(self.data(), s, &mut out);
        Ok(Tensor::from_op(
            out,
            self.dims(),
            self.device(),
            &[self],
            || Op::Scale { x: self.clone(), s },
        ))
    }

    /// `self²` elementwise.
    pub fn square(&self) -> Result<Tensor> {
        let mut out = vec![0.0; self.elem_count()];
        k::square(self.data(), &mut out);
        Ok(Tensor::from_op(
            out,
            self.dims(),
            self.device(),
            &[self],
            || Op::Square { x: self.clone() },
        ))
    }
}

fn scaled(g: &[f32], s: f32) -> Vec<f32> {
    let mut out = vec![0.0; g.len()];
    k::scale(g, s, &mut out);
    out
}

pub(crate) fn add_backward(a: &Tensor, b: &Tensor, g: &[f32]) -> Vec<InputGrad> {
    needed([
        (a.clone(), a.requires_grad().then(|| g.to_vec())),
        (b.clone(), b.requires_grad().then(|| g.to_vec())),
    ])
}

pub(crate) fn sub_backward(a: &Tensor, b: &Tensor, g: &[f32]) -> Vec<InputGrad> {
    needed([
        (a.clone(), a.requires_grad().then(|| g.to_vec())),
        (b.clone(), b.requires_grad().then(|| scaled(g, -1.0))),
    ])
}

pub(crate) fn mul_backward(a: &Tensor, b: &Tensor, g: &[f32]) -> Vec<InputGrad> {
    let times = |t: &Tensor| {
        let mut out = vec![0.0; g.len()];
        k::mul(g, t.data(), &mut out);
        out
    };
    needed([
        (a.clone(), a.requires_grad().then(|| times(b))),
        (b.clone(), b.requires_grad().then(|| times(a))),
    ])
}

pub(crate) fn scale_backward(x: &Tensor, s: f32, g: &[f32]) -> Vec<InputGrad> {
    vec![(x.clone(), scaled(g, s))]
}

pub(crate) fn square_backward(x: &Tensor, g: &[f32]) -> Vec<InputGrad> {
    let mut out = vec![0.0; g.len()];
    k::zip_map(g, x.data(), &mut out, |g, x| 2.0 * x * g);
    vec![(x.clone(), out)]
}
