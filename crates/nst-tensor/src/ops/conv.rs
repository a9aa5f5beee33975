//! 2-D convolution with optional bias, and the same with a fused ReLU.

use crate::op::{needed, InputGrad, Op};
use crate::{Result, Tensor, TensorError};
use nst_cpu::conv::{
    conv2d_backward_input, conv2d_backward_weight, conv2d_forward, conv2d_relu_forward,
};
use nst_cpu::relu::relu_mask_in_place;
use nst_cpu::Conv2dParams;

impl Tensor {
    /// Cross-correlation of `self[N, C_in, H, W]` with `w[C_out, C_in, kh, kw]`, plus
    /// `b[C_out]`, with the given stride and zero padding → `[N, C_out, OH, OW]`.
    pub fn conv2d(
        &self,
        w: &Tensor,
        b: Option<&Tensor>,
        stride: usize,
        pad: usize,
    ) -> Result<Tensor> {
        self.conv2d_impl(w, b, stride, pad, false)
    }

    /// `relu(self.conv2d(w, b, stride, pad))` in one op: the pre-activation is never stored
    /// (half the activation memory of a VGG forward pass), and the backward pass masks the
    /// gradient with the output's sign, as ReLU's own backward does.
    pub fn conv2d_relu(
        &self,
        w: &Tensor,
        b: Option<&Tensor>,
        stride: usize,
        pad: usize,
    ) -> Result<Tensor> {
        self.conv2d_impl(w, b, stride, pad, true)
    }

    fn conv2d_impl(
        &self,
        w: &Tensor,
        b: Option<&Tensor>,
        stride: usize,
        pad: usize,
        relu: bool,
    ) -> Result<Tensor> {
        let (x_dims, w_dims) = (self.dims(), w.dims());
        let mismatch = || TensorError::ShapeMismatch {
            op: "conv2d",
            lhs: x_dims.to_vec(),
            rhs: w_dims.to_vec(),
        };
        if x_dims.len() != 4 || w_dims.len() != 4 || x_dims[1] != w_dims[1] || stride == 0 {
            return Err(mismatch());
        }
        self.same_device(w, "conv2d")?;
        if let Some(b) = b {
            self.same_device(b, "conv2d")?;
            if b.dims() != [w_dims[0]] {
                return Err(TensorError::ShapeMismatch {
                    op: "conv2d bias",
                    lhs: b.dims().to_vec(),
                    rhs: vec![w_dims[0]],
                });
            }
        }
        let p = Conv2dParams {
            batch: x_dims[0],
            in_channels: x_dims[1],
            in_h: x_dims[2],
            in_w: x_dims[3],
            out_channels: w_dims[0],
            kernel_h: w_dims[2],
            kernel_w: w_dims[3],
            stride,
            pad,
        };
        if p.out_h() == 0 || p.out_w() == 0 {
            return Err(mismatch());
        }
        let mut y = vec![0.0; p.output_len()];
        let forward = if relu {
            conv2d_relu_forward
        } else {
            conv2d_forward
        };
        forward(&p, self.data(), w.data(), b.map(|b| b.data()), &mut y);
        let shape = [p.batch, p.out_channels, p.out_h(), p.out_w()];
        let mut inputs = vec![self, w];
        inputs.extend(b);
        Ok(Tensor::from_op(y, &shape, self.device(), &inputs, || {
            Op::Conv2d {
                x: self.clone(),
                w: w.clone(),
                b: b.cloned(),
                p,
                relu,
            }
        }))
    }
}

pub(crate) fn backward(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    p: &Conv2dParams,
    relu: bool,
    out: &Tensor,
    mut dy: Vec<f32>,
) -> Vec<InputGrad> {
    if relu {
        // ReLU's backward, in place: dy = 0 where the output is not positive.
        relu_mask_in_place(out.data(), &mut dy);
    }
    let dy = &dy[..];
    let dx = x.requires_grad().then(|| {
        let mut dx = vec![0.0; p.input_len()];
        conv2d_backward_input(p, dy, w.data(), &mut dx);
        dx
    });
    let need_b = b.is_some_and(|b| b.requires_grad());
    let (dw, db) = if w.requires_grad() || need_b {
        let mut dw = vec![0.0; p.weight_len()];
        let mut db = vec![0.0; p.out_channels];
        conv2d_backward_weight(p, x.data(), dy, &mut dw, Some(&mut db));
        (w.requires_grad().then_some(dw), need_b.then_some(db))
    } else {
        (None, None)
    };
    let mut out = needed([(x.clone(), dx), (w.clone(), dw)]);
    if let (Some(b), Some(db)) = (b, db) {
        out.push((b.clone(), db));
    }
    out
}
