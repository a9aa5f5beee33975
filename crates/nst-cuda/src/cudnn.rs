//! Convolutions through cuDNN (loaded at run time, like the rest): forward and the input
//! gradient (backward-data), f32, NCHW or NHWC (with KRSC filters). Weight gradients are
//! never needed by style transfer and stay on the im2col path.
//!
//! Per distinct shape (and precision and layout) the descriptors are made once and the algorithms
//! picked once: by measurement (`cudnnFind*`, fastest first, within [`WORKSPACE_LIMIT`]), as
//! `torch.backends.cudnn.benchmark` does, or, where the caller asks for
//! [`AlgorithmSearch::Heuristic`], by cuDNN's heuristics (`cudnnGet*_v7`), which run nothing;
//! when to do which is [`crate::conv_choice`]'s rule. One workspace buffer grows to the
//! largest need and is reused. TF32: `CUDNN_DEFAULT_MATH` lets cuDNN use tensor cores with
//! TF32 operands (PyTorch's `allow_tf32 = True`); `CUDNN_FMA_MATH` keeps f32 (PyTorch with
//! TF32 off). An algorithm is chosen with the math type cuDNN reported it in, and run in that
//! math type (`Math`), as PyTorch does.
//!
//! First run on a GPU on 2026-11-28 (an H200, cuDNN 9.14): the CUDA tests, the reference
//! tests and the README example passed through it then (`scripts/device-check.sh`). Added
//! since, and not yet run on a GPU: the heuristic picks (`cudnnGet*_v7`), the results read as
//! numbers (`RawResult`), the workspace query of a remembered choice, the choices kept on
//! disk, and the math type set per call (from a 2026-11-29 review against cuDNN's API and
//! PyTorch's use of it: the first GPU run ran every algorithm in the descriptor's math type,
//! whatever math type the search had measured it in). The code around it (bias, ReLU,
//! accumulation, batches, the choice rule) is also tested through the same interface in the
//! emulator ([`ConvEngine`] implemented with nst-cpu's convolution). `NST_CUDNN=0` turns it
//! off (every convolution then takes the im2col + cuBLAS path); `NST_CUDNN_LOG=1` prints
//! each search's and heuristic pick's algorithm.

use crate::algorithm_cache::AlgorithmCache;
use crate::conv_choice::{self, choose_once, AlgorithmId, ChoiceKey, Chosen, Direction};
use crate::runtime::{ConvEngine, ConvOptions, DevicePtr, GpuResult, Runtime};
use cudarc::cudnn::sys::{
    self, cudnnConvolutionBwdDataAlgoPerf_t, cudnnConvolutionFwdAlgoPerf_t, cudnnDataType_t,
    cudnnMathType_t, cudnnStatus_t, cudnnTensorFormat_t,
};
use nst_params::{AlgorithmSearch, Conv2dParams, Layout};
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::Mutex;

/// The most workspace one algorithm may ask for (bytes): faster algorithms that need more
/// are skipped rather than risk running a large image out of memory.
pub const WORKSPACE_LIMIT: usize = 1 << 30;

fn check(what: &str, status: cudnnStatus_t) -> GpuResult<()> {
    if status == cudnnStatus_t::CUDNN_STATUS_SUCCESS {
        Ok(())
    } else {
        Err(format!("cuDNN {what} failed: {status:?}"))
    }
}

/// How many algorithms a `cudnnFind*` or `cudnnGet*_v7` call may report: room for every
/// algorithm (8 forward, 6 backward-data) in each math type it may be reported in, so that
/// a preference ([`choose`]) never misses one because faster ones filled the list.
const SEARCHED: usize = 32;

/// One result of a `cudnnFind*` or `cudnnGet*_v7` call as cuDNN writes it
/// (`cudnnConvolutionFwdAlgoPerf_t` or `cudnnConvolutionBwdDataAlgoPerf_t`, which have the
/// same fields), every enum read as its number: a cuDNN newer than cudarc's bindings may write
/// a value their Rust enums lack, and reading that as the enum would be undefined behaviour.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RawResult {
    algo: u32,
    status: u32,
    time: f32,
    memory: usize,
    determinism: u32,
    math: u32,
    reserved: [i32; 3],
}

// The layout cuDNN writes into (checked against cudarc's definitions).
const _: () = assert!(
    std::mem::size_of::<RawResult>() == std::mem::size_of::<cudnnConvolutionFwdAlgoPerf_t>()
        && std::mem::size_of::<RawResult>()
            == std::mem::size_of::<cudnnConvolutionBwdDataAlgoPerf_t>()
        && std::mem::align_of::<RawResult>()
            == std::mem::align_of::<cudnnConvolutionFwdAlgoPerf_t>()
);

