//! The memory behind a tensor: one variant per device, each forwarding to its
//! [`BackendStorage`] implementation. Operands on different devices are an error here, so no
//! backend ever sees a mix.

use crate::backend::{BackendDevice, BackendStorage, BinaryOp};
use crate::cpu_backend::{CpuDevice, CpuStorage};
use crate::cuda_backend::CudaStorage;
use crate::{Device, Result, TensorError};
use nst_params::{AdamParams, Conv2dParams, ConvAlgorithm, Pool2dParams, Window2dParams};

/// Tensor data on its device.
#[derive(Debug)]
pub(crate) enum Storage {
    Cpu(CpuStorage),
    Cuda(CudaStorage),
}

/// Max-pooling winners, on the device of the pooled tensor.
pub(crate) enum PoolIndices {
    Cpu(<CpuStorage as BackendStorage>::PoolIndices),
    Cuda(<CudaStorage as BackendStorage>::PoolIndices),
}

/// A ReLU's output sign, packed, on the device of the output.
pub(crate) enum ReluMask {
    Cpu(<CpuStorage as BackendStorage>::ReluMask),
    Cuda(<CudaStorage as BackendStorage>::ReluMask),
}

/// One f64 on a device (an optimizer's scalar).
pub(crate) enum ScalarStorage {
    Cpu(<CpuStorage as BackendStorage>::Scalar),
    Cuda(<CudaStorage as BackendStorage>::Scalar),
}

impl ScalarStorage {
    pub(crate) fn scale(&self, r: f64) -> Result<Self> {
        Ok(match self {
            ScalarStorage::Cpu(a) => ScalarStorage::Cpu(CpuStorage::scalar_scale(a, r)?),
            ScalarStorage::Cuda(a) => ScalarStorage::Cuda(CudaStorage::scalar_scale(a, r)?),
        })
    }

    pub(crate) fn sub(&self, other: &Self) -> Result<Self> {
        Ok(match (self, other) {
            (ScalarStorage::Cpu(a), ScalarStorage::Cpu(b)) => {
                ScalarStorage::Cpu(CpuStorage::scalar_sub(a, b)?)
            }
            (ScalarStorage::Cuda(a), ScalarStorage::Cuda(b)) => {
                ScalarStorage::Cuda(CudaStorage::scalar_sub(a, b)?)
            }
            _ => return Err(TensorError::DeviceMismatch { op: "scalar sub" }),
        })
    }

    pub(crate) fn value(&self) -> Result<f64> {
        match self {
            ScalarStorage::Cpu(a) => CpuStorage::scalar_value(a),
            ScalarStorage::Cuda(a) => CudaStorage::scalar_value(a),
        }
    }
}

/// `storage.method(args)` on whichever device holds it, wrapping a storage result back into
/// the same variant.
macro_rules! on_device {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            Storage::Cpu($s) => Storage::Cpu($body?),
            Storage::Cuda($s) => Storage::Cuda($body?),
        }
    };
}

/// The same for a plain (host) result.
macro_rules! on_device_value {
    ($self:expr, $s:ident => $body:expr) => {
        match $self {
            Storage::Cpu($s) => $body,
            Storage::Cuda($s) => $body,
        }
    };
}

/// Two operands that must share a device: `(a, b) => body`, producing storage.
macro_rules! on_same_device {
    ($op:expr, $a:expr, $b:expr, ($x:ident, $y:ident) => $body:expr) => {
        match ($a, $b) {
            (Storage::Cpu($x), Storage::Cpu($y)) => Storage::Cpu($body?),
            (Storage::Cuda($x), Storage::Cuda($y)) => Storage::Cuda($body?),
            _ => return Err(TensorError::DeviceMismatch { op: $op }),
        }
    };
}

/// Two operands on one device, producing a host value.
macro_rules! on_same_device_value {
    ($op:expr, $a:expr, $b:expr, ($x:ident, $y:ident) => $body:expr) => {
        match ($a, $b) {
            (Storage::Cpu($x), Storage::Cpu($y)) => $body,
            (Storage::Cuda($x), Storage::Cuda($y)) => $body,
            _ => return Err(TensorError::DeviceMismatch { op: $op }),
        }
    };
}

