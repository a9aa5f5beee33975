//! A CUDA device with the nst kernels loaded and a cuBLAS handle: the operations nst-tensor
//! needs, on device buffers (`CudaSlice<f32>`).
//!
//! Status: the kernels are complete (see [`crate::kernels`]); this runtime wraps the ones the
//! parity tests exercise (ReLU, pooling, elementwise, reductions, and convolution forward as
//! im2col + cuBLAS SGEMM). `nst-tensor` does not use it yet.

use crate::kernels;
use cudarc::cublas::{CudaBlas, Gemm};
use cudarc::driver::{
    CudaContext, CudaFunction, CudaSlice, CudaStream, LaunchConfig, PushKernelArg,
};
use nst_params::{Conv2dParams, Pool2dParams};
use std::collections::HashMap;
use std::sync::Arc;

/// Threads per block; the reduction kernels' shared arrays are sized for it.
const BLOCK: u32 = 256;

/// Device 0 with the compiled kernels.
pub struct Gpu {
    stream: Arc<CudaStream>,
    blas: CudaBlas,
    functions: HashMap<&'static str, CudaFunction>,
}

/// A one-line error (driver, cuBLAS, out of memory) for the user.
pub type GpuResult<T> = Result<T, String>;

fn err(what: &str, e: impl std::fmt::Debug) -> String {
    format!("CUDA {what} failed: {e:?}")
}