/// The math types nst runs cuDNN's convolutions in (`cudnnMathType_t`).
///
/// cuDNN runs an algorithm in the math type set on the convolution descriptor at the call,
/// and a search or the heuristics report each algorithm with the math type it was measured
/// or ranked in. The same algorithm in another math type can be another kernel, with another
/// speed and workspace, so the pair is what is chosen ([`Algorithm`]), and its math type is
/// set before each call and each workspace query, as PyTorch does
/// (`cudnnSetConvolutionMathType(desc, perf.mathType)`). Never
/// `CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION`, which may round f32 operands to f16.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Math {
    /// `CUDNN_DEFAULT_MATH`: tensor cores with TF32 operands allowed (Ampere and later).
    Default,
    /// `CUDNN_TENSOR_OP_MATH`: tensor cores (TF32 for f32 operands).
    TensorOp,
    /// `CUDNN_FMA_MATH`: f32 arithmetic only.
    Fma,
}

impl Math {
    const ALL: [Math; 3] = [Math::Default, Math::TensorOp, Math::Fma];

    /// What a search or the heuristics run in: `CUDNN_DEFAULT_MATH` for TF32 (PyTorch's
    /// `allow_tf32 = True`), `CUDNN_FMA_MATH` for f32 (PyTorch with TF32 off).
    fn searched(tf32: bool) -> Math {
        if tf32 {
            Math::Default
        } else {
            Math::Fma
        }
    }

    fn cudnn(self) -> cudnnMathType_t {
        match self {
            Math::Default => cudnnMathType_t::CUDNN_DEFAULT_MATH,
            Math::TensorOp => cudnnMathType_t::CUDNN_TENSOR_OP_MATH,
            Math::Fma => cudnnMathType_t::CUDNN_FMA_MATH,
        }
    }

    /// The math type numbered `n` by cuDNN, if nst runs convolutions in it.
    fn from_number(n: u32) -> Option<Math> {
        Math::ALL.into_iter().find(|m| m.cudnn() as u32 == n)
    }
}

/// Sets the math type `conv`'s next calls (searches, workspace queries, convolutions) run in.
///
/// # Safety
/// `conv` is a live convolution descriptor, not in use by another thread.
unsafe fn set_math(conv: sys::cudnnConvolutionDescriptor_t, math: Math) -> cudnnStatus_t {
    // SAFETY: as the caller guarantees.
    unsafe { sys::cudnnSetConvolutionMathType(conv, math.cudnn()) }
}

/// A chosen algorithm with the math type it runs in (see [`Math`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Algorithm<A> {
    algo: A,
    math: Math,
}

/// An algorithm's number in [`crate::algorithm_cache`]: the algorithm's, plus 2¹⁶ × the
/// math type's.
impl<A: AlgorithmId> AlgorithmId for Algorithm<A> {
    fn id(self) -> u32 {
        self.algo.id() | (self.math.cudnn() as u32) << 16
    }
    fn from_id(id: u32) -> Option<Self> {
        Some(Algorithm {
            algo: A::from_id(id & 0xffff)?,
            math: Math::from_number(id >> 16)?,
        })
    }
}

/// What [`choose`] reads from one result.
struct Found<A> {
    /// The algorithm ran (a search) or is supported (the heuristics).
    ok: bool,
    memory: usize,
    algo: A,
    deterministic: bool,
    /// The math type it was measured or ranked in; `None` for one that may round to f16
    /// (`CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION`) or that this cuDNN added.
    math: Option<Math>,
}

impl<A> Found<A> {
    /// Whether it was reported in tensor-core math (`CUDNN_TENSOR_OP_MATH`, or a math type
    /// nst does not run): f32 prefers the others, and runs the one it takes in FMA math.
    fn tensor_cores(&self) -> bool {
        !matches!(self.math, Some(Math::Fma | Math::Default))
    }
}

/// The results of one call as [`Found`], leaving out algorithms cuDNN numbers but nst does
/// not know.
fn found<A: AlgorithmId>(results: &[RawResult]) -> Vec<Found<A>> {
    const SUCCESS: u32 = cudnnStatus_t::CUDNN_STATUS_SUCCESS as u32;
    const DETERMINISTIC: u32 = sys::cudnnDeterminism_t::CUDNN_DETERMINISTIC as u32;
    results
        .iter()
        .filter_map(|r| {
            Some(Found {
                ok: r.status == SUCCESS,
                memory: r.memory,
                algo: A::from_id(r.algo)?,
                deterministic: r.determinism == DETERMINISTIC,
                math: Math::from_number(r.math),
            })
        })
        .collect()
}

