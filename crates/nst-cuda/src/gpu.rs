//! Every operation nst-tensor's CUDA storage needs, on [`DeviceBuffer`]s of one [`Runtime`]:
//! the kernels of `kernels.cu` and cuBLAS products, each written once and run either on a
//! GPU ([`Gpu::open`]) or in the emulator (`Gpu::emulated`, feature `emulator`).
//!
//! Shapes come from `nst-params`, shared with nst-cpu, whose kernels define the results
//! (layouts, tie-breaking, NaN handling); the tests compare the two.
//!
//! Convolution (forward and input gradient) goes to the runtime's library (cuDNN) where it
//! has one. Otherwise, and always for weight gradients, it is im2col + one SGEMM per band of
//! output positions (bands keep the
//! patch matrix under [`COLS_BUDGET`] values, so a 4096² image does not need a 37 GB buffer);
//! its input gradient is the adjoint: one SGEMM `Wᵀ·dy` per band and a gather (`col2im_add`)
//! into `dx`, deterministic and for any stride. Style transfer never asks for weight
//! gradients; they are here for the general autodiff.

use crate::blas::Sgemm;
use crate::conv_choice::Direction;
use crate::runtime::{Arg, ConvEngine, ConvOptions, DeviceBuffer, DeviceValue, GpuResult, Runtime};
use nst_params::{AdamParams, AlgorithmSearch, Conv2dParams, Layout, Pool2dParams, Window2dParams};
use std::collections::hash_map::{Entry, HashMap};
use std::sync::Arc;

/// Threads per block on a GPU; the reduction kernels' shared arrays are sized for it.
const BLOCK: u32 = 256;
// Whole warps (the ReLU mask kernels' __syncwarp needs every lane of a warp), and no more
// than CUDA's 1024 threads (their shared arrays have room for 32 warps).
const _: () = assert!(BLOCK & 31 == 0 && BLOCK <= 1024);

/// Threads for a ReLU mask kernel over `n` values: one warp for each chunk of 32 words
/// (1024 values), which it packs at once (`relu_mask_pack` in kernels.cu).
fn mask_threads(n: usize) -> usize {
    n.div_ceil(1024) * 32
}

/// Most values of one band's patch matrix (256 MiB): larger bands are barely faster (the
/// SGEMM is already large) and would cost GPU memory at large image sizes.
pub const COLS_BUDGET: usize = 1 << 26;

/// [`Gpu::gram_backward_in_place`]'s scratch, the band of positions it multiplies at once, is
/// at most this fraction of F where F is large: the scratch is what the in-place gradient
/// costs on top of F, and relu1_1's gradient is formed as the backward pass starts, with every
/// loss layer's features alive, where the GPU's memory peaks. With F whole as scratch (as the
/// patch-matrix budget alone allowed up to 1024²), a 1024² iteration peaked at 989 MiB; with
/// these rules (at 1024², relu1_1 in four bands of the floor's size), at 797 MiB (`xtask
/// bench-worker --device cuda-emulated-library --size 1024 --iters 1`: the emulator counts
/// every device allocation).
const GRAM_SCRATCH_FRACTION: usize = 8;
/// ... but a scratch of up to this many values (64 MiB, or F whole where F is smaller) is
/// taken whatever F's size: below it, more bands would add launches (three each) to save
/// memory that hardly matters. For relu1_1 (64 channels), bands start above 512² (at 1024²:
/// 4, and relu2_1 in 2), the fraction rules above about 1448², and [`COLS_BUDGET`] from
/// about 2900² (256 MiB, as before).
const GRAM_SCRATCH_FLOOR: usize = 1 << 24;

/// Positions a band of [`Gpu::gram_backward_in_place`] covers (the last band may be
/// narrower), for `c` channels and `m` positions: an eighth of them, or the floor's worth,
/// whichever is more, but never more than `budget` values (and at least one position). It
/// never shrinks as m grows, so neither do the memory estimates built on it.
fn gram_band(c: usize, m: usize, budget: usize) -> usize {
    let c = c.max(1);
    m.div_ceil(GRAM_SCRATCH_FRACTION)
        .max(GRAM_SCRATCH_FLOOR / c)
        .min(budget / c)
        .clamp(1, m.max(1))
}

/// Values of scratch [`Gpu::gram_backward_in_place`] allocates (with the default budget) for
/// features of `c` channels at `m` positions: what the in-place Gram gradient costs on top of
/// the features, for memory estimates.
pub fn gram_scratch_values(c: usize, m: usize) -> usize {
    c * gram_band(c, m, COLS_BUDGET)
}

/// The row length of one image's features `F[c × m]` as stored: m positions a row (NCHW), or
/// c channels a row (NHWC, F stored transposed).
fn gram_row(layout: Layout, c: usize, m: usize) -> usize {
    match layout {
        Layout::Nchw => m,
        Layout::Nhwc => c,
    }
}

/// The error of an NHWC convolution without a convolution library.
const NHWC_NEEDS_A_LIBRARY: &str =
    "NHWC convolutions need a convolution library (cuDNN); the im2col kernels are NCHW";

/// Device buffers of f32, the values of every tensor.
pub type Floats = DeviceBuffer<f32>;

/// A device (real or emulated) and the operations of nst-tensor's CUDA storage.
#[derive(Clone)]
pub struct Gpu {
    runtime: Arc<dyn Runtime>,
    cols_budget: usize,
    tf32_convolutions: bool,
    library_convolutions: bool,
    algorithm_search: AlgorithmSearch,
}

impl std::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Gpu({})", self.runtime.describe())
    }
}

/// One convolution-library call of a convolution split by [`library_calls`].
#[derive(Clone, Debug, PartialEq, Eq)]
struct LibraryCall {
    /// The call's shape: one image (or all, unsplit), some input and output channels.
    p: Conv2dParams,
    /// Where the call's input (x or dx) and output (y or dy) start, in values.
    x_at: usize,
    y_at: usize,
    /// The first output and input channel of its weights.
    first_channels: (usize, usize),
    /// Whether a forward call adds into y (every input group after the first).
    accumulate: bool,
}

impl LibraryCall {
    /// Whether the call's backward-data part adds into dx: every output group after the
    /// first (the calls run output group by output group, so group 0's come first), or all
    /// of them where dx already holds a gradient (`onto_gradient`).
    fn adds_into_dx(&self, onto_gradient: bool) -> bool {
        onto_gradient || self.first_channels.0 > 0
    }
}

/// The library calls that compute convolution `c`: one, where every tensor of `c` has at
/// most `limit` values; else (cuDNN takes at most 2³¹ − 1 values a tensor: a 64-channel
/// activation of 5793² pixels is over) one call per image, group of output channels and
/// group of input channels, each group as many channels as keep a call's tensors within
/// the limit. A forward call adds into y after the first input group (y = Σ over the input
/// groups); the input gradient sums over the output groups the same way. NCHW only: with one
/// image, a group of channels is one contiguous block of x or y (NHWC interleaves them).
fn library_calls(c: &Conv2dParams, layout: Layout, limit: usize) -> GpuResult<Vec<LibraryCall>> {
    let whole = LibraryCall {
        p: *c,
        x_at: 0,
        y_at: 0,
        first_channels: (0, 0),
        accumulate: false,
    };
    if c.largest_len() <= limit {
        return Ok(vec![whole]);
    }
    let too_large = |why: &str| {
        format!(
            "a convolution of {}×{} pixels, {} → {} channels, is too large for the \
             convolution library ({limit} values a tensor){why}",
            c.in_w, c.in_h, c.in_channels, c.out_channels
        )
    };
    if layout == Layout::Nhwc {
        return Err(too_large(
            " in NHWC, which cannot be split into channel groups",
        ));
    }
    let (in_plane, out_plane) = (c.in_h * c.in_w, c.out_h() * c.out_w());
    let taps = c.kernel_h * c.kernel_w;
    // Channels a group can have: its planes within the limit, and then its share of the
    // weights (most_out × most_in × taps; VGG's are far below the limit).
    let most_out = (limit / out_plane.max(1))
        .min(limit / taps.max(1))
        .min(c.out_channels);
    let most_in = (limit / in_plane.max(1)).min(limit / (most_out * taps).max(1));
    if most_in == 0 || most_out == 0 {
        return Err(too_large(": one channel is over it"));
    }
    // Groups of a multiple of 4 channels where they can be, so that every group starts 16
    // bytes into an aligned image even when a plane has an odd number of pixels: cuDNN
    // measured its algorithms on aligned buffers, and vectorised kernels may require it.
    let (most_out, most_in) = (whole_quads(most_out), whole_quads(most_in));
    let groups = |total: usize, most: usize| -> Vec<(usize, usize)> {
        (0..total)
            .step_by(most)
            .map(|first| (first, most.min(total - first)))
            .collect()
    };
    let mut calls = vec![];
    for image in 0..c.batch {
        for &(k0, kn) in &groups(c.out_channels, most_out) {
            for &(c0, cn) in &groups(c.in_channels, most_in) {
                calls.push(LibraryCall {
                    p: Conv2dParams {
                        batch: 1,
                        in_channels: cn,
                        out_channels: kn,
                        ..*c
                    },
                    x_at: (image * c.in_channels + c0) * in_plane,
                    y_at: (image * c.out_channels + k0) * out_plane,
                    first_channels: (k0, c0),
                    accumulate: c0 > 0,
                });
            }
        }
    }
    Ok(calls)
}

