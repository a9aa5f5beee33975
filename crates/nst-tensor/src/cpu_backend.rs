//! The CPU backend: host vectors and the rayon kernels of `nst-cpu`.
//!
//! Every method allocates its output and calls one `nst-cpu` kernel; nothing here computes by
//! itself, so what the kernels' tests establish holds for tensors on the CPU.

use crate::backend::{BackendDevice, BackendStorage, BinaryOp};
use crate::{Device, Result};
use nst_cpu::kernel_cache::{KernelCache, Weights};
use nst_cpu::{conv, elementwise as k, gram, pool, relu, window};
use nst_params::{AdamParams, Conv2dParams, ConvAlgorithm, Pool2dParams, Window2dParams};

/// The CPU as a device (its threads are rayon's global pool).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CpuDevice;

/// A tensor's data in host memory, and, where it serves as a convolution's weights, the
/// kernels Winograd transforms them into (kept across calls; see `nst_cpu::kernel_cache`).
#[derive(Clone, Debug)]
pub struct CpuStorage {
    data: Vec<f32>,
    /// Emptied on every mutable access ([`CpuStorage::data_mut`]), so it never outlives the
    /// values it was computed from.
    kernels: KernelCache,
}

/// Whether convolutions on the CPU keep their weights' Winograd-transformed kernels from one
/// call to the next (the default), or compute them at every call. Keeping them costs 8× the
/// weights' memory (at most 414 MB for VGG-19 to relu5_1; only convolutions of at most
/// `nst_cpu::kernel_cache::KEEP_MAX_TILES` output tiles keep theirs: 76 MB at 2048²) and
/// saves about 10% of an iteration at 512², 27% at 256². Turning it off drops each cache at
/// its next use.
pub fn keep_transformed_kernels(keep: bool) {
    nst_cpu::kernel_cache::set_enabled(keep);
}

/// Bytes of transformed kernels a weights tensor of the convolution `p` keeps once it has run
/// forward and backward by `algo` while [`keep_transformed_kernels`] is on.
pub fn transformed_kernel_bytes(p: &Conv2dParams, algo: ConvAlgorithm) -> usize {
    nst_cpu::kernel_cache::cached_bytes(p, algo)
}

/// The CPU's [`Device`], so storage can lend a reference to it.
static CPU: Device = Device::Cpu;

impl CpuStorage {
    fn new(data: Vec<f32>) -> Self {
        Self {
            data,
            kernels: KernelCache::new(),
        }
    }

    /// The values.
    #[cfg(test)]
    pub(crate) fn as_slice(&self) -> &[f32] {
        &self.data
    }

    /// The values, to change: drops the transformed kernels computed from them.
    fn data_mut(&mut self) -> &mut [f32] {
        self.kernels.clear();
        &mut self.data
    }

    /// The values as convolution weights, with their cache of transformed kernels.
    fn weights(&self) -> Weights<'_> {
        Weights::cached(&self.data, &self.kernels)
    }

    fn map_new(&self, f: impl FnOnce(&[f32], &mut [f32])) -> Self {
        let mut out = vec![0.0; self.data.len()];
        f(&self.data, &mut out);
        CpuStorage::new(out)
    }
}

impl BackendDevice for CpuDevice {
    type Storage = CpuStorage;

    fn storage_from_vec(&self, data: Vec<f32>) -> Result<CpuStorage> {
        Ok(CpuStorage::new(data))
    }

    fn storage_full(&self, value: f32, n: usize) -> Result<CpuStorage> {
        Ok(CpuStorage::new(vec![value; n]))
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
        self.data.len()
    }

    fn device(&self) -> &Device {
        &CPU
    }

    fn to_vec(&self) -> Result<Vec<f32>> {
        Ok(self.data.clone())
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
        forward(
            p,
            algo,
            &self.data,
            w.weights(),
            b.map(|b| &b.data[..]),
            &mut y,
        );
        Ok(CpuStorage::new(y))
    }

    fn conv2d_backward_input(
        &self,
        w: &Self,
        p: &Conv2dParams,
        algo: ConvAlgorithm,
    ) -> Result<Self> {
        let mut dx = vec![0.0; p.input_len()];
        conv::conv2d_backward_input(p, algo, &self.data, w.weights(), &mut dx);
        Ok(CpuStorage::new(dx))
    }