/// The first algorithm in cuDNN's order (fastest measured first, or the heuristics' ranking)
/// that is usable (ran, or is supported) and fits the workspace limit, with two preferences:
/// - **f32** (`tf32` false): no tensor-core math, so `--precision fp32` is f32 throughout.
/// - **deterministic** when there is one, as `torch.backends.cudnn.deterministic` does: a
///   nondeterministic backward-data algorithm (atomic adds in a varying order) changes the
///   gradient's last bits from one call to the next, and L-BFGS carries such differences on
///   and grows them (the H200's f32 summation order moved the reference trace by 1.2e-2 at
///   iterate 9: `nst-optim/tests/reference.rs`). Two runs give the same bits when they use
///   the same algorithms (searches measure afresh in each process, so the measured choices
///   are kept on disk: [`crate::algorithm_cache`]). Measured on an H200 (cuDNN 9.14),
///   between two runs that also differed in the reductions: fp32 14% slower (16.3 → 18.6 ms
///   per iteration at 512², 57.9 → 66.2 at 1024²), tf32 within 2% (6.1 → 6.1–6.3, 17.8 →
///   18.1–18.2).
///
/// FFT and Winograd algorithms stay allowed: a run that also excluded them in f32 measured
/// the same time and the same distance from the float64 L-BFGS reference (1.74e-3 against
/// 1.76e-3 at iterate 2; im2col + cuBLAS: 9.5e-5, a summation order that happens to land
/// nearer, see `nst-optim/tests/reference.rs`).
///
/// When no algorithm meets a preference, the fastest usable one is taken. Returns
/// (algorithm, workspace bytes); the algorithm runs in the math type it was reported with
/// under TF32 (`CUDNN_DEFAULT_MATH`, the descriptor's, for one nst does not run), and always
/// in `CUDNN_FMA_MATH` in f32.
fn choose<A: Copy + std::fmt::Debug>(
    results: &[Found<A>],
    what: &str,
    tf32: bool,
) -> GpuResult<(Algorithm<A>, usize)> {
    let usable = |r: &&Found<A>| r.ok && r.memory <= WORKSPACE_LIMIT;
    let wanted = |r: &&Found<A>| usable(r) && (tf32 || !r.tensor_cores());
    let pick = (results.iter().filter(wanted).find(|r| r.deterministic))
        .or_else(|| results.iter().find(wanted))
        .or_else(|| results.iter().find(usable));
    let r = pick.ok_or_else(|| format!("cuDNN found no {what} algorithm for this shape"))?;
    if std::env::var("NST_CUDNN_LOG").is_ok_and(|v| v == "1") {
        eprintln!(
            "cuDNN {what}: {:?} in {:?} math, {} bytes of workspace, deterministic {}",
            r.algo, r.math, r.memory, r.deterministic
        );
    }
    // The searched math type, unless TF32 and cuDNN reported one nst runs.
    let math = r.math.filter(|_| tf32).unwrap_or(Math::searched(tf32));
    Ok((Algorithm { algo: r.algo, math }, r.memory))
}

/// The results of a search or of the heuristics (`how`) made by `call`, which writes up to
/// `SEARCHED` results and their count; timed when profiling.
fn ranked<A: AlgorithmId>(
    runtime: &dyn Runtime,
    how: AlgorithmSearch,
    (direction, p): (Direction, &Conv2dParams),
    call: impl FnOnce(*mut RawResult, &mut i32) -> cudnnStatus_t,
) -> GpuResult<Vec<Found<A>>> {
    conv_choice::timed(runtime, (how, direction, p), || {
        let mut results = [RawResult::default(); SEARCHED];
        let mut count = 0;
        let doing = format!("algorithm {}", conv_choice::kind(how));
        check(&doing, call(results.as_mut_ptr(), &mut count))?;
        Ok(found(&results[..count.clamp(0, SEARCHED as i32) as usize]))
    })
}

/// `cuDNN 9.14.0` for version 91400.
fn describe_version(v: usize) -> String {
    format!("cuDNN {}.{}.{}", v / 10000, (v / 100) % 100, v % 100)
}

/// A heuristic pick, or why there was none when `NST_CUDNN_LOG=1` (the caller then searches).
fn logged_heuristic<A>(pick: GpuResult<A>, what: &str) -> GpuResult<A> {
    if let Err(e) = &pick {
        if std::env::var("NST_CUDNN_LOG").is_ok_and(|v| v == "1") {
            eprintln!("cuDNN {what}: no heuristic pick ({e}); searching instead");
        }
    }
    pick
}

impl AlgorithmId for sys::cudnnConvolutionFwdAlgo_t {
    fn id(self) -> u32 {
        self as u32
    }
    fn from_id(id: u32) -> Option<Self> {
        use sys::cudnnConvolutionFwdAlgo_t::*;
        [
            CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,
            CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
            CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
            CUDNN_CONVOLUTION_FWD_ALGO_DIRECT,
            CUDNN_CONVOLUTION_FWD_ALGO_FFT,
            CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,
            CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,
            CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED,
        ]
        .into_iter()
        .find(|a| *a as u32 == id)
    }
}