/// A convolution's input, weights and optional bias, all on one device.
enum ConvOperands<'a> {
    Cpu(&'a CpuStorage, &'a CpuStorage, Option<&'a CpuStorage>),
    Cuda(&'a CudaStorage, &'a CudaStorage, Option<&'a CudaStorage>),
}

impl<'a> ConvOperands<'a> {
    /// `x`, `w` and `b` as their device's storages, or a device mismatch.
    fn on_one_device(x: &'a Storage, w: &'a Storage, b: Option<&'a Storage>) -> Result<Self> {
        Ok(match (x, w, b) {
            (Storage::Cpu(x), Storage::Cpu(w), None) => ConvOperands::Cpu(x, w, None),
            (Storage::Cpu(x), Storage::Cpu(w), Some(Storage::Cpu(b))) => {
                ConvOperands::Cpu(x, w, Some(b))
            }
            (Storage::Cuda(x), Storage::Cuda(w), None) => ConvOperands::Cuda(x, w, None),
            (Storage::Cuda(x), Storage::Cuda(w), Some(Storage::Cuda(b))) => {
                ConvOperands::Cuda(x, w, Some(b))
            }
            _ => return Err(TensorError::DeviceMismatch { op: "conv2d" }),
        })
    }
}

impl Storage {
    /// Host data moved onto `device`.
    pub(crate) fn from_vec(data: Vec<f32>, device: &Device) -> Result<Self> {
        Ok(match device {
            Device::Cpu => Storage::Cpu(CpuDevice.storage_from_vec(data)?),
            Device::Cuda(d) => Storage::Cuda(d.storage_from_vec(data)?),
        })
    }

    /// `n` copies of `value` on `device`.
    pub(crate) fn full(value: f32, n: usize, device: &Device) -> Result<Self> {
        Ok(match device {
            Device::Cpu => Storage::Cpu(CpuDevice.storage_full(value, n)?),
            Device::Cuda(d) => Storage::Cuda(d.storage_full(value, n)?),
        })
    }

    pub(crate) fn len(&self) -> usize {
        on_device_value!(self, s => s.len())
    }

    pub(crate) fn device(&self) -> &Device {
        on_device_value!(self, s => s.device())
    }

    pub(crate) fn to_vec(&self) -> Result<Vec<f32>> {
        on_device_value!(self, s => s.to_vec())
    }

    pub(crate) fn try_clone(&self) -> Result<Self> {
        Ok(on_device!(self, s => s.try_clone()))
    }

    pub(crate) fn conv2d(
        &self,
        w: &Self,
        b: Option<&Self>,
        p: &Conv2dParams,
        algo: ConvAlgorithm,
        relu: bool,
    ) -> Result<Self> {
        Ok(match ConvOperands::on_one_device(self, w, b)? {
            ConvOperands::Cpu(x, w, b) => Storage::Cpu(x.conv2d(w, b, p, algo, relu)?),
            ConvOperands::Cuda(x, w, b) => Storage::Cuda(x.conv2d(w, b, p, algo, relu)?),
        })
    }

    /// [`BackendStorage::conv2d_relu_masked`] on the operands' device.
    pub(crate) fn conv2d_relu_masked(
        &self,
        w: &Self,
        b: Option<&Self>,
        p: &Conv2dParams,
        algo: ConvAlgorithm,
    ) -> Result<(Self, ReluMask)> {
        Ok(match ConvOperands::on_one_device(self, w, b)? {
            ConvOperands::Cpu(x, w, b) => {
                let (y, mask) = x.conv2d_relu_masked(w, b, p, algo)?;
                (Storage::Cpu(y), ReluMask::Cpu(mask))
            }
            ConvOperands::Cuda(x, w, b) => {
                let (y, mask) = x.conv2d_relu_masked(w, b, p, algo)?;
                (Storage::Cuda(y), ReluMask::Cuda(mask))
            }
        })
    }

    pub(crate) fn conv2d_backward_input(
        &self,
        w: &Self,
        p: &Conv2dParams,
        algo: ConvAlgorithm,
    ) -> Result<Self> {
        Ok(
            on_same_device!("conv2d backward", self, w, (dy, w) => dy.conv2d_backward_input(w, p, algo)),
        )
    }

    pub(crate) fn conv2d_backward_input_accumulate(
        &self,
        w: &Self,
        p: &Conv2dParams,
        algo: ConvAlgorithm,
        dx: &mut Self,
    ) -> Result<()> {
        match (self, w, dx) {
            (Storage::Cpu(dy), Storage::Cpu(w), Storage::Cpu(dx)) => {
                dy.conv2d_backward_input_accumulate(w, p, algo, dx)
            }
            (Storage::Cuda(dy), Storage::Cuda(w), Storage::Cuda(dx)) => {
                dy.conv2d_backward_input_accumulate(w, p, algo, dx)
            }
            _ => Err(TensorError::DeviceMismatch {
                op: "conv2d backward",
            }),
        }
    }

    pub(crate) fn conv2d_backward_weight(
        &self,
        dy: &Self,
        p: &Conv2dParams,
        with_bias: bool,
    ) -> Result<(Self, Option<Self>)> {
        Ok(match (self, dy) {
            (Storage::Cpu(x), Storage::Cpu(dy)) => {
                let (dw, db) = x.conv2d_backward_weight(dy, p, with_bias)?;
                (Storage::Cpu(dw), db.map(Storage::Cpu))
            }
            (Storage::Cuda(x), Storage::Cuda(dy)) => {
                let (dw, db) = x.conv2d_backward_weight(dy, p, with_bias)?;
                (Storage::Cuda(dw), db.map(Storage::Cuda))
            }
            _ => {
                return Err(TensorError::DeviceMismatch {
                    op: "conv2d backward",
                })
            }
        })
    }

    pub(crate) fn relu(&self) -> Result<Self> {
        Ok(on_device!(self, s => s.relu()))
    }

    pub(crate) fn relu_mask(&self) -> Result<ReluMask> {
        Ok(match self {
            Storage::Cpu(y) => ReluMask::Cpu(y.relu_mask()?),
            Storage::Cuda(y) => ReluMask::Cuda(y.relu_mask()?),
        })
    }

    pub(crate) fn apply_relu_mask(&mut self, mask: &ReluMask) -> Result<()> {
        match (self, mask) {
            (Storage::Cpu(dy), ReluMask::Cpu(m)) => dy.apply_relu_mask(m),
            (Storage::Cuda(dy), ReluMask::Cuda(m)) => dy.apply_relu_mask(m),
            _ => Err(TensorError::DeviceMismatch {
                op: "relu backward",
            }),
        }
    }

    pub(crate) fn max_pool2d(&self, p: &Pool2dParams) -> Result<(Self, PoolIndices)> {
        Ok(match self {
            Storage::Cpu(x) => {
                let (y, i) = x.max_pool2d(p)?;
                (Storage::Cpu(y), PoolIndices::Cpu(i))
            }
            Storage::Cuda(x) => {
                let (y, i) = x.max_pool2d(p)?;
                (Storage::Cuda(y), PoolIndices::Cuda(i))
            }
        })
    }

    pub(crate) fn max_pool2d_backward(
        &self,
        indices: &PoolIndices,
        p: &Pool2dParams,
    ) -> Result<Self> {
        Ok(match (self, indices) {
            (Storage::Cpu(dy), PoolIndices::Cpu(i)) => Storage::Cpu(dy.max_pool2d_backward(i, p)?),
            (Storage::Cuda(dy), PoolIndices::Cuda(i)) => {
                Storage::Cuda(dy.max_pool2d_backward(i, p)?)
            }
            _ => {
                return Err(TensorError::DeviceMismatch {
                    op: "max_pool2d backward",
                })
            }
        })
    }

    pub(crate) fn avg_pool2d(&self, p: &Pool2dParams) -> Result<Self> {
        Ok(on_device!(self, s => s.avg_pool2d(p)))
    }

    pub(crate) fn avg_pool2d_backward(&self, p: &Pool2dParams) -> Result<Self> {
        Ok(on_device!(self, s => s.avg_pool2d_backward(p)))
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn matmul(
        &self,
        b: &Self,
        m: usize,
        k: usize,
        n: usize,
        trans_a: bool,
        trans_b: bool,
    ) -> Result<Self> {
        Ok(on_same_device!("matmul", self, b, (a, b) => a.matmul(b, m, k, n, trans_a, trans_b)))
    }

    pub(crate) fn gram(&self, batch: usize, c: usize, m: usize, scale: f32) -> Result<Self> {
        Ok(on_device!(self, s => s.gram(batch, c, m, scale)))
    }

    pub(crate) fn gram_backward(
        &self,
        dg: &Self,
        batch: usize,
        c: usize,
        m: usize,
        scale: f32,
    ) -> Result<Self> {
        Ok(
            on_same_device!("gram backward", self, dg, (f, dg) => f.gram_backward(dg, batch, c, m, scale)),
        )
    }

    pub(crate) fn gram_backward_in_place(
        &mut self,
        dg: &Self,
        batch: usize,
        c: usize,
        m: usize,
        scale: f32,
    ) -> Result<()> {
        on_same_device_value!("gram backward", self, dg, (f, dg) => f.gram_backward_in_place(dg, batch, c, m, scale))
    }

    pub(crate) fn transpose(&self, rows: usize, cols: usize) -> Result<Self> {
        Ok(on_device!(self, s => s.transpose(rows, cols)))
    }

    pub(crate) fn binary(&self, b: &Self, op: BinaryOp, name: &'static str) -> Result<Self> {
        Ok(on_same_device!(name, self, b, (a, b) => a.binary(b, op)))
    }

    pub(crate) fn scaled_mul(&self, b: &Self, s: f32) -> Result<Self> {
        Ok(on_same_device!("mul", self, b, (a, b) => a.scaled_mul(b, s)))
    }

    pub(crate) fn scale(&self, s: f32) -> Result<Self> {
        Ok(on_device!(self, x => x.scale(s)))
    }

    pub(crate) fn square(&self) -> Result<Self> {
        Ok(on_device!(self, s => s.square()))
    }

    pub(crate) fn copy_window(
        &self,
        dst: &mut Self,
        p: &Window2dParams,
        accumulate: bool,
    ) -> Result<()> {
        on_same_device_value!("window", self, dst, (a, b) => a.copy_window(b, p, accumulate))
    }

    pub(crate) fn add_assign(&mut self, other: &Self) -> Result<()> {
        on_same_device_value!("gradient accumulation", self, other, (a, b) => a.add_assign(b))
    }

    pub(crate) fn sum(&self) -> Result<Self> {
        Ok(on_device!(self, s => s.sum()))
    }

    pub(crate) fn broadcast(&self, n: usize) -> Result<Self> {
        Ok(on_device!(self, s => s.broadcast(n)))
    }

    pub(crate) fn squared_distance(&self, b: &Self) -> Result<Self> {
        Ok(on_same_device!("squared_distance", self, b, (a, b) => a.squared_distance(b)))
    }

    pub(crate) fn scaled_difference_in_place(&mut self, b: &Self, g: &Self, s: f32) -> Result<()> {
        match (self, b, g) {
            (Storage::Cpu(a), Storage::Cpu(b), Storage::Cpu(g)) => {
                a.scaled_difference_in_place(b, g, s)
            }
            (Storage::Cuda(a), Storage::Cuda(b), Storage::Cuda(g)) => {
                a.scaled_difference_in_place(b, g, s)
            }
            _ => Err(TensorError::DeviceMismatch {
                op: "squared_distance backward",
            }),
        }
    }

    pub(crate) fn axpby(&self, alpha: f32, y: &Self, beta: f32) -> Result<Self> {
        Ok(on_same_device!("axpby", self, y, (x, y) => x.axpby(alpha, y, beta)))
    }

    pub(crate) fn dot(&self, y: &Self) -> Result<f64> {
        on_same_device_value!("dot", self, y, (x, y) => x.dot(y))
    }

    pub(crate) fn dot_scalar(&self, y: &Self) -> Result<ScalarStorage> {
        Ok(match (self, y) {
            (Storage::Cpu(x), Storage::Cpu(y)) => ScalarStorage::Cpu(x.dot_scalar(y)?),
            (Storage::Cuda(x), Storage::Cuda(y)) => ScalarStorage::Cuda(x.dot_scalar(y)?),
            _ => return Err(TensorError::DeviceMismatch { op: "dot" }),
        })
    }

    pub(crate) fn add_scaled(&self, y: &Self, coef: &ScalarStorage, factor: f64) -> Result<Self> {
        Ok(match (self, y, coef) {
            (Storage::Cpu(x), Storage::Cpu(y), ScalarStorage::Cpu(c)) => {
                Storage::Cpu(x.add_scaled(y, c, factor)?)
            }
            (Storage::Cuda(x), Storage::Cuda(y), ScalarStorage::Cuda(c)) => {
                Storage::Cuda(x.add_scaled(y, c, factor)?)
            }
            _ => return Err(TensorError::DeviceMismatch { op: "add_scaled" }),
        })
    }

    pub(crate) fn dot_scalar_scaled(&self, y: &Self, r: f64) -> Result<ScalarStorage> {
        Ok(match (self, y) {
            (Storage::Cpu(x), Storage::Cpu(y)) => ScalarStorage::Cpu(x.dot_scalar_scaled(y, r)?),
            (Storage::Cuda(x), Storage::Cuda(y)) => ScalarStorage::Cuda(x.dot_scalar_scaled(y, r)?),
            _ => return Err(TensorError::DeviceMismatch { op: "dot" }),
        })
    }

    pub(crate) fn add_scaled_dot(
        &self,
        y: &Self,
        (coef, minus): (&ScalarStorage, Option<&ScalarStorage>),
        factor: f64,
        dot_with: Option<(&Self, f64)>,
    ) -> Result<(Self, Option<ScalarStorage>)> {
        let mismatch = || TensorError::DeviceMismatch {
            op: "add_scaled_dot",
        };
        // Every operand on the device `$d` (Cpu or Cuda), else a mismatch.
        macro_rules! on {
            ($d:ident, $x:ident, $y:ident, $c:ident) => {{
                let minus = minus
                    .map(|m| match m {
                        ScalarStorage::$d(m) => Ok(m),
                        _ => Err(mismatch()),
                    })
                    .transpose()?;
                let dot_with = dot_with
                    .map(|(v, r)| match v {
                        Storage::$d(v) => Ok((v, r)),
                        _ => Err(mismatch()),
                    })
                    .transpose()?;
                let (out, dot) = $x.add_scaled_dot($y, $c, minus, factor, dot_with)?;
                (Storage::$d(out), dot.map(ScalarStorage::$d))
            }};
        }
        Ok(match (self, y, coef) {
            (Storage::Cpu(x), Storage::Cpu(y), ScalarStorage::Cpu(c)) => on!(Cpu, x, y, c),
            (Storage::Cuda(x), Storage::Cuda(y), ScalarStorage::Cuda(c)) => on!(Cuda, x, y, c),
            _ => return Err(mismatch()),
        })
    }

    pub(crate) fn abs_sum(&self) -> Result<f64> {
        on_device_value!(self, s => s.abs_sum())
    }

    pub(crate) fn abs_max(&self) -> Result<f32> {
        on_device_value!(self, s => s.abs_max())
    }

    pub(crate) fn adam_update(
        &mut self,
        g: &Self,
        m: &mut Self,
        v: &mut Self,
        p: &AdamParams,
    ) -> Result<()> {
        match (self, g, m, v) {
            (Storage::Cpu(x), Storage::Cpu(g), Storage::Cpu(m), Storage::Cpu(v)) => {
                x.adam_update(g, m, v, p)
            }
            (Storage::Cuda(x), Storage::Cuda(g), Storage::Cuda(m), Storage::Cuda(v)) => {
                x.adam_update(g, m, v, p)
            }
            _ => Err(TensorError::DeviceMismatch { op: "adam_step" }),
        }
    }
}