/// `n` rounded down to a multiple of 4, if it is at least 4.
fn whole_quads(n: usize) -> usize {
    if n >= 4 {
        n & !3
    } else {
        n
    }
}

fn i32_of(v: usize, what: &str) -> GpuResult<i32> {
    i32::try_from(v).map_err(|_| format!("{what} {v} is too large for the CUDA kernels"))
}

impl Gpu {
    /// CUDA device `ordinal` (one-line error naming what is missing).
    pub fn open(ordinal: usize) -> GpuResult<Gpu> {
        Ok(Gpu::on(Arc::new(crate::driver::CudaRuntime::new(ordinal)?)))
    }

    /// The emulator (kernels compiled for the host; see the `emulator` module).
    #[cfg(feature = "emulator")]
    pub fn emulated() -> GpuResult<Gpu> {
        Ok(Gpu::on(crate::emulator::Emulator::new()?))
    }

    /// The operations on any runtime.
    pub fn on(runtime: Arc<dyn Runtime>) -> Gpu {
        Gpu {
            runtime,
            cols_budget: COLS_BUDGET,
            tf32_convolutions: false,
            library_convolutions: true,
            algorithm_search: AlgorithmSearch::Measured,
        }
    }

    /// Lets the convolutions' products round their operands to TF32 on tensor cores (what
    /// PyTorch does by default for cuDNN convolutions); Gram matrices and other products stay
    /// in f32 (PyTorch's default for matmul). Off by default.
    pub fn with_tf32_convolutions(mut self, on: bool) -> Gpu {
        self.tf32_convolutions = on;
        self
    }

    /// Whether convolutions go to the runtime's convolution library (cuDNN) when it has one
    /// (the default), or always to im2col + SGEMM (`false`: tests of that path on a GPU).
    pub fn with_library_convolutions(mut self, on: bool) -> Gpu {
        self.library_convolutions = on;
        self
    }

    /// How the convolution library picks an algorithm for a shape it meets first
    /// ([`AlgorithmSearch::Measured`] by default; see [`crate::conv_choice`]).
    pub fn with_algorithm_search(mut self, search: AlgorithmSearch) -> Gpu {
        self.algorithm_search = search;
        self
    }

    /// How the convolution library picks algorithms for new shapes.
    pub fn algorithm_search(&self) -> AlgorithmSearch {
        self.algorithm_search
    }

    /// What a call on operands in `layout` asks of the convolution library.
    fn conv_options(&self, layout: Layout) -> ConvOptions {
        ConvOptions {
            tf32: self.tf32_convolutions,
            search: self.algorithm_search,
            layout,
        }
    }

    /// The convolution library in use (cuDNN and its version), if any.
    pub fn conv_library(&self) -> Option<String> {
        self.conv_engine().map(|e| e.describe())
    }

    /// Whether [`Gpu::conv2d`] can run `p` in `layout`: through the convolution library in
    /// one call (every tensor within [`ConvEngine::max_elements`]; cuDNN: 2³¹ − 1 values) or,
    /// in NCHW, in calls on channel groups (NHWC interleaves them).
    /// Without a library, NCHW only (im2col).
    pub fn conv_library_takes(&self, p: &Conv2dParams, layout: Layout) -> bool {
        match self.conv_engine() {
            Some(engine) => library_calls(p, layout, engine.max_elements()).is_ok(),
            None => layout == Layout::Nchw,
        }
    }

    /// Whether convolutions can take NHWC operands: only a convolution library's can (the
    /// im2col kernels are NCHW).
    pub fn convolves_nhwc(&self) -> bool {
        self.conv_engine().is_some()
    }

    fn conv_engine(&self) -> Option<&dyn ConvEngine> {
        self.runtime
            .conv_engine()
            .filter(|_| self.library_convolutions)
    }

    /// Whether convolutions use TF32.
    pub fn tf32_convolutions(&self) -> bool {
        self.tf32_convolutions
    }

    /// Caps convolution bands at `values` patch-matrix values instead of [`COLS_BUDGET`]
    /// (at least one output row per band): less memory, more launches. Tests use a tiny cap
    /// to exercise the banding on small images.
    pub fn with_cols_budget(mut self, values: usize) -> Gpu {
        self.cols_budget = values;
        self
    }

    /// What runs the work, for the user.
    pub fn describe(&self) -> String {
        self.runtime.describe()
    }

    /// The runtime underneath.
    pub fn runtime(&self) -> &Arc<dyn Runtime> {
        &self.runtime
    }

    /// Whether two handles share one device (and its memory).
    pub fn same_device(&self, other: &Gpu) -> bool {
        Arc::ptr_eq(&self.runtime, &other.runtime)
    }

    /// Host values copied to the device.
    pub fn upload<T: DeviceValue>(&self, v: &[T]) -> GpuResult<DeviceBuffer<T>> {
        DeviceBuffer::from_slice(&self.runtime, v)
    }

    /// `n` zeros.
    pub fn zeros<T: DeviceValue>(&self, n: usize) -> GpuResult<DeviceBuffer<T>> {
        DeviceBuffer::zeros(&self.runtime, n)
    }

    /// `n` copies of `value`.
    pub fn full(&self, value: f32, n: usize) -> GpuResult<Floats> {
        let out = Floats::uninit(&self.runtime, n)?;
        // SAFETY: out holds n f32 words.
        unsafe { self.runtime.fill_u32(out.ptr_at(0), value.to_bits(), n)? };
        Ok(out)
    }

    fn uninit(&self, n: usize) -> GpuResult<Floats> {
        Floats::uninit(&self.runtime, n)
    }

    /// The blocks of a grid-stride launch over `n` items: one per `BLOCK` items, at least
    /// one and at most what the runtime runs ([`Runtime::max_grid`]).
    fn grid(&self, n: usize) -> u32 {
        let most = self.runtime.max_grid() as usize;
        n.div_ceil(BLOCK as usize).clamp(1, most) as u32
    }