impl AlgorithmId for sys::cudnnConvolutionBwdDataAlgo_t {
    fn id(self) -> u32 {
        self as u32
    }
    fn from_id(id: u32) -> Option<Self> {
        use sys::cudnnConvolutionBwdDataAlgo_t::*;
        [
            CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,
            CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
            CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,
            CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
            CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD,
            CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED,
        ]
        .into_iter()
        .find(|a| *a as u32 == id)
    }
}

/// The three cuDNN calls behind one direction's algorithm choice, on its descriptors: the
/// search (`cudnnFind*`) and the heuristics (`cudnnGet*_v7`), each writing up to `SEARCHED`
/// results and their count, and the workspace an algorithm needs (in the math type
/// `Cudnn::algorithm` sets first).
struct AlgorithmCalls<S, H, W> {
    search: S,
    heuristics: H,
    workspace: W,
}

/// The descriptors and chosen algorithms of one convolution shape.
struct Plan {
    x: sys::cudnnTensorDescriptor_t,
    y: sys::cudnnTensorDescriptor_t,
    w: sys::cudnnFilterDescriptor_t,
    conv: sys::cudnnConvolutionDescriptor_t,
    forward: Option<Chosen<Algorithm<sys::cudnnConvolutionFwdAlgo_t>>>,
    backward_data: Option<Chosen<Algorithm<sys::cudnnConvolutionBwdDataAlgo_t>>>,
}

/// cuDNN on one device and stream.
pub struct Cudnn {
    handle: sys::cudnnHandle_t,
    version: usize,
    plans: Mutex<HashMap<(Conv2dParams, bool, Layout), Plan>>,
    /// Measured choices of this GPU, driver and cuDNN, from earlier runs and this one.
    cache: AlgorithmCache,
    /// The workspace and its size in bytes.
    workspace: Mutex<(DevicePtr, usize)>,
}

// SAFETY: the handle and descriptors are used under the mutexes above, one call at a time,
// with the device's context bound by the caller (CudaRuntime binds it before every call).
unsafe impl Send for Cudnn {}
// SAFETY: as above.
unsafe impl Sync for Cudnn {}

impl Cudnn {
    /// A handle on `stream`, or why cuDNN cannot be used (then convolutions use im2col).
    /// `device` names the GPU and driver: with cuDNN's version, it is the identity under
    /// which measured algorithm choices are kept on disk ([`crate::algorithm_cache`]).
    pub fn new(stream: cudarc::driver::sys::CUstream, device: &str) -> GpuResult<Cudnn> {
        // SAFETY: only tries to dlopen the library.
        if !unsafe { sys::is_culib_present() } {
            return Err("cuDNN (libcudnn.so.9) could not be loaded".into());
        }
        let version = cudarc::cudnn::result::get_version();
        let handle =
            cudarc::cudnn::result::create_handle().map_err(|e| format!("cuDNN init: {e:?}"))?;
        // SAFETY: a fresh handle and the runtime's live stream (same CUstream type).
        unsafe { cudarc::cudnn::result::set_stream(handle, stream as _) }
            .map_err(|e| format!("cuDNN stream: {e:?}"))?;
        // What a remembered choice depends on: the device, cuDNN, and `choose`'s rule (its
        // preferences, bumped by hand when they change, and the workspace limit). Rule 2: an
        // algorithm is kept with its math type.
        let library = format!(
            "{device}, {}, choice rule 2 within {WORKSPACE_LIMIT} bytes",
            describe_version(version)
        );
        Ok(Cudnn {
            handle,
            version,
            plans: Mutex::new(HashMap::new()),
            cache: AlgorithmCache::open(crate::cache_dir::default_dir().as_deref(), &library),
            workspace: Mutex::new((0, 0)),
        })
    }