    fn conv2d_backward_input_accumulate(
        &self,
        w: &Self,
        p: &Conv2dParams,
        algo: ConvAlgorithm,
        dx: &mut Self,
    ) -> Result<()> {
        conv::conv2d_backward_input_accumulate(p, algo, &self.data, w.weights(), dx.data_mut());
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
        conv::conv2d_backward_weight(p, &self.data, &dy.data, &mut dw, db.as_deref_mut());
        Ok((CpuStorage::new(dw), db.map(CpuStorage::new)))
    }

    fn relu(&self) -> Result<Self> {
        Ok(self.map_new(relu::relu_forward))
    }

    fn relu_mask(&self) -> Result<Vec<u32>> {
        let mut bits = vec![0; relu::relu_mask_words(self.data.len())];
        relu::relu_mask_pack(&self.data, &mut bits);
        Ok(bits)
    }
    fn apply_relu_mask(&mut self, mask: &Vec<u32>) -> Result<()> {
        relu::relu_mask_apply(mask, self.data_mut());
        Ok(())
    }

    fn max_pool2d(&self, p: &Pool2dParams) -> Result<(Self, Vec<u8>)> {
        let mut y = vec![0.0; p.output_len()];
        let mut argmax = vec![0u8; p.output_len()];
        pool::max_pool_forward(p, &self.data, &mut y, &mut argmax);
        Ok((CpuStorage::new(y), argmax))
    }

    fn max_pool2d_backward(&self, indices: &Vec<u8>, p: &Pool2dParams) -> Result<Self> {
        let mut dx = vec![0.0; p.input_len()];
        pool::max_pool_backward(p, &self.data, indices, &mut dx);
        Ok(CpuStorage::new(dx))
    }

    fn avg_pool2d(&self, p: &Pool2dParams) -> Result<Self> {
        let mut y = vec![0.0; p.output_len()];
        pool::avg_pool_forward(p, &self.data, &mut y);
        Ok(CpuStorage::new(y))
    }

    fn avg_pool2d_backward(&self, p: &Pool2dParams) -> Result<Self> {
        let mut dx = vec![0.0; p.input_len()];
        pool::avg_pool_backward(p, &self.data, &mut dx);
        Ok(CpuStorage::new(dx))
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
        nst_cpu::matmul(
            &self.data, &b.data, &mut c, m, k, n, trans_a, trans_b, false,
        );
        Ok(CpuStorage::new(c))
    }

