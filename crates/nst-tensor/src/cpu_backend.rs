//! The CPU backend: host vectors and the rayon kernels of `nst-cpu`.
//!
//! Every method allocates its output and calls one `nst-cpu` kernel; nothing here computes by
//! itself, so what the kernels' tests establish holds for tensors on the CPU.

use crate::backend::{BackendDevice, BackendStorage, BinaryOp};
use crate::{Device, Result};
use nst_cpu::{conv, elementwise as k, gram, pool, relu};
use nst_params::{AdamParams, Conv2dParams, ConvAlgorithm, Pool2dParams};

/// The CPU as a device (its threads are rayon's global pool).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuDevice;

/// A tensor's data in host memory.
#[derive(Clone, Debug)]
pub struct CpuStorage(pub(crate) Vec<f32>);

/// The CPU's [`Device`], so storage can lend a reference to it.
static CPU: Device = Device::Cpu;

impl CpuStorage {
    fn map_new(&self, f: impl FnOnce(&[f32], &mut [f32])) -> Self {
        let mut out = vec![0.0; self.0.len()];
        f(&self.0, &mut out);
        CpuStorage(out)
    }
}

impl BackendDevice for CpuDevice {
    type Storage = CpuStorage;

    fn storage_from_vec(&self, data: Vec<f32>) -> Result<CpuStorage> {
        Ok(CpuStorage(data))
    }

    fn storage_full(&self, value: f32, n: usize) -> Result<CpuStorage> {
        Ok(CpuStorage(vec![value; n]))
    }

    fn release_cached_memory(&self) {
        nst_cpu::release_scratch();
    }
}

impl BackendStorage for CpuStorage {
    /// Which element of its 2×2 window won, per output (`2·row + column`, one byte).
    type PoolIndices = Vec<u8>;
    /// 32 elements per word (`nst_cpu::relu::relu_mask_pack`).
    type ReluMask = Vec<u32>;
    /// The host is the CPU's device: a scalar is just an f64.
    type Scalar = f64;

    fn len(&self) -> usize {
        self.0.len()
    }

    fn device(&self) -> &Device {
        &CPU
    }

    fn to_vec(&self) -> Result<Vec<f32>> {
        Ok(self.0.clone())
    }

    fn try_clone(&self) -> Result<Self> {
        Ok(self.clone())
    }

    fn conv2d(
        &self,
        w: &Self,
        b: Option<&Self>,
        p: &Conv2dParams,
        algo: ConvAlgorithm,
        relu: bool,
    ) -> Result<Self> {
        let mut y = vec![0.0; p.output_len()];
        let forward = if relu {
            conv::conv2d_relu_forward
        } else {
            conv::conv2d_forward
        };
        forward(p, algo, &self.0, &w.0, b.map(|b| &b.0[..]), &mut y);
        Ok(CpuStorage(y))
    }

    fn conv2d_backward_input(
        &self,
        w: &Self,
        p: &Conv2dParams,
        algo: ConvAlgorithm,
    ) -> Result<Self> {
        let mut dx = vec![0.0; p.input_len()];
        conv::conv2d_backward_input(p, algo, &self.0, &w.0, &mut dx);
        Ok(CpuStorage(dx))
    }

    fn conv2d_backward_input_accumulate(
        &self,
        w: &Self,
        p: &Conv2dParams,
        algo: ConvAlgorithm,
        dx: &mut Self,
    ) -> Result<()> {
        conv::conv2d_backward_input_accumulate(p, algo, &self.0, &w.0, &mut dx.0);
        Ok(())
    }

    fn conv2d_backward_weight(
        &self,
        dy: &Self,
        p: &Conv2dParams,
        with_bias: bool,
    ) -> Result<(Self, Option<Self>)> {
        let mut dw = vec![0.0; p.weight_len()];
        let mut db = with_bias.then(|| vec![0.0; p.out_channels]);
        conv::conv2d_backward_weight(p, &self.0, &dy.0, &mut dw, db.as_deref_mut());
        Ok((CpuStorage(dw), db.map(CpuStorage)))
    }

    fn relu(&self) -> Result<Self> {
        Ok(self.map_new(relu::relu_forward))
    }

    fn relu_mask(&self) -> Result<Vec<u32>> {
        let mut bits = vec![0; relu::relu_mask_words(self.0.len())];
        relu::relu_mask_pack(&self.0, &mut bits);
        Ok(bits)
    }
    fn apply_relu_mask(&mut self, mask: &Vec<u32>) -> Result<()> {
        relu::relu_mask_apply(mask, &mut self.0);
        Ok(())
    }

    fn max_pool2d(&self, p: &Pool2dParams) -> Result<(Self, Vec<u8>)> {
        let mut y = vec![0.0; p.output_len()];
        let mut argmax = vec![0u8; p.output_len()];
        pool::max_pool_forward(p, &self.0, &mut y, &mut argmax);
        Ok((CpuStorage(y), argmax))
    }

    fn max_pool2d_backward(&self, indices: &Vec<u8>, p: &Pool2dParams) -> Result<Self> {
        let mut dx = vec![0.0; p.input_len()];
        pool::max_pool_backward(p, &self.0, indices, &mut dx);
        Ok(CpuStorage(dx))
    }

    fn avg_pool2d(&self, p: &Pool2dParams) -> Result<Self> {
        let mut y = vec![0.0; p.output_len()];
        pool::avg_pool_forward(p, &self.0, &mut y);
        Ok(CpuStorage(y))
    }