    /// The descriptors of `p` (made once) in `options`' precision and layout.
    fn plan<'a>(
        &self,
        plans: &'a mut HashMap<(Conv2dParams, bool, Layout), Plan>,
        p: &Conv2dParams,
        options: ConvOptions,
    ) -> GpuResult<&'a mut Plan> {
        let (tf32, layout) = (options.tf32, options.layout);
        let key = (*p, tf32, layout);
        if let std::collections::hash_map::Entry::Vacant(slot) = plans.entry(key) {
            let dim =
                |v: usize| i32::try_from(v).map_err(|_| format!("size {v} too large for cuDNN"));
            let (n, c, h, w) = (
                dim(p.batch)?,
                dim(p.in_channels)?,
                dim(p.in_h)?,
                dim(p.in_w)?,
            );
            let (k, oh, ow) = (dim(p.out_channels)?, dim(p.out_h())?, dim(p.out_w())?);
            let (kh, kw, pad, stride) = (
                dim(p.kernel_h)?,
                dim(p.kernel_w)?,
                dim(p.pad)?,
                dim(p.stride)?,
            );
            let f32t = cudnnDataType_t::CUDNN_DATA_FLOAT;
            // The dimensions are always given as n, c, h, w (k, c, r, s for the filter); the
            // format says how they lie in memory. NHWC filters are KRSC.
            let format = match layout {
                Layout::Nchw => cudnnTensorFormat_t::CUDNN_TENSOR_NCHW,
                Layout::Nhwc => cudnnTensorFormat_t::CUDNN_TENSOR_NHWC,
            };
            use cudarc::cudnn::result as r;
            let e = |what: &'static str| move |e| format!("cuDNN {what}: {e:?}");
            let plan = Plan {
                x: r::create_tensor_descriptor().map_err(e("descriptor"))?,
                y: r::create_tensor_descriptor().map_err(e("descriptor"))?,
                w: r::create_filter_descriptor().map_err(e("descriptor"))?,
                conv: r::create_convolution_descriptor().map_err(e("descriptor"))?,
                forward: None,
                backward_data: None,
            };
            // SAFETY: fresh descriptors, set once with valid dimensions.
            unsafe {
                r::set_tensor4d_descriptor(plan.x, format, f32t, [n, c, h, w])
                    .map_err(e("input descriptor"))?;
                r::set_tensor4d_descriptor(plan.y, format, f32t, [n, k, oh, ow])
                    .map_err(e("output descriptor"))?;
                r::set_filter4d_descriptor(plan.w, f32t, format, [k, c, kh, kw])
                    .map_err(e("filter descriptor"))?;
                r::set_convolution2d_descriptor(
                    plan.conv,
                    pad,
                    pad,
                    stride,
                    stride,
                    1,
                    1,
                    sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
                    f32t,
                )
                .map_err(e("convolution descriptor"))?;
            }
            slot.insert(plan);
        }
        Ok(plans.get_mut(&key).expect("inserted above"))
    }

    /// The algorithm and workspace for one direction of a shape, chosen by
    /// [`crate::conv_choice`]'s rule with `calls` (see [`AlgorithmCalls`]) and kept in `slot`.
    ///
    /// Sets `conv`'s math type for each of `calls` (the search's, or the algorithm's for its
    /// workspace: the other direction's call may have left its own there) and, before it
    /// returns, the chosen algorithm's, for the convolution to run in.
    ///
    /// # Safety
    /// `conv` is the plan's live descriptor, used by this thread alone (under the plans' lock).
    unsafe fn algorithm<A: AlgorithmId + std::fmt::Debug>(
        &self,
        runtime: &dyn Runtime,
        (p, options, direction): (&Conv2dParams, ConvOptions, Direction),
        (conv, slot): (
            sys::cudnnConvolutionDescriptor_t,
            &mut Option<Chosen<Algorithm<A>>>,
        ),
        calls: AlgorithmCalls<
            impl FnOnce(*mut RawResult, &mut i32) -> cudnnStatus_t,
            impl FnOnce(*mut RawResult, &mut i32) -> cudnnStatus_t,
            impl FnOnce(A, &mut usize) -> cudnnStatus_t,
        >,
    ) -> GpuResult<(Algorithm<A>, usize)> {
        // Only formatted on a new choice: this runs for every convolution of every iteration.
        let what = || format!("{direction} {p:?}");
        let tf32 = options.tf32;
        let choice = (direction, p);
        // SAFETY (every set_math below): as the caller guarantees.
        let searched = || check("math type", unsafe { set_math(conv, Math::searched(tf32)) });
        let measure = || {
            searched()?;
            let results = ranked(runtime, AlgorithmSearch::Measured, choice, calls.search)?;
            choose(&results, &what(), tf32)
        };
        let heuristic = || {
            let what = format!("{} (heuristic)", what());
            let results = searched().and_then(|()| {
                ranked(
                    runtime,
                    AlgorithmSearch::Heuristic,
                    choice,
                    calls.heuristics,
                )
            });
            logged_heuristic(results.and_then(|r| choose(&r, &what, tf32)), &what)
        };
        let workspace_of = |a: Algorithm<A>| {
            let mut bytes = 0;
            let ok = cudnnStatus_t::CUDNN_STATUS_SUCCESS;
            let fits = unsafe { set_math(conv, a.math) } == ok
                && (calls.workspace)(a.algo, &mut bytes) == ok
                && bytes <= WORKSPACE_LIMIT;
            fits.then_some(bytes)
        };
        let key = ChoiceKey {
            p: *p,
            tf32,
            layout: options.layout,
            direction,
        };
        let ways = (measure, heuristic, workspace_of);
        let (chosen, workspace) = choose_once(slot, options.search, (&self.cache, &key), ways)?;
        // SAFETY: as the caller guarantees.
        check("math type", unsafe { set_math(conv, chosen.math) })?;
        Ok((chosen, workspace))
    }

    /// A workspace of at least `bytes`, grown (never shrunk) as needed.
    fn workspace(&self, runtime: &dyn Runtime, bytes: usize) -> GpuResult<(DevicePtr, usize)> {
        let mut ws = self.workspace.lock().map_err(|_| "cuDNN state poisoned")?;
        if bytes > ws.1 {
            if ws.1 > 0 {
                // SAFETY: our own allocation; stream order makes later work wait for it.
                unsafe { runtime.free(ws.0) };
            }
            *ws = (runtime.alloc(bytes)?, bytes);
        }
        Ok(*ws)
    }

    /// Releases the workspace (between image scales).
    pub fn release(&self, runtime: &dyn Runtime) {
        if let Ok(mut ws) = self.workspace.lock() {
            if ws.1 > 0 {
                // SAFETY: our own allocation, not used after this.
                unsafe { runtime.free(ws.0) };
                *ws = (0, 0);
            }
        }
    }
}