fn grid(n: usize) -> LaunchConfig {
    let blocks = n.div_ceil(BLOCK as usize).clamp(1, 65_535) as u32;
    LaunchConfig {
        grid_dim: (blocks, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

impl Gpu {
    /// Opens device 0, compiles and loads the kernels, creates the cuBLAS handle. Checks
    /// that every library loads first (cudarc panics on a missing one).
    pub fn new() -> GpuResult<Gpu> {
        if let crate::Probe::Unavailable(why) = crate::probe() {
            return Err(why);
        }
        let ctx = CudaContext::new(0).map_err(|e| err("device open", e))?;
        let stream = ctx.default_stream();
        let module = ctx
            .load_module(kernels::compile()?)
            .map_err(|e| err("module load", e))?;
        let mut functions = HashMap::new();
        for &name in kernels::KERNEL_NAMES {
            let f = module
                .load_function(name)
                .map_err(|e| err("kernel load", e))?;
            functions.insert(name, f);
        }
        let blas = CudaBlas::new(stream.clone()).map_err(|e| err("cuBLAS init", e))?;
        Ok(Gpu {
            stream,
            blas,
            functions,
        })
    }

    /// Copies host values to a new device buffer.
    pub fn upload(&self, v: &[f32]) -> GpuResult<CudaSlice<f32>> {
        self.stream.clone_htod(v).map_err(|e| oom(v.len(), e))
    }

    /// Copies a device buffer back.
    pub fn download(&self, v: &CudaSlice<f32>) -> GpuResult<Vec<f32>> {
        self.stream
            .clone_dtoh(v)
            .map_err(|e| err("copy to host", e))
    }

    /// A zeroed device buffer of `n` floats.
    pub fn zeros(&self, n: usize) -> GpuResult<CudaSlice<f32>> {
        self.stream.alloc_zeros(n).map_err(|e| oom(n, e))
    }

    fn f(&self, name: &str) -> &CudaFunction {
        &self.functions[name]
    }

    /// `y = max(x, 0)`.
    pub fn relu_forward(&self, x: &CudaSlice<f32>, y: &mut CudaSlice<f32>) -> GpuResult<()> {
        let n = x.len() as i64;
        let mut b = self.stream.launch_builder(self.f("relu_forward"));
        b.arg(x).arg(y).arg(&n);
        // SAFETY: argument types and order match the kernel; y has x's length.
        unsafe { b.launch(grid(x.len())) }.map_err(|e| err("relu", e))?;
        Ok(())
    }

    /// `out = a·x + b·y`.
    pub fn axpby(
        &self,
        a: f32,
        x: &CudaSlice<f32>,
        b_coef: f32,
        y: &CudaSlice<f32>,
        out: &mut CudaSlice<f32>,
    ) -> GpuResult<()> {
        let n = x.len() as i64;
        let mut b = self.stream.launch_builder(self.f("axpby"));
        b.arg(&a).arg(x).arg(&b_coef).arg(y).arg(out).arg(&n);
        // SAFETY: as above; all three buffers have length n.
        unsafe { b.launch(grid(x.len())) }.map_err(|e| err("axpby", e))?;
        Ok(())
    }

    /// 2×2 stride-2 max pooling; returns (y, argmax).
    pub fn max_pool2x2(
        &self,
        x: &CudaSlice<f32>,
        p: &Pool2dParams,
    ) -> GpuResult<(CudaSlice<f32>, CudaSlice<i32>)> {
        if x.len() != p.input_len() {
            return Err(format!(
                "max pool: input has {} values, expected {}",
                x.len(),
                p.input_len()
            ));
        }
        let (planes, h, w, oh, ow) = (p.planes, p.in_h, p.in_w, p.out_h(), p.out_w());
        let n = p.output_len();
        let mut y = self.zeros(n)?;
        let mut arg = self.stream.alloc_zeros::<i32>(n).map_err(|e| oom(n, e))?;
        let (p, h, w, oh, ow) = (planes as i64, h as i32, w as i32, oh as i32, ow as i32);
        let mut b = self.stream.launch_builder(self.f("max_pool2x2_forward"));
        b.arg(x)
            .arg(&mut y)
            .arg(&mut arg)
            .arg(&p)
            .arg(&h)
            .arg(&w)
            .arg(&oh)
            .arg(&ow);
        // SAFETY: argument types and order match the kernel; sizes as allocated above.
        unsafe { b.launch(grid(n)) }.map_err(|e| err("max pool", e))?;
        Ok((y, arg))
    }

    /// Σ (a − b)² accumulated in f64.
    pub fn sum_sq_diff(&self, a: &CudaSlice<f32>, b: &CudaSlice<f32>) -> GpuResult<f64> {
        let mut out = self.stream.alloc_zeros::<f64>(1).map_err(|e| oom(1, e))?;
        let (n, op) = (a.len() as i64, 0i32);
        let mut l = self.stream.launch_builder(self.f("reduce_sum"));
        l.arg(a).arg(b).arg(&mut out).arg(&n).arg(&op);
        // SAFETY: argument types and order match the kernel; a and b have length n.
        unsafe { l.launch(grid(a.len())) }.map_err(|e| err("reduction", e))?;
        let v = self
            .stream
            .clone_dtoh(&out)
            .map_err(|e| err("copy to host", e))?;
        Ok(v[0])
    }

    /// `y[1, C_out, OH, OW] = conv(x, w) + b` for one image by im2col and one SGEMM.
    pub fn conv2d_forward(
        &self,
        x: &CudaSlice<f32>,
        w: &CudaSlice<f32>,
        bias: &CudaSlice<f32>,
        c: &Conv2dParams,
    ) -> GpuResult<CudaSlice<f32>> {
        if c.batch != 1 {
            return Err(format!(
                "conv2d_forward: batch {} (only 1 is supported)",
                c.batch
            ));
        }
        // The kernels index by `c`: buffers of other lengths would be read out of bounds.
        let lengths = [
            (x.len(), c.input_len()),
            (w.len(), c.weight_len()),
            (bias.len(), c.out_channels),
        ];
        if lengths.iter().any(|(got, want)| got != want) {
            return Err(format!(
                "conv2d_forward: buffer lengths {lengths:?} (got, expected) do not fit {c:?}"
            ));
        }
        let (cin, cout, oh, ow) = (c.in_channels, c.out_channels, c.out_h(), c.out_w());
        let (kk, p) = (c.patch_len(), oh * ow);
        let mut cols = self.zeros(kk * p)?;
        let args = [
            cin, c.in_h, c.in_w, c.kernel_h, c.kernel_w, c.stride, c.pad, oh, ow,
        ]
        .map(|v| v as i32);
        let mut b = self.stream.launch_builder(self.f("im2col"));
        b.arg(x).arg(&mut cols);
        for a in &args {
            b.arg(a);
        }
        // SAFETY: argument types and order match the kernel; cols has kk·p elements.
        unsafe { b.launch(grid(kk * p)) }.map_err(|e| err("im2col", e))?;
        let mut y = self.zeros(cout * p)?;
        // Row-major y[C_out × P] = w[C_out × K] · cols[K × P] (see `blas`: the call takes
        // cols first).
        let cfg = crate::blas::Sgemm::row_major(cout, kk, p, false, false, 1.0, 0.0).config();
        // SAFETY: the extents match the allocations above.
        unsafe { self.blas.gemm(cfg, &cols, w, &mut y) }.map_err(|e| err("SGEMM", e))?;
        let (channels, planes, hw) = (cout as i32, cout as i64, p as i32);
        let mut b = self.stream.launch_builder(self.f("add_bias"));
        b.arg(&mut y).arg(bias).arg(&channels).arg(&planes).arg(&hw);
        // SAFETY: argument types and order match the kernel.
        unsafe { b.launch(grid(cout * p)) }.map_err(|e| err("bias", e))?;
        Ok(y)
    }
}

/// Allocation failures name the size, so the user can pick a smaller `--size`.
fn oom(n: usize, e: impl std::fmt::Debug) -> String {
    format!(
        "CUDA could not allocate {:.1} MiB ({e:?}); try a smaller --size",
        n as f64 * 4.0 / (1 << 20) as f64
    )
}