    fn avg_pool2d_backward(&self, p: &Pool2dParams) -> Result<Self> {
        let mut dx = vec![0.0; p.input_len()];
        pool::avg_pool_backward(p, &self.0, &mut dx);
        Ok(CpuStorage(dx))
    }

    fn matmul(
        &self,
        b: &Self,
        m: usize,
        k: usize,
        n: usize,
        trans_a: bool,
        trans_b: bool,
    ) -> Result<Self> {
        let mut c = vec![0.0; m * n];
        nst_cpu::matmul(&self.0, &b.0, &mut c, m, k, n, trans_a, trans_b, false);
        Ok(CpuStorage(c))
    }

    fn gram(&self, batch: usize, c: usize, m: usize, scale: f32) -> Result<Self> {
        let mut g = vec![0.0; batch * c * c];
        for i in 0..batch {
            let f = &self.0[i * c * m..(i + 1) * c * m];
            gram::gram_forward(f, c, m, scale, &mut g[i * c * c..(i + 1) * c * c]);
        }
        Ok(CpuStorage(g))
    }

    fn gram_backward(
        &self,
        dg: &Self,
        batch: usize,
        c: usize,
        m: usize,
        scale: f32,
    ) -> Result<Self> {
        let mut df = vec![0.0; batch * c * m];
        for i in 0..batch {
            let (f, dg) = (&self.0[i * c * m..][..c * m], &dg.0[i * c * c..][..c * c]);
            gram::gram_backward(f, dg, c, m, scale, &mut df[i * c * m..][..c * m]);
        }
        Ok(CpuStorage(df))
    }

    fn gram_backward_in_place(
        &mut self,
        dg: &Self,
        batch: usize,
        c: usize,
        m: usize,
        scale: f32,
    ) -> Result<()> {
        if c * m == 0 {
            return Ok(());
        }
        for (f, dg) in self
            .0
            .chunks_exact_mut(c * m)
            .zip(dg.0.chunks_exact(c * c))
            .take(batch)
        {
            gram::gram_backward_in_place(f, dg, c, m, scale);
        }
        Ok(())
    }

    fn transpose(&self, rows: usize, cols: usize) -> Result<Self> {
        let mut t = vec![0.0; rows * cols];
        for i in 0..rows {
            for j in 0..cols {
                t[j * rows + i] = self.0[i * cols + j];
            }
        }
        Ok(CpuStorage(t))
    }

    fn binary(&self, b: &Self, op: BinaryOp) -> Result<Self> {
        let f = match op {
            BinaryOp::Add => k::add,
            BinaryOp::Sub => k::sub,
            BinaryOp::Mul => k::mul,
        };
        Ok(self.map_new(|a, out| f(a, &b.0, out)))
    }

    fn scaled_mul(&self, b: &Self, s: f32) -> Result<Self> {
        Ok(self.map_new(|a, out| k::zip_map(a, &b.0, out, |a, b| s * a * b)))
    }

    fn scale(&self, s: f32) -> Result<Self> {
        Ok(self.map_new(|a, out| k::scale(a, s, out)))
    }

    fn square(&self) -> Result<Self> {
        Ok(self.map_new(k::square))
    }

    fn add_assign(&mut self, other: &Self) -> Result<()> {
        k::add_assign(&mut self.0, &other.0);
        Ok(())
    }

    fn sum(&self) -> Result<Self> {
        Ok(CpuStorage(vec![k::sum(&self.0) as f32]))
    }

    fn broadcast(&self, n: usize) -> Result<Self> {
        Ok(CpuStorage(vec![self.0[0]; n]))
    }

    fn axpby(&self, alpha: f32, y: &Self, beta: f32) -> Result<Self> {
        Ok(self.map_new(|x, out| k::axpby(alpha, x, beta, &y.0, out)))
    }

    fn dot(&self, y: &Self) -> Result<f64> {
        Ok(k::dot(&self.0, &y.0))
    }

    fn dot_scalar(&self, y: &Self) -> Result<f64> {
        self.dot(y)
    }

    fn scalar_scale(a: &f64, r: f64) -> Result<f64> {
        Ok(a * r)
    }

    fn scalar_sub(a: &f64, b: &f64) -> Result<f64> {
        Ok(a - b)
    }

    fn scalar_value(a: &f64) -> Result<f64> {
        Ok(*a)
    }

    fn add_scaled(&self, y: &Self, coef: &f64, factor: f64) -> Result<Self> {
        self.axpby(1.0, y, (factor * coef) as f32)
    }

    fn dot_scalar_scaled(&self, y: &Self, r: f64) -> Result<f64> {
        Ok(self.dot(y)? * r)
    }

    // Two passes here as before (the same bits): the fusion is for the GPU's launches.
    fn add_scaled_dot(
        &self,
        y: &Self,
        coef: &f64,
        minus: Option<&f64>,
        factor: f64,
        dot_with: Option<(&Self, f64)>,
    ) -> Result<(Self, Option<f64>)> {
        let c = minus.map_or(*coef, |m| coef - m);
        let out = self.add_scaled(y, &c, factor)?;
        let dot = dot_with
            .map(|(v, r)| v.dot_scalar_scaled(&out, r))
            .transpose()?;
        Ok((out, dot))
    }

    fn abs_sum(&self) -> Result<f64> {
        Ok(k::abs_sum(&self.0))
    }

    fn abs_max(&self) -> Result<f32> {
        Ok(k::abs_max(&self.0))
    }

    fn adam_update(&mut self, g: &Self, m: &mut Self, v: &mut Self, p: &AdamParams) -> Result<()> {
        k::adam_update(&mut self.0, &g.0, &mut m.0, &mut v.0, p);
        Ok(())
    }
}