impl Drop for Cudnn {
    fn drop(&mut self) {
        if let Ok(plans) = self.plans.get_mut() {
            for plan in plans.values() {
                // SAFETY: descriptors made in `plan`, destroyed once.
                unsafe {
                    let _ = cudarc::cudnn::result::destroy_tensor_descriptor(plan.x);
                    let _ = cudarc::cudnn::result::destroy_tensor_descriptor(plan.y);
                    let _ = cudarc::cudnn::result::destroy_filter_descriptor(plan.w);
                    let _ = cudarc::cudnn::result::destroy_convolution_descriptor(plan.conv);
                }
            }
        }
        // SAFETY: the handle is ours and no longer used.
        let _ = unsafe { cudarc::cudnn::result::destroy_handle(self.handle) };
    }
}

impl ConvEngine for Cudnn {
    fn describe(&self) -> String {
        describe_version(self.version)
    }

    unsafe fn forward(
        &self,
        runtime: &dyn Runtime,
        p: &Conv2dParams,
        options: ConvOptions,
        (x, w, y): (DevicePtr, DevicePtr, DevicePtr),
        accumulate: bool,
    ) -> GpuResult<()> {
        let mut plans = self.plans.lock().map_err(|_| "cuDNN state poisoned")?;
        let plan = self.plan(&mut plans, p, options)?;
        let (x_desc, w_desc, conv, y_desc, h) = (plan.x, plan.w, plan.conv, plan.y, self.handle);
        // SAFETY (the three calls): valid descriptors; cuDNN writes at most SEARCHED results
        // (RawResult has their layout). The search runs each algorithm on scratch memory of
        // its own; the heuristics and the workspace query run nothing.
        let calls = AlgorithmCalls {
            search: |out: *mut RawResult, count: &mut i32| unsafe {
                sys::cudnnFindConvolutionForwardAlgorithm(
                    h,
                    x_desc,
                    w_desc,
                    conv,
                    y_desc,
                    SEARCHED as i32,
                    count,
                    out.cast(),
                )
            },
            heuristics: |out: *mut RawResult, count: &mut i32| unsafe {
                sys::cudnnGetConvolutionForwardAlgorithm_v7(
                    h,
                    x_desc,
                    w_desc,
                    conv,
                    y_desc,
                    SEARCHED as i32,
                    count,
                    out.cast(),
                )
            },
            workspace: |algo, bytes: &mut usize| unsafe {
                sys::cudnnGetConvolutionForwardWorkspaceSize(
                    h, x_desc, w_desc, conv, y_desc, algo, bytes,
                )
            },
        };
        let how = (p, options, Direction::Forward);
        // SAFETY: the plan's descriptor, under the plans' lock.
        let (chosen, need) =
            unsafe { self.algorithm(runtime, how, (conv, &mut plan.forward), calls)? };
        let (ws, ws_bytes) = self.workspace(runtime, need)?;
        // β = 1 adds into y (a convolution split into groups of input channels).
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
        // Timed here, not around the whole call, so the search above is not counted twice.
        crate::profile::timed(
            runtime,
            || format!("cudnn forward {}", crate::profile::conv_name(p)),
            || {
                // SAFETY: the caller guarantees x, w, y cover the shapes in the descriptors;
                // the workspace has `need` bytes.
                check("forward convolution", unsafe {
                    sys::cudnnConvolutionForward(
                        self.handle,
                        &alpha as *const f32 as *const c_void,
                        plan.x,
                        x as *const c_void,
                        plan.w,
                        w as *const c_void,
                        plan.conv,
                        chosen.algo,
                        ws as *mut c_void,
                        ws_bytes,
                        &beta as *const f32 as *const c_void,
                        plan.y,
                        y as *mut c_void,
                    )
                })
            },
        )
    }