    /// Runs a grid-stride kernel over `n` items.
    ///
    /// # Safety
    /// As [`Runtime::launch`]: the arguments match the kernel and cover its accesses.
    unsafe fn launch(&self, name: &'static str, n: usize, args: &[Arg]) -> GpuResult<()> {
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_blocks(name, self.grid(n), args) }
    }

    /// Runs kernel `name` on `grid` blocks of `BLOCK` threads (timed when profiling).
    ///
    /// # Safety
    /// As [`Runtime::launch`].
    unsafe fn launch_blocks(&self, name: &'static str, grid: u32, args: &[Arg]) -> GpuResult<()> {
        crate::profile::timed(
            &*self.runtime,
            || name.to_string(),
            || {
                // SAFETY: forwarded from the caller.
                unsafe { self.runtime.launch(name, grid, BLOCK, args) }
            },
        )
    }

    /// One row-major product `c = α·op(a)·op(b) + β·c` with leading dimensions (row strides)
    /// `lda`, `ldb`, `ldc`, issued as the column-major cuBLAS call (see [`crate::blas`]).
    ///
    /// # Safety
    /// The pointers cover the operands at those strides.
    #[allow(clippy::too_many_arguments)]
    unsafe fn gemm(
        &self,
        (m, k, n): (usize, usize, usize),
        (a, lda, trans_a): (u64, usize, bool),
        (b, ldb, trans_b): (u64, usize, bool),
        (c, ldc): (u64, usize),
        alpha: f32,
        beta: f32,
        tf32: bool,
    ) -> GpuResult<()> {
        if m == 0 || n == 0 {
            return Ok(());
        }
        let call =
            Sgemm::row_major_strided(m, k, n, (trans_a, lda), (trans_b, ldb), ldc, alpha, beta)
                .with_tf32(tf32);
        if !call.is_valid() {
            // Only a size past 2³¹ − 1 gets here (the strides are right by construction).
            return Err(format!(
                "a product of {m}×{k}×{n} is too large for cuBLAS (2³¹ − 1 a dimension)"
            ));
        }
        let name = || format!("sgemm {m}×{k}×{n}{}", if tf32 { " tf32" } else { "" });
        crate::profile::timed(&*self.runtime, name, || {
            // SAFETY: the row-major call's first operand is b (see Sgemm::row_major); the
            // caller guarantees the extents.
            unsafe { self.runtime.sgemm(&call, b, a, c) }
        })
    }

    // ---- elementwise ----

    /// `out = α·x + β·y`.
    pub fn axpby(&self, alpha: f32, x: &Floats, beta: f32, y: &Floats) -> GpuResult<Floats> {
        let out = self.uninit(x.len())?;
        self.axpby_into(alpha, x, beta, y, &out)?;
        Ok(out)
    }

    /// `x = α·x + β·y` in place.
    pub fn axpby_in_place(
        &self,
        alpha: f32,
        x: &mut Floats,
        beta: f32,
        y: &Floats,
    ) -> GpuResult<()> {
        self.axpby_into(alpha, x, beta, y, x)
    }

    fn axpby_into(
        &self,
        alpha: f32,
        x: &Floats,
        beta: f32,
        y: &Floats,
        out: &Floats,
    ) -> GpuResult<()> {
        check_len("axpby", y.len(), x.len())?;
        let n = x.len();
        let args = [
            Arg::F32(alpha),
            x.arg(),
            Arg::F32(beta),
            y.arg(),
            out.arg(),
            Arg::I64(n as i64),
        ];
        // SAFETY: x, y and out hold n values (elementwise, so out may be x).
        unsafe { self.launch("axpby", n, &args) }
    }

    /// `s·x`.
    pub fn scale(&self, s: f32, x: &Floats) -> GpuResult<Floats> {
        let out = self.uninit(x.len())?;
        let args = [Arg::F32(s), x.arg(), out.arg(), Arg::I64(x.len() as i64)];
        // SAFETY: x and out hold x.len() values.
        unsafe { self.launch("scale", x.len(), &args)? };
        Ok(out)
    }

    /// `s·x⊙y`.
    pub fn scaled_mul(&self, s: f32, x: &Floats, y: &Floats) -> GpuResult<Floats> {
        check_len("mul", y.len(), x.len())?;
        let out = self.uninit(x.len())?;
        let args = [
            Arg::F32(s),
            x.arg(),
            y.arg(),
            out.arg(),
            Arg::I64(x.len() as i64),
        ];
        // SAFETY: x, y and out hold x.len() values.
        unsafe { self.launch("scaled_mul", x.len(), &args)? };
        Ok(out)
    }

    /// `max(x, 0)` (NaN becomes 0, as on the CPU).
    pub fn relu(&self, x: &Floats) -> GpuResult<Floats> {
        let out = self.uninit(x.len())?;
        self.relu_into(x, &out)?;
        Ok(out)
    }

    fn relu_into(&self, x: &Floats, out: &Floats) -> GpuResult<()> {
        let args = [x.arg(), out.arg(), Arg::I64(x.len() as i64)];
        // SAFETY: x and out hold x.len() values (out may be x: elementwise).
        unsafe { self.launch("relu_forward", x.len(), &args) }
    }

    /// Bit i of the packed mask: `y[i] > 0` (32 per word, nst-cpu's layout).
    pub fn relu_mask(&self, y: &Floats) -> GpuResult<DeviceBuffer<u32>> {
        let words = y.len().div_ceil(32);
        let bits = DeviceBuffer::<u32>::uninit(&self.runtime, words)?;
        let args = [y.arg(), bits.arg(), Arg::I64(y.len() as i64)];
        // SAFETY: y holds len values, bits ⌈len/32⌉ words; BLOCK is whole warps.
        unsafe { self.launch("relu_mask_pack", mask_threads(y.len()), &args)? };
        Ok(bits)
    }

    /// `dy = 0` where the mask's bit is clear.
    pub fn apply_relu_mask(&self, dy: &mut Floats, bits: &DeviceBuffer<u32>) -> GpuResult<()> {
        check_len("relu mask", bits.len(), dy.len().div_ceil(32))?;
        let args = [bits.arg(), dy.arg(), Arg::I64(dy.len() as i64)];
        // SAFETY: bits covers dy.len() bits.
        unsafe { self.launch("relu_mask_apply", dy.len(), &args) }
    }

    /// The transpose of a row-major `rows × cols` matrix.
    pub fn transpose(&self, x: &Floats, rows: usize, cols: usize) -> GpuResult<Floats> {
        self.transpose_each(x, 1, rows, cols)
    }

    /// The transpose of each of `batch` row-major `rows × cols` matrices stored one after
    /// another.
    pub fn transpose_each(
        &self,
        x: &Floats,
        batch: usize,
        rows: usize,
        cols: usize,
    ) -> GpuResult<Floats> {
        check_len("transpose", x.len(), batch * rows * cols)?;
        let out = self.uninit(x.len())?;
        let args = [
            x.arg(),
            out.arg(),
            Arg::I64(batch as i64),
            Arg::I64(rows as i64),
            Arg::I64(cols as i64),
        ];
        // SAFETY: both hold batch·rows·cols values.
        unsafe { self.launch("transpose2d", x.len(), &args)? };
        Ok(out)
    }

    /// NCHW values of `batch` images of `channels` planes of `pixels` values, in NHWC order
    /// (also a convolution's KCRS weights → KRSC, with the output channels as the batch).
    pub fn nchw_to_nhwc(
        &self,
        x: &Floats,
        batch: usize,
        channels: usize,
        pixels: usize,
    ) -> GpuResult<Floats> {
        self.transpose_each(x, batch, channels, pixels)
    }

    /// NHWC values in NCHW order: the inverse of [`Gpu::nchw_to_nhwc`].
    pub fn nhwc_to_nchw(
        &self,
        x: &Floats,
        batch: usize,
        channels: usize,
        pixels: usize,
    ) -> GpuResult<Floats> {
        self.transpose_each(x, batch, pixels, channels)
    }

    /// `dst`'s window = `src`'s (`accumulate`: `+=`), the rest of `dst` as it was (nst-cpu's
    /// `copy_window`): a tile cropped out of planes, or pasted back into them.
    pub fn copy_window(
        &self,
        src: &Floats,
        dst: &mut Floats,
        p: &Window2dParams,
        accumulate: bool,
    ) -> GpuResult<()> {
        if !p.fits() {
            return Err(format!("copy_window: the window {p:?} is outside a side"));
        }
        check_len("window source", src.len(), p.src_len())?;
        check_len("window destination", dst.len(), p.dst_len())?;
        let n = p.window_len();
        if n == 0 {
            return Ok(());
        }
        let long = |v: usize| Arg::I64(v as i64);
        let args = [
            src.arg(),
            dst.arg(),
            long(p.planes),
            long(p.src_size.0),
            long(p.src_size.1),
            long(p.dst_size.0),
            long(p.dst_size.1),
            long(p.src_origin.0),
            long(p.src_origin.1),
            long(p.dst_origin.0),
            long(p.dst_origin.1),
            long(p.size.0),
            long(p.size.1),
            Arg::I32(i32::from(accumulate)),
        ];
        // SAFETY: the window lies inside both sides (checked above), whose lengths are
        // `planes` planes of their sizes.
        unsafe { self.launch("copy_window", n, &args) }
    }

    /// `n` copies of `v[0]`.
    pub fn broadcast(&self, v: &Floats, n: usize) -> GpuResult<Floats> {
        check_len("broadcast", v.len(), 1)?;
        let out = self.uninit(n)?;
        let args = [v.arg(), out.arg(), Arg::I64(n as i64)];
        // SAFETY: v holds one value, out n.
        unsafe { self.launch("broadcast_first", n, &args)? };
        Ok(out)
    }

    /// Adam's update of x in place (nst-cpu's `adam_update`).
    pub fn adam_update(
        &self,
        x: &mut Floats,
        g: &Floats,
        m: &mut Floats,
        v: &mut Floats,
        p: &AdamParams,
    ) -> GpuResult<()> {
        for (what, len) in [
            ("gradient", g.len()),
            ("first moment", m.len()),
            ("second moment", v.len()),
        ] {
            check_len(what, len, x.len())?;
        }
        let args = [
            x.arg(),
            g.arg(),
            m.arg(),
            v.arg(),
            Arg::F32(p.lr),
            Arg::F32(p.beta1),
            Arg::F32(p.beta2),
            Arg::F32(p.eps),
            Arg::F32(p.correction1()),
            Arg::F32(p.correction2()),
            Arg::I64(x.len() as i64),
        ];
        // SAFETY: all four hold x.len() values.
        unsafe { self.launch("adam_update", x.len(), &args) }
    }

    // ---- reductions (f64 accumulation, like nst-cpu) ----

    /// Σ over `a` (and `b`) of op 0 (a−b)², 1 a·b, 2 |a|, 3 a, into a one-value f64 buffer.
    fn reduce(&self, a: &Floats, b: &Floats, op: i32) -> GpuResult<DeviceBuffer<f64>> {
        self.reduce_scaled(a, b, op, 1.0)
    }

    /// `scale·Σ` of reduction `op` (see `reduce_partial` in kernels.cu), left on the device.
    fn reduce_scaled(
        &self,
        a: &Floats,
        b: &Floats,
        op: i32,
        scale: f64,
    ) -> GpuResult<DeviceBuffer<f64>> {
        check_len("reduction", b.len(), a.len())?;
        let partial = DeviceBuffer::<f64>::uninit(&self.runtime, self.grid(a.len()) as usize)?;
        let args = [
            a.arg(),
            b.arg(),
            partial.arg(),
            Arg::I64(a.len() as i64),
            Arg::I32(op),
        ];
        // SAFETY: a and b hold a.len() values; `partial` one double per block of the grid
        // that `launch` runs for a.len() (every block writes its own).
        unsafe { self.launch("reduce_partial", a.len(), &args)? };
        self.finish(&partial, scale)
    }

    /// `scale·Σ partial`, one block (the second half of every reduction).
    fn finish(&self, partial: &DeviceBuffer<f64>, scale: f64) -> GpuResult<DeviceBuffer<f64>> {
        let out = DeviceBuffer::<f64>::uninit(&self.runtime, 1)?;
        let args = [
            partial.arg(),
            out.arg(),
            Arg::I64(partial.len() as i64),
            Arg::F64(scale),
        ];
        // SAFETY: `partial.len()` doubles in, one double out, one block.
        unsafe { self.launch_blocks("reduce_finish", 1, &args)? };
        Ok(out)
    }

    fn reduce_to_host(&self, a: &Floats, b: &Floats, op: i32) -> GpuResult<f64> {
        Ok(self.reduce(a, b, op)?.to_vec()?[0])
    }

    /// Σ aᵢ·bᵢ, left on the device (for [`Gpu::axpy_device_coef`]).
    pub fn dot_on_device(&self, a: &Floats, b: &Floats) -> GpuResult<DeviceBuffer<f64>> {
        self.reduce(a, b, 1)
    }

    /// `r·Σ aᵢ·bᵢ`, left on the device: [`Gpu::dot_on_device`] then [`Gpu::scalar_scale`],
    /// the same bits, one launch fewer.
    pub fn dot_scaled_on_device(
        &self,
        a: &Floats,
        b: &Floats,
        r: f64,
    ) -> GpuResult<DeviceBuffer<f64>> {
        self.reduce_scaled(a, b, 1, r)
    }

    /// `r·a` for a device scalar `a`.
    pub fn scalar_scale(&self, a: &DeviceBuffer<f64>, r: f64) -> GpuResult<DeviceBuffer<f64>> {
        let out = DeviceBuffer::<f64>::uninit(&self.runtime, a.len())?;
        let args = [a.arg(), Arg::F64(r), out.arg(), Arg::I64(a.len() as i64)];
        // SAFETY: a and out hold a.len() doubles.
        unsafe { self.launch("scalar_scale", a.len(), &args)? };
        Ok(out)
    }

    /// `a − b` for device scalars.
    pub fn scalar_sub(
        &self,
        a: &DeviceBuffer<f64>,
        b: &DeviceBuffer<f64>,
    ) -> GpuResult<DeviceBuffer<f64>> {
        check_len("scalar", b.len(), a.len())?;
        let out = DeviceBuffer::<f64>::uninit(&self.runtime, a.len())?;
        let args = [a.arg(), b.arg(), out.arg(), Arg::I64(a.len() as i64)];
        // SAFETY: a, b and out hold a.len() doubles.
        unsafe { self.launch("scalar_sub", a.len(), &args)? };
        Ok(out)
    }

    /// `x + f32(factor·coef[0])·y` with `coef` on the device.
    pub fn axpy_device_coef(
        &self,
        x: &Floats,
        y: &Floats,
        coef: &DeviceBuffer<f64>,
        factor: f64,
    ) -> GpuResult<Floats> {
        check_len("axpy", y.len(), x.len())?;
        check_len("axpy coefficient", coef.len(), 1)?;
        let out = self.uninit(x.len())?;
        let args = [
            coef.arg(),
            Arg::F64(factor),
            x.arg(),
            y.arg(),
            out.arg(),
            Arg::I64(x.len() as i64),
        ];
        // SAFETY: x, y and out hold x.len() floats, coef one double.
        unsafe { self.launch("axpy_device_coef", x.len(), &args)? };
        Ok(out)
    }

    /// One step of L-BFGS's two-loop recursion in one pass: `x + f32(factor·(coef − minus))·y`
    /// (`minus` absent: 0) and, with `dot_with = Some((v, r))`, also `r·Σ vᵢ·resultᵢ` on the
    /// device. The same bits as [`Gpu::scalar_sub`], [`Gpu::axpy_device_coef`] and
    /// [`Gpu::dot_scaled_on_device`] in turn, in two launches instead of up to four and one
    /// read of the result fewer.
    pub fn axpy_coef_dot(
        &self,
        x: &Floats,
        y: &Floats,
        (coef, minus): (&DeviceBuffer<f64>, Option<&DeviceBuffer<f64>>),
        factor: f64,
        dot_with: Option<(&Floats, f64)>,
    ) -> GpuResult<(Floats, Option<DeviceBuffer<f64>>)> {
        check_len("axpy", y.len(), x.len())?;
        check_len("axpy coefficient", coef.len(), 1)?;
        if let Some(m) = minus {
            check_len("axpy coefficient", m.len(), 1)?;
        }
        if let Some((v, _)) = dot_with {
            check_len("dot", v.len(), x.len())?;
        }
        let out = self.uninit(x.len())?;
        let partial = dot_with
            .map(|_| DeviceBuffer::<f64>::uninit(&self.runtime, self.grid(x.len()) as usize))
            .transpose()?;
        let null = Arg::Ptr(0);
        let args = [
            coef.arg(),
            minus.map_or(null, |m| m.arg()),
            Arg::F64(factor),
            x.arg(),
            y.arg(),
            out.arg(),
            dot_with.map_or(null, |(v, _)| v.arg()),
            partial.as_ref().map_or(null, |p| p.arg()),
            Arg::I64(x.len() as i64),
        ];
        // SAFETY: x, y, out (and v) hold x.len() floats, coef (and minus) one double, partial
        // one double per block of the grid `launch` runs; the kernel reads no null pointer.
        unsafe { self.launch("axpy_coef_dot", x.len(), &args)? };
        let dot = partial
            .zip(dot_with)
            .map(|(p, (_, r))| self.finish(&p, r))
            .transpose()?;
        Ok((out, dot))
    }

    /// Σ(a − b)² (each term in f32, the sum in f64).
    pub fn sum_sq_diff(&self, a: &Floats, b: &Floats) -> GpuResult<f64> {
        self.reduce_to_host(a, b, 0)
    }

    /// [`Gpu::sum_sq_diff`] as a one-value f32 buffer that stays on the device: a loss's
    /// squared distance without a buffer of differences (nst-cpu's `sum_squared_difference`).
    pub fn squared_distance(&self, a: &Floats, b: &Floats) -> GpuResult<Floats> {
        let total = self.reduce(a, b, 0)?;
        self.to_f32_scalar(&total)
    }

    /// `a ← (s·g₀)·(a − b)` in place, `g` a one-value buffer read on the device: the gradient
    /// of `g₀·Σ(a − b)²` (s = 2) over `a` (nst-cpu's `scaled_difference_in_place`).
    pub fn scaled_difference_in_place(
        &self,
        a: &mut Floats,
        b: &Floats,
        g: &Floats,
        s: f32,
    ) -> GpuResult<()> {
        check_len("scaled difference", b.len(), a.len())?;
        check_len("scaled difference gradient", g.len(), 1)?;
        let args = [
            g.arg(),
            Arg::F32(s),
            a.arg(),
            b.arg(),
            Arg::I64(a.len() as i64),
        ];
        // SAFETY: a and b hold a.len() floats, g one; a is borrowed mutably, so nothing else
        // reads it while the kernel writes it.
        unsafe { self.launch("scaled_difference", a.len(), &args)? };
        Ok(())
    }

    /// Σ aᵢ·bᵢ.
    pub fn dot(&self, a: &Floats, b: &Floats) -> GpuResult<f64> {
        self.reduce_to_host(a, b, 1)
    }

    /// Σ |aᵢ|.
    pub fn abs_sum(&self, a: &Floats) -> GpuResult<f64> {
        self.reduce_to_host(a, a, 2)
    }

    /// Σ aᵢ as a one-value f32 buffer that stays on the device.
    pub fn sum(&self, a: &Floats) -> GpuResult<Floats> {
        let total = self.reduce(a, a, 3)?;
        self.to_f32_scalar(&total)
    }

    /// A reduction's one f64 value as a one-value f32 buffer, on the device.
    fn to_f32_scalar(&self, total: &DeviceBuffer<f64>) -> GpuResult<Floats> {
        check_len("scalar", total.len(), 1)?;
        let out = self.uninit(1)?;
        let args = [total.arg(), out.arg(), Arg::I64(1)];
        // SAFETY: one double in, one float out.
        unsafe { self.launch("double_to_float", 1, &args)? };
        Ok(out)
    }

    /// max |aᵢ|, NaN when any is NaN.
    pub fn abs_max(&self, a: &Floats) -> GpuResult<f32> {
        let out = self.zeros::<i32>(1)?;
        let args = [a.arg(), out.arg(), Arg::I64(a.len() as i64)];
        // SAFETY: a holds len values; out one int starting at 0 (the bits of +0.0).
        unsafe { self.launch("abs_max", a.len(), &args)? };
        Ok(f32::from_bits(out.to_vec()?[0] as u32))
    }

    // ---- pooling ----

    /// The pooling kernels' shape arguments. They see `images` images with `channels` values
    /// per pixel side by side: NCHW (`channels_last` = None) is one image per plane with one
    /// channel, NHWC (`Some(C)`) `planes / C` images of C channels.
    fn pool_args(p: &Pool2dParams, channels_last: Option<usize>) -> GpuResult<[Arg; 6]> {
        let channels = channels_last.unwrap_or(1);
        if channels == 0 || !p.planes.is_multiple_of(channels) {
            return Err(format!(
                "{} planes are not images of {channels} channels",
                p.planes
            ));
        }
        Ok([
            Arg::I64((p.planes / channels) as i64),
            Arg::I32(i32_of(channels, "channel count")?),
            Arg::I32(i32_of(p.in_h, "height")?),
            Arg::I32(i32_of(p.in_w, "width")?),
            Arg::I32(i32_of(p.out_h(), "height")?),
            Arg::I32(i32_of(p.out_w(), "width")?),
        ])
    }

    /// 2×2 stride-2 max pooling: the output and each window's winner (`2·row + column`), in
    /// the input's layout: NCHW for `channels_last` = None, else NHWC with that many
    /// channels (`p.planes` is then images × channels).
    pub fn max_pool(
        &self,
        x: &Floats,
        p: &Pool2dParams,
        channels_last: Option<usize>,
    ) -> GpuResult<(Floats, DeviceBuffer<u8>)> {
        check_len("max pool input", x.len(), p.input_len())?;
        let n = p.output_len();
        let y = self.uninit(n)?;
        let winners = DeviceBuffer::<u8>::uninit(&self.runtime, n)?;
        let [images, channels, h, w, oh, ow] = Self::pool_args(p, channels_last)?;
        let args = [
            x.arg(),
            y.arg(),
            winners.arg(),
            images,
            channels,
            h,
            w,
            oh,
            ow,
        ];
        // SAFETY: x holds the input, y and winners one value per output.
        unsafe { self.launch("max_pool2x2_forward", n, &args)? };
        Ok((y, winners))
    }

    /// Max pooling's `dx` from `dy`, in their layout.
    pub fn max_pool_backward(
        &self,
        dy: &Floats,
        winners: &DeviceBuffer<u8>,
        p: &Pool2dParams,
        channels_last: Option<usize>,
    ) -> GpuResult<Floats> {
        check_len("max pool gradient", dy.len(), p.output_len())?;
        check_len("max pool winners", winners.len(), p.output_len())?;
        let dx = self.zeros(p.input_len())?;
        let [images, channels, h, w, oh, ow] = Self::pool_args(p, channels_last)?;
        let args = [
            dy.arg(),
            winners.arg(),
            dx.arg(),
            images,
            channels,
            h,
            w,
            oh,
            ow,
        ];
        // SAFETY: sizes checked above; dx zeroed as the kernel needs.
        unsafe { self.launch("max_pool2x2_backward", dy.len(), &args)? };
        Ok(dx)
    }

    /// 2×2 stride-2 average pooling, in the input's layout.
    pub fn avg_pool(
        &self,
        x: &Floats,
        p: &Pool2dParams,
        channels_last: Option<usize>,
    ) -> GpuResult<Floats> {
        check_len("avg pool input", x.len(), p.input_len())?;
        let y = self.uninit(p.output_len())?;
        let [images, channels, h, w, oh, ow] = Self::pool_args(p, channels_last)?;
        let args = [x.arg(), y.arg(), images, channels, h, w, oh, ow];
        // SAFETY: x holds the input, y the output.
        unsafe { self.launch("avg_pool2x2_forward", p.output_len(), &args)? };
        Ok(y)
    }

    /// Average pooling's `dx` from `dy`, in their layout.
    pub fn avg_pool_backward(
        &self,
        dy: &Floats,
        p: &Pool2dParams,
        channels_last: Option<usize>,
    ) -> GpuResult<Floats> {
        check_len("avg pool gradient", dy.len(), p.output_len())?;
        let dx = self.zeros(p.input_len())?;
        let [images, channels, h, w, oh, ow] = Self::pool_args(p, channels_last)?;
        let args = [dy.arg(), dx.arg(), images, channels, h, w, oh, ow];
        // SAFETY: sizes checked; dx zeroed as the kernel needs.
        unsafe { self.launch("avg_pool2x2_backward", dy.len(), &args)? };
        Ok(dx)
    }

    // ---- products ----

    /// `op(a)[m × k] · op(b)[k × n]`, row-major, `a` stored `[k × m]` when `trans_a` and `b`
    /// `[n × k]` when `trans_b` (nst-cpu's `matmul`).
    #[allow(clippy::too_many_arguments)]
    pub fn matmul(
        &self,
        a: &Floats,
        b: &Floats,
        (m, k, n): (usize, usize, usize),
        trans_a: bool,
        trans_b: bool,
    ) -> GpuResult<Floats> {
        check_len("matmul left operand", a.len(), m * k)?;
        check_len("matmul right operand", b.len(), k * n)?;
        // β = 0: the product overwrites c, so it need not be zeroed first.
        let c = self.uninit(m * n)?;
        let lda = if trans_a { m } else { k };
        let ldb = if trans_b { k } else { n };
        // SAFETY: a, b, c hold m·k, k·n, m·n values at those strides.
        unsafe {
            self.gemm(
                (m, k, n),
                (a.ptr_at(0), lda, trans_a),
                (b.ptr_at(0), ldb, trans_b),
                (c.ptr_at(0), n),
                1.0,
                0.0,
                false,
            )?
        };
        Ok(c)
    }

    /// `G_i = scale·F_i·F_iᵀ` for `batch` matrices `F_i[c × m]` → `[batch, c, c]` (one SGEMM
    /// each; cuBLAS's SSYRK would halve the work, left for when a GPU can measure it). With
    /// [`Layout::Nhwc`], F_i is stored transposed (`[m × c]`, each position's c values side
    /// by side) and the same G_i is `scale·F_iᵀ·F_i` of that matrix.
    pub fn gram(
        &self,
        f: &Floats,
        (batch, c, m): (usize, usize, usize),
        scale: f32,
        layout: Layout,
    ) -> GpuResult<Floats> {
        check_len("gram input", f.len(), batch * c * m)?;
        let g = self.uninit(batch * c * c)?; // β = 0 below: overwritten
        let row = gram_row(layout, c, m);
        // F·Fᵀ of c rows (NCHW), or Fᵀ·F of m rows (NHWC): the transposed operand comes first.
        let first_transposed = layout == Layout::Nhwc;
        for i in 0..batch {
            let fi = f.ptr_at(i * c * m);
            // SAFETY: F_i is c·m values at f + i·c·m with rows of `row`, G_i c×c at
            // g + i·c·c.
            unsafe {
                self.gemm(
                    (c, m, c),
                    (fi, row, first_transposed),
                    (fi, row, !first_transposed),
                    (g.ptr_at(i * c * c), c),
                    scale,
                    0.0,
                    false,
                )?
            };
        }
        Ok(g)
    }

    /// `dF_i = scale·(dG_i + dG_iᵀ)·F_i`, in F's layout, as two accumulating SGEMMs (no
    /// symmetrising kernel, no temporary).
    pub fn gram_backward(
        &self,
        f: &Floats,
        dg: &Floats,
        (batch, c, m): (usize, usize, usize),
        scale: f32,
        layout: Layout,
    ) -> GpuResult<Floats> {
        check_len("gram input", f.len(), batch * c * m)?;
        check_len("gram gradient", dg.len(), batch * c * c)?;
        let df = self.uninit(batch * c * m)?; // the first product (β = 0) overwrites it
        let row = gram_row(layout, c, m);
        for i in 0..batch {
            let (fi, dgi, dfi) = (
                f.ptr_at(i * c * m),
                dg.ptr_at(i * c * c),
                df.ptr_at(i * c * m),
            );
            // SAFETY: as in `gram`; dG_i is c×c, F_i and dF_i c·m values with rows of `row`.
            unsafe {
                self.gram_gradient_product((c, m, layout), dgi, (fi, row), (dfi, row), scale)?
            };
        }
        Ok(df)
    }

    /// `out = scale·(dG + dGᵀ)·F` for one image's `cols` positions: two SGEMMs, the second
    /// accumulating, so dG + dGᵀ is never formed. NHWC: F and out are stored transposed
    /// (`cols` rows of c), and the products are `scale·F·(dG + dGᵀ)` of those.
    ///
    /// # Safety
    /// `dg` covers c×c values; `f` and `out` cover the `cols` positions of c channels at
    /// their row strides.
    unsafe fn gram_gradient_product(
        &self,
        (c, cols, layout): (usize, usize, Layout),
        dg: u64,
        (f, ldf): (u64, usize),
        (out, ldo): (u64, usize),
        scale: f32,
    ) -> GpuResult<()> {
        for (trans, beta) in [(false, 0.0), (true, 1.0)] {
            let (dg, f) = ((dg, c, trans), (f, ldf, false));
            // NCHW: dG(ᵀ)·F, c × cols; NHWC: F·dG(ᵀ), cols × c.
            let (shape, a, b) = match layout {
                Layout::Nchw => ((c, c, cols), dg, f),
                Layout::Nhwc => ((cols, c, c), f, dg),
            };
            // SAFETY: forwarded from the caller.
            unsafe { self.gemm(shape, a, b, (out, ldo), scale, beta, false)? };
        }
        Ok(())
    }

    /// [`Gpu::gram_backward`] written over F: each band of positions is multiplied into a
    /// scratch buffer (an eighth of F, but up to 64 MiB or F whole where that is more; at
    /// most the im2col budget: see `gram_band`), then copied back over the band (`copy2d`),
    /// so the gradient needs no second buffer of F's size.
    pub fn gram_backward_in_place(
        &self,
        f: &mut Floats,
        dg: &Floats,
        (batch, c, m): (usize, usize, usize),
        scale: f32,
        layout: Layout,
    ) -> GpuResult<()> {
        check_len("gram input", f.len(), batch * c * m)?;
        check_len("gram gradient", dg.len(), batch * c * c)?;
        if c == 0 || m == 0 {
            return Ok(());
        }
        let band = gram_band(c, m, self.cols_budget);
        let product = self.uninit(c * band)?;
        for i in 0..batch {
            let dgi = dg.ptr_at(i * c * c);
            for n0 in (0..m).step_by(band) {
                let cols = band.min(m - n0);
                // The band as a matrix in F: its first value, row stride, rows and row
                // length; the product holds it compactly.
                let (f_band, f_row, rows, row_len) = match layout {
                    Layout::Nchw => (f.ptr_at(i * c * m + n0), m, c, cols),
                    Layout::Nhwc => (f.ptr_at(i * c * m + n0 * c), c, cols, c),
                };
                // SAFETY: dG_i is c×c; the band is `rows` rows of `row_len` values at row
                // stride `f_row` inside F; the product buffer holds c·band ≥ c·cols values.
                unsafe {
                    self.gram_gradient_product(
                        (c, cols, layout),
                        dgi,
                        (f_band, f_row),
                        (product.ptr_at(0), row_len),
                        scale,
                    )?
                };
                let args = [
                    product.arg(),
                    Arg::I64(row_len as i64),
                    Arg::Ptr(f_band),
                    Arg::I64(f_row as i64),
                    Arg::I64(rows as i64),
                    Arg::I64(row_len as i64),
                ];
                // SAFETY: `rows` rows of `row_len` values, compact in the product buffer and
                // at row stride `f_row` in F's band (as for the products above).
                unsafe { self.launch("copy2d", c * cols, &args)? };
            }
        }
        Ok(())
    }

    // ---- convolution ----

    /// The bands of output rows a convolution is computed in: each keeps the patch matrix
    /// (`patch_len × rows·out_w` values) within the budget ([`COLS_BUDGET`] by default).
    fn bands(&self, c: &Conv2dParams) -> impl Iterator<Item = (usize, usize)> {
        let (oh, ow) = (c.out_h(), c.out_w());
        let rows = (self.cols_budget / (c.patch_len() * ow).max(1)).clamp(1, oh.max(1));
        (0..oh).step_by(rows).map(move |r0| (r0, rows.min(oh - r0)))
    }

    fn conv_args(c: &Conv2dParams) -> GpuResult<[Arg; 8]> {
        Ok([
            Arg::I32(i32_of(c.in_channels, "channel count")?),
            Arg::I32(i32_of(c.in_h, "height")?),
            Arg::I32(i32_of(c.in_w, "width")?),
            Arg::I32(i32_of(c.kernel_h, "kernel height")?),
            Arg::I32(i32_of(c.kernel_w, "kernel width")?),
            Arg::I32(i32_of(c.stride, "stride")?),
            Arg::I32(i32_of(c.pad, "padding")?),
            Arg::I32(i32_of(c.out_w(), "width")?),
        ])
    }

    /// A patch matrix for the largest band of `c` (`patch_len × rows·out_w` values).
    fn band_buffer(&self, c: &Conv2dParams) -> GpuResult<Floats> {
        let band_rows = self.bands(c).next().map_or(0, |(_, r)| r);
        self.uninit(c.patch_len() * band_rows * c.out_w())
    }

    /// `cols` = the patch matrix of image `image` of `x` for output positions
    /// `[p0, p0 + np)`.
    fn im2col_band(
        &self,
        x: &Floats,
        image: usize,
        c: &Conv2dParams,
        cols: &Floats,
        (p0, np): (usize, usize),
    ) -> GpuResult<()> {
        let mut args = vec![
            Arg::Ptr(x.ptr_at(image * c.input_len() / c.batch)),
            cols.arg(),
        ];
        args.extend(Self::conv_args(c)?);
        args.extend([Arg::I64(p0 as i64), Arg::I64(np as i64)]);
        // SAFETY: x holds c's batch of images; cols holds patch_len·np values (callers pass
        // a band no larger than `band_buffer`'s).
        unsafe { self.launch("im2col", c.patch_len() * np, &args) }
    }

    fn check_conv(c: &Conv2dParams, x_len: usize, w_len: usize) -> GpuResult<()> {
        check_len("convolution input", x_len, c.input_len())?;
        check_len("convolution weights", w_len, c.weight_len())?;
        if c.stride == 0 {
            return Err("convolution stride 0".into());
        }
        Ok(())
    }

    /// `y = conv(x, w)` by im2col + one SGEMM per band of output rows.
    fn im2col_forward(
        &self,
        x: &Floats,
        w: &Floats,
        c: &Conv2dParams,
        y: &Floats,
    ) -> GpuResult<()> {
        let (k, p, cout) = (c.patch_len(), c.out_h() * c.out_w(), c.out_channels);
        let cols = self.band_buffer(c)?;
        for image in 0..c.batch {
            for (r0, rows) in self.bands(c) {
                let (p0, np) = (r0 * c.out_w(), rows * c.out_w());
                self.im2col_band(x, image, c, &cols, (p0, np))?;
                // y_i[:, p0..p0+np] (row stride p) = w[cout × k] · cols[k × np].
                // SAFETY: extents as stated.
                unsafe {
                    self.gemm(
                        (cout, k, np),
                        (w.ptr_at(0), k, false),
                        (cols.ptr_at(0), np, false),
                        (y.ptr_at(image * cout * p + p0), p),
                        1.0,
                        0.0,
                        self.tf32_convolutions,
                    )?
                };
            }
        }
        Ok(())
    }

    /// `y = conv(x, w) + b`, then `max(·, 0)` when `relu`; any batch. NCHW with KCRS
    /// weights, or, with [`Layout::Nhwc`], NHWC x and y with KRSC weights (only through a
    /// convolution library: see [`Gpu::convolves_nhwc`]).
    pub fn conv2d(
        &self,
        (x, w, bias): (&Floats, &Floats, Option<&Floats>),
        c: &Conv2dParams,
        relu: bool,
        layout: Layout,
    ) -> GpuResult<Floats> {
        let y = self.convolve((x, w), c, layout)?;
        if let Some(b) = bias {
            let kernel = if relu { "add_bias_relu" } else { "add_bias" };
            let args = self.bias_args(&y, b, c, layout)?;
            // One pass for bias and ReLU together.
            // SAFETY: y holds batch·cout planes of p values; b cout values.
            unsafe { self.launch(kernel, y.len(), &args)? };
        } else if relu {
            self.relu_into(&y, &y)?;
        }
        Ok(y)
    }

    /// [`Gpu::conv2d`] with ReLU, and the packed mask of its output ([`Gpu::relu_mask`]):
    /// with a bias, the mask is made in the same pass as the bias and ReLU
    /// (`add_bias_relu_mask`), so the output is not read again for it.
    pub fn conv2d_relu_masked(
        &self,
        (x, w, bias): (&Floats, &Floats, Option<&Floats>),
        c: &Conv2dParams,
        layout: Layout,
    ) -> GpuResult<(Floats, DeviceBuffer<u32>)> {
        let Some(b) = bias else {
            let y = self.conv2d((x, w, None), c, true, layout)?;
            let bits = self.relu_mask(&y)?;
            return Ok((y, bits));
        };
        let y = self.convolve((x, w), c, layout)?;
        let bits = DeviceBuffer::<u32>::uninit(&self.runtime, y.len().div_ceil(32))?;
        // add_bias_relu's arguments with the mask after the bias.
        let [y_arg, b_arg, channels, planes, plane] = self.bias_args(&y, b, c, layout)?;
        let args = [y_arg, b_arg, bits.arg(), channels, planes, plane];
        // SAFETY: as add_bias_relu, and bits holds ⌈len/32⌉ words; BLOCK is whole warps.
        unsafe { self.launch("add_bias_relu_mask", mask_threads(y.len()), &args)? };
        Ok((y, bits))
    }

    /// The convolution alone, `conv(x, w)`: by the library where one is loaded, else im2col
    /// and SGEMM (NCHW only).
    fn convolve(
        &self,
        (x, w): (&Floats, &Floats),
        c: &Conv2dParams,
        layout: Layout,
    ) -> GpuResult<Floats> {
        Self::check_conv(c, x.len(), w.len())?;
        let y = self.uninit(c.output_len())?;
        match (self.conv_engine(), layout) {
            (Some(engine), _) => {
                let operands = (x, w, &y);
                self.library_convolution(engine, Direction::Forward, operands, c, layout, false)?
            }
            (None, Layout::Nchw) => self.im2col_forward(x, w, c, &y)?,
            (None, Layout::Nhwc) => return Err(NHWC_NEEDS_A_LIBRARY.into()),
        }
        Ok(y)
    }

    /// The bias kernels' arguments `(y, b, channels, planes, plane)`: they add
    /// `b[(i / plane) % channels]`, so NHWC is a plane of one value.
    fn bias_args(
        &self,
        y: &Floats,
        b: &Floats,
        c: &Conv2dParams,
        layout: Layout,
    ) -> GpuResult<[Arg; 5]> {
        let cout = c.out_channels;
        check_len("convolution bias", b.len(), cout)?;
        let plane = match layout {
            Layout::Nchw => c.out_h() * c.out_w(),
            Layout::Nhwc => 1,
        };
        Ok([
            y.arg(),
            b.arg(),
            Arg::I32(i32_of(cout, "channel count")?),
            Arg::I64((y.len() / plane.max(1)) as i64),
            Arg::I32(i32_of(plane, "plane size")?),
        ])
    }

    /// `∂L/∂x` of the convolution from `dy`, all in `layout` (as in [`Gpu::conv2d`]), in a new
    /// buffer: written by the convolution library (no zeroing first, and no read of what was
    /// there: cuDNN's β = 0 where nothing is added), else added into zeros by
    /// [`Gpu::conv2d_backward_input_add`].
    pub fn conv2d_backward_input(
        &self,
        (dy, w): (&Floats, &Floats),
        c: &Conv2dParams,
        layout: Layout,
    ) -> GpuResult<Floats> {
        match self.conv_engine() {
            Some(engine) => {
                Self::check_conv(c, c.input_len(), w.len())?;
                check_len("convolution output gradient", dy.len(), c.output_len())?;
                let dx = self.uninit(c.input_len())?;
                let operands = (&dx, w, dy);
                self.library_convolution(
                    engine,
                    Direction::BackwardData,
                    operands,
                    c,
                    layout,
                    false,
                )?;
                Ok(dx)
            }
            None => {
                let mut dx = self.zeros(c.input_len())?;
                self.conv2d_backward_input_add((dy, w), c, &mut dx, layout)?;
                Ok(dx)
            }
        }
    }

    /// `dx += ∂L/∂x` of the convolution from `dy`, all in `layout` (as in [`Gpu::conv2d`]):
    /// by the convolution library, or per band, `dcols = Wᵀ·dy_band` and its gather into the
    /// input rows the band read.
    pub fn conv2d_backward_input_add(
        &self,
        (dy, w): (&Floats, &Floats),
        c: &Conv2dParams,
        dx: &mut Floats,
        layout: Layout,
    ) -> GpuResult<()> {
        Self::check_conv(c, dx.len(), w.len())?;
        check_len("convolution output gradient", dy.len(), c.output_len())?;
        match (self.conv_engine(), layout) {
            (Some(engine), _) => {
                let operands = (&*dx, w, dy);
                self.library_convolution(engine, Direction::BackwardData, operands, c, layout, true)
            }
            (None, Layout::Nchw) => self.im2col_backward_input_add(dy, w, c, dx),
            (None, Layout::Nhwc) => Err(NHWC_NEEDS_A_LIBRARY.into()),
        }
    }

    /// `y = conv(x, w)` (`direction` Forward, `(x, w, y)`) or `dx = ∂L/∂x` (BackwardData,
    /// `(dx, w, dy)`; `dx += ∂L/∂x` with `add_into_dx`) by the convolution library: one call,
    /// or, where a tensor has more values than the library takes in one call
    /// ([`ConvEngine::max_elements`]), one call per image and pair of channel groups (see
    /// [`library_calls`]; forward calls after an output group's first add into y, and
    /// input-gradient calls after an input group's first, that of output group 0, add into
    /// dx).
    fn library_convolution(
        &self,
        engine: &dyn ConvEngine,
        direction: Direction,
        (x_side, w, y_side): (&Floats, &Floats, &Floats),
        c: &Conv2dParams,
        layout: Layout,
        add_into_dx: bool,
    ) -> GpuResult<()> {
        let options = self.conv_options(layout);
        // Each pair of groups' weights, copied once for all images.
        let mut parts = HashMap::new();
        for call in library_calls(c, layout, engine.max_elements())? {
            let part = match parts.entry(call.first_channels) {
                Entry::Occupied(known) => known.into_mut(),
                Entry::Vacant(new) => new.insert(self.weight_part(w, c, &call)?),
            };
            let w_ptr = part.as_ref().map_or(w.ptr_at(0), |part| part.ptr_at(0));
            let (x, y) = (x_side.ptr_at(call.x_at), y_side.ptr_at(call.y_at));
            // SAFETY: each call's operands lie inside x (dx), w (or its copied part) and y
            // (dy), which hold the input, weights and output of c (checked by the caller).
            unsafe {
                match direction {
                    Direction::Forward => engine.forward(
                        &*self.runtime,
                        &call.p,
                        options,
                        (x, w_ptr, y),
                        call.accumulate,
                    )?,
                    Direction::BackwardData => {
                        let add = call.adds_into_dx(add_into_dx);
                        let operands = (y, w_ptr, x);
                        engine.backward_data(&*self.runtime, &call.p, options, operands, add)?
                    }
                }
            };
        }
        Ok(())
    }

    /// The weights of one [`LibraryCall`]'s channel groups, copied together (KCRS), or
    /// `None` when the call takes all of `w`.
    fn weight_part(
        &self,
        w: &Floats,
        c: &Conv2dParams,
        call: &LibraryCall,
    ) -> GpuResult<Option<Floats>> {
        let (k0, c0) = call.first_channels;
        let taps = c.kernel_h * c.kernel_w;
        if call.p.in_channels == c.in_channels && call.p.out_channels == c.out_channels {
            return Ok(None);
        }
        let (rows, row_len) = (call.p.out_channels, call.p.in_channels * taps);
        let part = self.uninit(rows * row_len)?;
        let src_stride = c.in_channels * taps;
        let args = [
            Arg::Ptr(w.ptr_at(k0 * src_stride + c0 * taps)),
            Arg::I64(src_stride as i64),
            part.arg(),
            Arg::I64(row_len as i64),
            Arg::I64(rows as i64),
            Arg::I64(row_len as i64),
        ];
        // SAFETY: `rows` output channels from k0, each `row_len` values from input channel
        // c0 at stride src_stride inside w (the groups lie inside c's channels); the part
        // holds rows·row_len values.
        unsafe { self.launch("copy2d", rows * row_len, &args)? };
        Ok(Some(part))
    }

    /// The input gradient by one SGEMM per band and the gather `col2im_add`.
    fn im2col_backward_input_add(
        &self,
        dy: &Floats,
        w: &Floats,
        c: &Conv2dParams,
        dx: &mut Floats,
    ) -> GpuResult<()> {
        let (k, p, cout, ow) = (
            c.patch_len(),
            c.out_h() * c.out_w(),
            c.out_channels,
            c.out_w(),
        );
        let args = Self::conv_args(c)?;
        let dcols = self.band_buffer(c)?;
        for image in 0..c.batch {
            let dxi = dx.ptr_at(image * c.input_len() / c.batch);
            for (r0, rows) in self.bands(c) {
                let (p0, np) = (r0 * ow, rows * ow);
                // dcols[k × np] = wᵀ · dy_i[:, p0..p0+np] (row stride p).
                // SAFETY: extents as stated; dcols holds k·np values.
                unsafe {
                    self.gemm(
                        (k, cout, np),
                        (w.ptr_at(0), k, true),
                        (dy.ptr_at(image * cout * p + p0), p, false),
                        (dcols.ptr_at(0), np),
                        1.0,
                        0.0,
                        self.tf32_convolutions,
                    )?
                };
                // Input rows this band's outputs read.
                let first = (r0 * c.stride).saturating_sub(c.pad);
                let end = ((r0 + rows - 1) * c.stride + c.kernel_h)
                    .saturating_sub(c.pad)
                    .min(c.in_h);
                if end <= first {
                    continue;
                }
                let mut col2im = vec![dcols.arg(), Arg::Ptr(dxi)];
                col2im.extend(args);
                col2im.extend([
                    Arg::I64(p0 as i64),
                    Arg::I64(np as i64),
                    Arg::I32(first as i32),
                    Arg::I32((end - first) as i32),
                ]);
                // SAFETY: dcols is laid out as im2col's band; dx_i is one image and the rows
                // [first, end) lie inside it.
                unsafe {
                    self.launch(
                        "col2im_add",
                        c.in_channels * (end - first) * c.in_w,
                        &col2im,
                    )?
                };
            }
        }
        Ok(())
    }

    /// `(dw, db)` of the convolution from its input `x` and `dy` (`db` when `with_bias`).
    pub fn conv2d_backward_weight(
        &self,
        x: &Floats,
        dy: &Floats,
        c: &Conv2dParams,
        with_bias: bool,
    ) -> GpuResult<(Floats, Option<Floats>)> {
        Self::check_conv(c, x.len(), c.weight_len())?;
        check_len("convolution output gradient", dy.len(), c.output_len())?;
        let (k, p, cout, ow) = (
            c.patch_len(),
            c.out_h() * c.out_w(),
            c.out_channels,
            c.out_w(),
        );
        let cols = self.band_buffer(c)?;
        let dw = self.zeros(c.weight_len())?;
        for image in 0..c.batch {
            for (r0, rows) in self.bands(c) {
                let (p0, np) = (r0 * ow, rows * ow);
                self.im2col_band(x, image, c, &cols, (p0, np))?;
                // dw[cout × k] += dy_i[:, band] · colsᵀ.
                // SAFETY: extents as stated.
                unsafe {
                    self.gemm(
                        (cout, np, k),
                        (dy.ptr_at(image * cout * p + p0), p, false),
                        (cols.ptr_at(0), np, true),
                        (dw.ptr_at(0), k),
                        1.0,
                        1.0,
                        self.tf32_convolutions,
                    )?
                };
            }
        }
        let db = if with_bias {
            // db = Σ over images and positions of dy: dy viewed as [batch·cout × p] times
            // ones, then the images' partial sums added.
            let ones = self.full(1.0, p)?;
            let db = self.zeros(cout)?;
            for image in 0..c.batch {
                // SAFETY: dy_i is cout×p, ones p×1, db cout×1.
                unsafe {
                    self.gemm(
                        (cout, p, 1),
                        (dy.ptr_at(image * cout * p), p, false),
                        (ones.ptr_at(0), 1, false),
                        (db.ptr_at(0), 1),
                        1.0,
                        1.0,
                        false,
                    )?
                };
            }
            Some(db)
        } else {
            None
        };
        Ok((dw, db))
    }
}