    fn gram(&self, batch: usize, c: usize, m: usize, scale: f32) -> Result<Self> {
        let mut g = vec![0.0; batch * c * c];
        for i in 0..batch {
            let f = &self.data[i * c * m..(i + 1) * c * m];
            gram::gram_forward(f, c, m, scale, &mut g[i * c * c..(i + 1) * c * c]);
        }
        Ok(CpuStorage::new(g))
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
            let (f, dg) = (
                &self.data[i * c * m..][..c * m],
                &dg.data[i * c * c..][..c * c],
            );
            gram::gram_backward(f, dg, c, m, scale, &mut df[i * c * m..][..c * m]);
        }
        Ok(CpuStorage::new(df))
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
            .data_mut()
            .chunks_exact_mut(c * m)
            .zip(dg.data.chunks_exact(c * c))
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
                t[j * rows + i] = self.data[i * cols + j];
            }
        }
        Ok(CpuStorage::new(t))
    }

    fn binary(&self, b: &Self, op: BinaryOp) -> Result<Self> {
        let f = match op {
            BinaryOp::Add => k::add,
            BinaryOp::Sub => k::sub,
            BinaryOp::Mul => k::mul,
        };
        Ok(self.map_new(|a, out| f(a, &b.data, out)))
    }

    fn scaled_mul(&self, b: &Self, s: f32) -> Result<Self> {
        Ok(self.map_new(|a, out| k::zip_map(a, &b.data, out, |a, b| s * a * b)))
    }

    fn scale(&self, s: f32) -> Result<Self> {
        Ok(self.map_new(|a, out| k::scale(a, s, out)))
    }

    fn square(&self) -> Result<Self> {
        Ok(self.map_new(k::square))
    }

    fn copy_window(&self, dst: &mut Self, p: &Window2dParams, accumulate: bool) -> Result<()> {
        window::copy_window(p, &self.data, dst.data_mut(), accumulate);
        Ok(())
    }

    fn add_assign(&mut self, other: &Self) -> Result<()> {
        k::add_assign(self.data_mut(), &other.data);
        Ok(())
    }

    fn sum(&self) -> Result<Self> {
        Ok(CpuStorage::new(vec![k::sum(&self.data) as f32]))
    }

    fn broadcast(&self, n: usize) -> Result<Self> {
        Ok(CpuStorage::new(vec![self.data[0]; n]))
    }

    fn squared_distance(&self, b: &Self) -> Result<Self> {
        let total = k::sum_squared_difference(&self.data, &b.data);
        Ok(CpuStorage::new(vec![total as f32]))
    }

    fn scaled_difference_in_place(&mut self, b: &Self, g: &Self, s: f32) -> Result<()> {
        k::scaled_difference_in_place(self.data_mut(), &b.data, s, g.data[0]);
        Ok(())
    }

    fn axpby(&self, alpha: f32, y: &Self, beta: f32) -> Result<Self> {
        Ok(self.map_new(|x, out| k::axpby(alpha, x, beta, &y.data, out)))
    }

    fn dot(&self, y: &Self) -> Result<f64> {
        Ok(k::dot(&self.data, &y.data))
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
        Ok(k::abs_sum(&self.data))
    }

    fn abs_max(&self) -> Result<f32> {
        Ok(k::abs_max(&self.data))
    }

    fn adam_update(&mut self, g: &Self, m: &mut Self, v: &mut Self, p: &AdamParams) -> Result<()> {
        k::adam_update(self.data_mut(), &g.data, m.data_mut(), v.data_mut(), p);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Weights changed in place (every `&mut` access goes through `data_mut`) convolve as the
    /// new values, not from kernels cached for the old ones.
    #[test]
    fn changing_weights_in_place_drops_their_transformed_kernels() {
        let p = Conv2dParams {
            batch: 1,
            in_channels: 16,
            in_h: 6,
            in_w: 5,
            out_channels: 16,
            kernel_h: 3,
            kernel_w: 3,
            stride: 1,
            pad: 1,
        };
        let values = |scale: f32| -> Vec<f32> {
            (0..p.weight_len())
                .map(|i| scale * ((i * 37 % 11) as f32 - 5.0))
                .collect()
        };
        let x = CpuStorage::new((0..p.input_len()).map(|i| (i % 7) as f32).collect());
        let dy = CpuStorage::new((0..p.output_len()).map(|i| (i % 5) as f32).collect());
        let fastest = ConvAlgorithm::Fastest;
        keep_transformed_kernels(true); // the default; no test here turns it off
        let mut w = CpuStorage::new(values(1.0));
        let (y1, dx1) = (
            x.conv2d(&w, None, &p, fastest, false).unwrap(),
            dy.conv2d_backward_input(&w, &p, fastest).unwrap(),
        );
        assert!(w.kernels.bytes() > 0, "the first calls fill the cache");
        // w ← w + w: the weights double.
        let copy = w.try_clone().unwrap();
        w.add_assign(&copy).unwrap();
        assert_eq!(w.kernels.bytes(), 0);
        let fresh = CpuStorage::new(values(2.0));
        let y2 = x.conv2d(&w, None, &p, fastest, false).unwrap();
        let dx2 = dy.conv2d_backward_input(&w, &p, fastest).unwrap();
        assert_eq!(
            y2.data,
            x.conv2d(&fresh, None, &p, fastest, false).unwrap().data
        );
        assert_eq!(
            dx2.data,
            dy.conv2d_backward_input(&fresh, &p, fastest).unwrap().data
        );
        assert_ne!(y2.data, y1.data);
        assert_ne!(dx2.data, dx1.data);

        // Every other way of changing values in place empties the cache too.
        let filled = |w: &CpuStorage| {
            x.conv2d(w, None, &p, fastest, false).unwrap();
            w.kernels.bytes() > 0
        };
        assert!(filled(&w));
        w.apply_relu_mask(&w.relu_mask().unwrap()).unwrap();
        assert_eq!(w.kernels.bytes(), 0, "apply_relu_mask");
        assert!(filled(&w));
        let (mut m, mut v) = (w.try_clone().unwrap(), w.try_clone().unwrap());
        assert!(filled(&m) && filled(&v));
        let adam = AdamParams {
            lr: 0.1,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            step: 1,
        };
        w.adam_update(&copy, &mut m, &mut v, &adam).unwrap();
        for (what, s) in [("adam: x", &w), ("adam: m", &m), ("adam: v", &v)] {
            assert_eq!(s.kernels.bytes(), 0, "{what}");
        }
        assert!(filled(&w));
        w.gram_backward_in_place(&CpuStorage::new(vec![0.0; 16 * 16]), 1, 16, 9, 1.0)
            .unwrap();
        assert_eq!(w.kernels.bytes(), 0, "gram_backward_in_place");
    }
}