    unsafe fn backward_data(
        &self,
        runtime: &dyn Runtime,
        p: &Conv2dParams,
        options: ConvOptions,
        (dy, w, dx): (DevicePtr, DevicePtr, DevicePtr),
        accumulate: bool,
    ) -> GpuResult<()> {
        let mut plans = self.plans.lock().map_err(|_| "cuDNN state poisoned")?;
        let plan = self.plan(&mut plans, p, options)?;
        let (x_desc, w_desc, conv, y_desc, h) = (plan.x, plan.w, plan.conv, plan.y, self.handle);
        // SAFETY (the three calls): as in `forward`.
        let calls = AlgorithmCalls {
            search: |out: *mut RawResult, count: &mut i32| unsafe {
                sys::cudnnFindConvolutionBackwardDataAlgorithm(
                    h,
                    w_desc,
                    y_desc,
                    conv,
                    x_desc,
                    SEARCHED as i32,
                    count,
                    out.cast(),
                )
            },
            heuristics: |out: *mut RawResult, count: &mut i32| unsafe {
                sys::cudnnGetConvolutionBackwardDataAlgorithm_v7(
                    h,
                    w_desc,
                    y_desc,
                    conv,
                    x_desc,
                    SEARCHED as i32,
                    count,
                    out.cast(),
                )
            },
            workspace: |algo, bytes: &mut usize| unsafe {
                sys::cudnnGetConvolutionBackwardDataWorkspaceSize(
                    h, w_desc, y_desc, conv, x_desc, algo, bytes,
                )
            },
        };
        let how = (p, options, Direction::BackwardData);
        // SAFETY: the plan's descriptor, under the plans' lock.
        let (chosen, need) =
            unsafe { self.algorithm(runtime, how, (conv, &mut plan.backward_data), calls)? };
        let (ws, ws_bytes) = self.workspace(runtime, need)?;
        // β = 1 adds into dx (another use's gradient, or another output group's part); with
        // β = 0 cuDNN does not read dx.
        let (alpha, beta) = (1.0f32, if accumulate { 1.0f32 } else { 0.0 });
        crate::profile::timed(
            runtime,
            || format!("cudnn backward-data {}", crate::profile::conv_name(p)),
            || {
                // SAFETY: as in `forward`.
                check("backward-data convolution", unsafe {
                    sys::cudnnConvolutionBackwardData(
                        self.handle,
                        &alpha as *const f32 as *const c_void,
                        plan.w,
                        w as *const c_void,
                        plan.y,
                        dy as *const c_void,
                        plan.conv,
                        chosen.algo,
                        ws as *mut c_void,
                        ws_bytes,
                        &beta as *const f32 as *const c_void,
                        plan.x,
                        dx as *mut c_void,
                    )
                })
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{choose, found, Algorithm, Found, Math, RawResult, WORKSPACE_LIMIT};

    /// A result named `algo`, successful, with no workspace, deterministic and f32.
    fn result(algo: u32) -> Found<u32> {
        Found {
            ok: true,
            memory: 0,
            algo,
            deterministic: true,
            math: Some(Math::Fma),
        }
    }

    #[test]
    fn f32_takes_the_fastest_deterministic_f32_algorithm() {
        // Fastest first: a failure, one over the workspace limit, a tensor-core one, a
        // nondeterministic one, then the one f32 should take, then a slower one.
        let results = [
            Found {
                ok: false,
                ..result(0)
            },
            Found {
                memory: WORKSPACE_LIMIT + 1,
                ..result(1)
            },
            Found {
                math: Some(Math::TensorOp),
                ..result(2)
            },
            Found {
                deterministic: false,
                ..result(4)
            },
            result(5),
            result(6),
        ];
        assert_eq!(choose(&results, "test", false).unwrap().0.algo, 5);
        // TF32 allows tensor cores.
        assert_eq!(choose(&results, "test", true).unwrap().0.algo, 2);
    }

    #[test]
    fn an_algorithm_runs_in_the_math_type_it_was_measured_in_and_f32_only_in_fma() {
        let chosen = |math, tf32| {
            let results = [Found {
                math,
                memory: 96,
                ..result(3)
            }];
            choose(&results, "test", tf32).unwrap()
        };
        let tensor_op = Algorithm {
            algo: 3,
            math: Math::TensorOp,
        };
        assert_eq!(chosen(Some(Math::TensorOp), true), (tensor_op, 96));
        assert_eq!(chosen(Some(Math::Fma), true).0.math, Math::Fma);
        assert_eq!(chosen(Some(Math::Default), true).0.math, Math::Default);
        // One nst does not run (f16 conversion, or new): the descriptor's own, DEFAULT.
        assert_eq!(chosen(None, true).0.math, Math::Default);
        // f32 never lets cuDNN use tensor cores, whatever the result says.
        for math in [Some(Math::TensorOp), Some(Math::Default), None] {
            assert_eq!(chosen(math, false).0.math, Math::Fma);
        }
    }

    #[test]
    fn raw_results_are_read_as_numbers() {
        use super::cudnnMathType_t as CudnnMath;
        use super::sys::cudnnConvolutionFwdAlgo_t as Fwd;
        let raw = |algo, status, determinism, math: u32| RawResult {
            algo,
            status,
            memory: 64,
            determinism,
            math,
            ..Default::default()
        };
        let results = [
            raw(1, 0, 1, CudnnMath::CUDNN_FMA_MATH as u32),
            // An algorithm number this cuDNN added: left out.
            raw(8, 0, 1, 3),
            // A math type this cuDNN added: kept, but not one nst runs in (nor f32).
            raw(6, 9, 0, 7),
            raw(0, 0, 0, CudnnMath::CUDNN_TENSOR_OP_MATH as u32),
            raw(2, 0, 1, CudnnMath::CUDNN_DEFAULT_MATH as u32),
            raw(
                3,
                0,
                1,
                CudnnMath::CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION as u32,
            ),
        ];
        let f = found::<Fwd>(&results);
        let summary: Vec<_> = f
            .iter()
            .map(|r| {
                let tensor_cores = r.tensor_cores();
                (
                    r.algo as u32,
                    r.ok,
                    r.deterministic,
                    r.math,
                    tensor_cores,
                    r.memory,
                )
            })
            .collect();
        assert_eq!(
            summary,
            [
                (1, true, true, Some(Math::Fma), false, 64),
                (6, false, false, None, true, 64),
                (0, true, false, Some(Math::TensorOp), true, 64),
                (2, true, true, Some(Math::Default), false, 64),
                (3, true, true, None, true, 64),
            ]
        );
    }

    #[test]
    fn algorithm_numbers_are_cudnns_and_only_those() {
        use super::{sys, AlgorithmId};
        type Fwd = sys::cudnnConvolutionFwdAlgo_t;
        type Bwd = sys::cudnnConvolutionBwdDataAlgo_t;
        for id in 0..8 {
            assert_eq!(Fwd::from_id(id).map(Fwd::id), Some(id));
        }
        for id in 0..6 {
            assert_eq!(Bwd::from_id(id).map(Bwd::id), Some(id));
        }
        // The enums' COUNT entries are not algorithms.
        assert_eq!(Fwd::from_id(8), None);
        assert_eq!(Bwd::from_id(6), None);
        assert_eq!(Fwd::from_id(u32::MAX), None);
        assert_eq!(
            Fwd::from_id(1),
            Some(Fwd::CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM)
        );
        // With its math type: cuDNN's number (FMA is 3) in the high half.
        let pair = Algorithm {
            algo: Bwd::CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,
            math: Math::Fma,
        };
        assert_eq!(pair.id(), 3 << 16 | 1);
        assert_eq!(Algorithm::<Bwd>::from_id(pair.id()), Some(pair));
        for math in Math::ALL {
            let algo = Fwd::CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING;
            let id = Algorithm { algo, math }.id();
            assert_eq!(
                Algorithm::<Fwd>::from_id(id),
                Some(Algorithm { algo, math })
            );
        }
        // f16 conversion (2) and unknown math types are never read back.
        assert_eq!(Algorithm::<Bwd>::from_id(2 << 16 | 1), None);
        assert_eq!(Algorithm::<Bwd>::from_id(9 << 16 | 1), None);
    }

    #[test]
    fn falls_back_when_no_algorithm_meets_a_preference() {
        let nondeterministic = [Found {
            deterministic: false,
            memory: 64,
            ..result(7)
        }];
        let fma7 = Algorithm {
            algo: 7,
            math: Math::Fma,
        };
        assert_eq!(
            choose(&nondeterministic, "test", false).unwrap(),
            (fma7, 64)
        );
        let only_tensor_cores = [Found {
            math: Some(Math::TensorOp),
            ..result(8)
        }];
        // f32 still runs it, in FMA math.
        let f32_pick = choose(&only_tensor_cores, "test", false).unwrap().0;
        assert_eq!((f32_pick.algo, f32_pick.math), (8, Math::Fma));
        let none = [Found {
            ok: false,
            ..result(9)
        }];
        let e = choose(&none, "forward", false).unwrap_err();
        assert!(e.contains("no forward algorithm"), "{e}");
    }
}