fn check_len(what: &str, got: usize, want: usize) -> GpuResult<()> {
    if got == want {
        Ok(())
    } else {
        Err(format!("{what}: {got} values where {want} were expected"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// VGG-19's 3×3 convolution of `cin` → `cout` channels on `w`×`h` pixels, one image.
    fn vgg_conv(cin: usize, cout: usize, w: usize, h: usize) -> Conv2dParams {
        Conv2dParams::same_3x3(1, cin, h, w, cout)
    }

    /// The in-place Gram gradient's bands at VGG-19's style layers: an eighth of F at most
    /// where F is large, F whole where it is small, the patch-matrix budget above all.
    #[test]
    fn gram_bands_keep_the_scratch_to_an_eighth_of_large_features() {
        let m = 1024 * 1024;
        // relu1_1 at 2048²: 256M values, bands of an eighth (32M values, 128 MiB).
        assert_eq!(gram_band(64, 4 * m, COLS_BUDGET), m / 2);
        // relu1_1 at 1024²: 64M values, the floor's 16M: four bands.
        assert_eq!(gram_band(64, m, COLS_BUDGET), m / 4);
        // relu2_1 at 1024² (128 × 512²): 32M values, two bands.
        assert_eq!(gram_band(128, m / 4, COLS_BUDGET), m / 8);
        // relu3_1 at 1024² (256 × 256²) and relu1_1 at 512²: the floor's 16M values, one.
        assert_eq!(gram_band(256, m / 16, COLS_BUDGET), m / 16);
        assert_eq!(gram_band(64, m / 4, COLS_BUDGET), m / 4);
        // Just over the floor: a full band and one of 3 positions.
        assert_eq!(gram_band(64, m / 4 + 3, COLS_BUDGET), m / 4);
        // relu1_1 at 4096×2725: an eighth would be 89M values; the budget's 64M.
        assert_eq!(gram_band(64, 4096 * 2725, COLS_BUDGET), COLS_BUDGET / 64);
        // Never narrower for more positions.
        let widths: Vec<usize> = (1..5000)
            .map(|k| gram_band(64, k * 997, COLS_BUDGET))
            .collect();
        assert!(widths.windows(2).all(|w| w[0] <= w[1]));
        // What memory estimates count: the band's values (relu1_1 at 1024²: 16M).
        assert_eq!(gram_scratch_values(64, m), 1 << 24);
        // A budget under one position's values still makes progress; empty F, one band.
        assert_eq!(gram_band(64, 100, 7), 1);
        assert_eq!(gram_band(64, 0, COLS_BUDGET), 1);
        assert_eq!(gram_band(0, 5, COLS_BUDGET), 5);
    }

    /// At real sizes (nothing allocated): every call within cuDNN's limit, and each pair of
    /// channel groups once, the first of each output group writing and the rest adding.
    #[test]
    fn library_calls_cover_every_channel_pair_within_cudnn_limit() {
        let cudnn = i32::MAX as usize;
        // Under the limit: one call, the whole convolution.
        let c = vgg_conv(64, 64, 4096, 2725);
        let calls = library_calls(&c, Layout::Nchw, cudnn).unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!((calls[0].p, calls[0].accumulate), (c, false));
        // 8192×5449 (the README example's aspect at --size 8192): 64 × 44.6M values, so
        // groups of 48 and 16 channels on each side of conv1_2; conv1_1's input has 3.
        for (c, groups) in [
            (vgg_conv(64, 64, 8192, 5449), 4),
            (vgg_conv(3, 64, 8192, 5449), 2),
            (vgg_conv(64, 128, 4096, 2724), 1),
            // An odd number of pixels a plane: 63 channels would fit, groups take 60 so
            // that each starts 16-byte aligned.
            (vgg_conv(64, 64, 5793, 5793), 4),
        ] {
            let calls = library_calls(&c, Layout::Nchw, cudnn).unwrap();
            assert_eq!(calls.len(), groups, "{c:?}");
            let mut seen = vec![vec![0; c.in_channels]; c.out_channels];
            for call in &calls {
                let p = &call.p;
                assert!(p.input_len().max(p.output_len()).max(p.weight_len()) <= cudnn);
                let (k0, c0) = call.first_channels;
                assert_eq!(call.accumulate, c0 > 0);
                assert_eq!(call.x_at, c0 * c.in_h * c.in_w);
                assert_eq!(call.y_at, k0 * c.out_h() * c.out_w());
                assert!(call.x_at % 4 == 0 && call.y_at % 4 == 0, "{c:?} {call:?}");
                for row in &mut seen[k0..k0 + p.out_channels] {
                    row[c0..c0 + p.in_channels].iter_mut().for_each(|n| *n += 1);
                }
            }
            assert!(seen.iter().flatten().all(|&n| n == 1), "{c:?}");
        }
        let big = vgg_conv(64, 64, 8192, 5449);
        let first = &library_calls(&big, Layout::Nchw, cudnn).unwrap()[0];
        assert_eq!((first.p.in_channels, first.p.out_channels), (48, 48));
        // NHWC is not split: a one-line error naming what to do.
        let e = library_calls(&big, Layout::Nhwc, cudnn).unwrap_err();
        assert!(e.contains("cannot be split") && !e.contains('\n'), "{e}");
    }
}
