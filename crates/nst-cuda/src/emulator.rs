//! [`Runtime`] without a GPU: `kernels.cu` compiled as C++ for the host and run there, exactly
//! as written, so everything above the runtime seam runs and is tested on any machine.
//!
//! - **Kernels**: the first [`Emulator::new`] of a process compiles `host/launch.cpp` (which
//!   includes `host/cuda_host.h` and `src/kernels.cu`) with `g++ -std=c++20` into a shared
//!   library in the temporary directory, named by a hash of the sources so later processes
//!   reuse it, and loads it. `nst_launch` runs a kernel with cuLaunchKernel's argument
//!   convention: each block as `blockDim.x` threads with a `std::barrier` for
//!   `__syncthreads`, blocks one after another, launches one at a time like one stream.
//!   Every kernel has a grid-stride loop, so the emulator shrinks launches to at most
//!   [`MAX_BLOCKS`] blocks of [`MAX_THREADS`] threads and still covers every element with the
//!   same code. `NST_EMULATOR_FULL_BLOCKS=1` keeps the blocks as large as asked (the GPU's
//!   256 threads, 8 warps), about 10 times slower: the sanitizer reruns use it. The threads
//!   are started once and each woken through its own semaphore for a block: starting 64
//!   threads a launch made nst-tensor's tests take 77 s on this 2-core machine, one
//!   condition variable waking them all 18 s, the semaphores 6 s.
//! - **Memory**: "device pointers" are host addresses of 8-byte-aligned allocations, each
//!   followed by guard words that [`Runtime::free`] checks: a kernel writing past the end of
//!   a buffer fails loudly instead of silently corrupting a neighbour, as it could on a GPU.
//! - **Undefined behaviour**: the kernels are compiled with `-fsanitize=undefined` and no
//!   recovery, so an out-of-bounds index into a `__shared__` array, a signed overflow in an
//!   index or a misaligned access aborts the test with the line (checked by planting an
//!   index past a reduction's shared array: "index 256 out of bounds").
//! - **Out-of-bounds accesses and data races** ([`Sanitizer`], `NST_EMULATOR_SANITIZER`):
//!   the kernels can also be compiled with AddressSanitizer or ThreadSanitizer, for a
//!   process that has the sanitizer's runtime preloaded (`LD_PRELOAD`; a Rust test process
//!   cannot `dlopen` it later). Under ASan the guard words are poisoned, so a kernel that
//!   reads past a device buffer is reported too, not only one that writes there. Under TSan,
//!   two threads of a block touching the same memory without a `__syncthreads` or
//!   `__syncwarp` between them are a reported race, whatever order they happened to run in:
//!   CUDA's `compute-sanitizer --tool racecheck`, on the CPU. nst-cuda's kernel tests rerun
//!   themselves under both (`tests/common/mod.rs`).
//! - **cuBLAS**: [`Sgemm`] calls are executed with cuBLAS's column-major semantics by
//!   nst-cpu's strided GEMM (fast enough to run VGG-19 through the emulator in tests).
//!
//! Not emulated: warp lockstep (no kernel relies on it), PTX code generation (NVRTC compiles
//! the same source in CI), cuDNN. Needs `g++` with C++20 (`<barrier>`, GCC ≥ 11).

use crate::algorithm_cache::AlgorithmCache;
use crate::blas::{to_tf32, Sgemm};
use crate::conv_choice::{self, choose_once, AlgorithmId, ChoiceKey, Chosen, Direction};
use crate::runtime::{Arg, ConvEngine, ConvOptions, DevicePtr, GpuResult, KernelParams, Runtime};
use nst_cpu::conv;
use nst_cpu::gemm::{gemm_strided, MatLayout};
use nst_params::{AlgorithmSearch, Conv2dParams, ConvAlgorithm, Layout};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_uint, c_void, CString};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

/// Most blocks one emulated launch runs (grid-stride loops cover the rest).
pub const MAX_BLOCKS: u32 = 2;
/// Most threads per emulated block (a power of two, as the reductions need).
pub const MAX_THREADS: u32 = 32;

/// Guard words after each allocation, and the value they hold.
const GUARD_WORDS: usize = 4;
const GUARD: u64 = 0x5afe_9a4d_5afe_9a4d;

const SOURCES: [(&str, &str); 3] = [
    ("host/cuda_host.h", include_str!("../host/cuda_host.h")),
    ("host/launch.cpp", include_str!("../host/launch.cpp")),
    ("src/kernels.cu", include_str!("kernels.cu")),
];

type LaunchFn = unsafe extern "C" fn(*const c_char, c_uint, c_uint, *mut *mut c_void) -> c_int;

/// The compiled kernels, loaded once per process.
struct Library {
    lib: libloading::Library,
    launch: LaunchFn,
}

fn library() -> GpuResult<&'static Library> {
    static LIBRARY: OnceLock<GpuResult<Library>> = OnceLock::new();
    LIBRARY
        .get_or_init(|| {
            let path = compile()?;
            // SAFETY: our own library, just compiled from the sources above; its static
            // initialisers only build the kernel table.
            let lib = unsafe { libloading::Library::new(&path) }.map_err(|e| {
                let hint = match Sanitizer::from_env().ok().and_then(|s| s.runtime_library()) {
                    Some(runtime) => format!(" ({runtime} must be in LD_PRELOAD)"),
                    None => String::new(),
                };
                format!("cannot load the emulated kernels{hint}: {e}")
            })?;
            // SAFETY: launch.cpp defines nst_launch with exactly this signature.
            let launch = unsafe { lib.get::<LaunchFn>(b"nst_launch\0").map(|f| *f) }
                .map_err(|e| format!("the emulated kernels lack nst_launch: {e}"))?;
            Ok(Library { lib, launch })
        })
        .as_ref()
        .map_err(|e| e.clone())
}

/// FNV-1a of the sources and flags: the library's file name, so a changed kernel recompiles.
fn source_hash(flags: &[&str]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    let texts = SOURCES.iter().map(|(_, t)| *t).chain(flags.iter().copied());
    for byte in texts.flat_map(|t| t.bytes().chain([0])) {
        h = (h ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Compiles the kernels for the host (or finds them compiled by an earlier process).
fn compile() -> GpuResult<PathBuf> {
    let flags: [&str; 9] = [
        Sanitizer::from_env()?.flag(),
        "-fno-sanitize-recover=undefined",
        "-std=c++20",
        "-O2",
        "-shared",
        "-fPIC",
        "-pthread",
        "-Wall",
        "-Werror",
    ];
    let dir = std::env::temp_dir().join(format!("nst-cuda-emulator-{:016x}", source_hash(&flags)));
    let lib = dir.join("libnst_kernels_host.so");
    if lib.exists() {
        return Ok(lib);
    }
    let write = |rel: &str, text: &str| -> std::io::Result<()> {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
        std::fs::write(path, text)
    };
    for (rel, text) in SOURCES {
        write(rel, text).map_err(|e| format!("cannot write the emulator's sources: {e}"))?;
    }
    // Compile to a name of our own, then rename: test processes racing here each finish
    // with a complete library.
    let partial = dir.join(format!("partial-{}.so", std::process::id()));
    let out = std::process::Command::new("g++")
        .args(flags)
        .arg("-o")
        .arg(&partial)
        .arg(dir.join("host/launch.cpp"))
        .output()
        .map_err(|e| format!("the CUDA emulator needs g++ (C++20): {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "g++ could not compile the emulated kernels: {}",
            String::from_utf8_lossy(&out.stderr).replace('\n', " ")
        ));
    }
    std::fs::rename(&partial, &lib).map_err(|e| format!("cannot place the emulator: {e}"))?;
    Ok(lib)
}

/// The sanitizers the emulated kernels can be compiled with, chosen by
/// `NST_EMULATOR_SANITIZER` (`address`, `thread`; unset: UBSan only). UBSan is always on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sanitizer {
    /// UndefinedBehaviorSanitizer alone (linked into the kernels' library: nothing to preload).
    Undefined,
    /// AddressSanitizer and UBSan: reads and writes out of bounds, guard words included.
    Address,
    /// ThreadSanitizer and UBSan: data races between the threads of a block.
    Thread,
}

impl Sanitizer {
    /// The variable that chooses it.
    pub const VARIABLE: &'static str = "NST_EMULATOR_SANITIZER";

    /// The one `NST_EMULATOR_SANITIZER` asks for; an unknown value is an error.
    pub fn from_env() -> GpuResult<Sanitizer> {
        match std::env::var(Self::VARIABLE).as_deref() {
            Err(_) | Ok("") | Ok("undefined") => Ok(Sanitizer::Undefined),
            Ok("address") => Ok(Sanitizer::Address),
            Ok("thread") => Ok(Sanitizer::Thread),
            Ok(other) => Err(format!(
                "{}={other}: expected address, thread or undefined",
                Self::VARIABLE
            )),
        }
    }

    /// Its value of `NST_EMULATOR_SANITIZER`.
    pub fn name(self) -> &'static str {
        match self {
            Sanitizer::Undefined => "undefined",
            Sanitizer::Address => "address",
            Sanitizer::Thread => "thread",
        }
    }

    /// The runtime library a process must preload (`LD_PRELOAD`) to load kernels compiled
    /// with it, as g++ names it (`g++ -print-file-name=` gives its path).
    pub fn runtime_library(self) -> Option<&'static str> {
        match self {
            Sanitizer::Undefined => None,
            Sanitizer::Address => Some("libasan.so"),
            Sanitizer::Thread => Some("libtsan.so"),
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Sanitizer::Undefined => "-fsanitize=undefined",
            Sanitizer::Address => "-fsanitize=address,undefined",
            Sanitizer::Thread => "-fsanitize=thread,undefined",
        }
    }
}

/// AddressSanitizer's manual poisoning, where its runtime is in the process: `poison`
/// makes `len` bytes at `ptr` unaddressable to instrumented code (the kernels), or
/// addressable again. Does nothing without ASan.
fn asan_mark(ptr: *const u8, len: usize, poison: bool) {
    type Mark = unsafe extern "C" fn(*const u8, usize);
    static MARKS: OnceLock<Option<(Mark, Mark)>> = OnceLock::new();
    let marks = MARKS.get_or_init(|| {
        if Sanitizer::from_env() != Ok(Sanitizer::Address) {
            return None;
        }
        let this = libloading::os::unix::Library::this();
        // SAFETY: ASan's public interface (sanitizer/asan_interface.h) declares both as
        // `void f(void const volatile *addr, size_t size)`. The process never unloads its
        // preloaded runtime, so leaking `this` keeps the pointers valid.
        let marks = unsafe {
            let poison = this.get::<Mark>(b"__asan_poison_memory_region\0").ok()?;
            let unpoison = this.get::<Mark>(b"__asan_unpoison_memory_region\0").ok()?;
            (*poison, *unpoison)
        };
        std::mem::forget(this);
        Some(marks)
    });
    if let Some((poison_fn, unpoison_fn)) = marks {
        // SAFETY: callers pass a range inside one live allocation of theirs.
        unsafe { (if poison { poison_fn } else { unpoison_fn })(ptr, len) }
    }
}

/// Whether the emulator can run here (compiles it on first use), or why not.
pub fn available() -> GpuResult<()> {
    library().map(|_| ())
}

/// The kernels the compiled library can launch, in its table's order (to check against
/// [`crate::kernels::KERNEL_NAMES`]).
pub fn kernel_names() -> GpuResult<Vec<String>> {
    let lib = library()?;
    // SAFETY: launch.cpp defines both symbols with these signatures; names are static C
    // strings.
    unsafe {
        let count = lib
            .lib
            .get::<unsafe extern "C" fn() -> c_int>(b"nst_kernel_count\0")
            .map_err(|e| e.to_string())?;
        let name = lib
            .lib
            .get::<unsafe extern "C" fn(c_int) -> *const c_char>(b"nst_kernel_name\0")
            .map_err(|e| e.to_string())?;
        Ok((0..count())
            .map(|i| {
                std::ffi::CStr::from_ptr(name(i))
                    .to_string_lossy()
                    .into_owned()
            })
            .collect())
    }
}

/// One emulated allocation: its words (data, then guard words) and its size in bytes.
struct Allocation {
    words: Box<[u64]>,
    bytes: usize,
}

/// The host-side CUDA runtime. See the module docs.
///
/// Its "device memory" is limited only by the host's, or by `NST_EMULATOR_MEMORY_LIMIT`
/// (bytes), read when it is made: a small limit is how out-of-memory handling is tested
/// without a GPU. `NST_EMULATOR_CONV_LIBRARY=1` gives [`Emulator::new`] the stand-in
/// convolution library of [`Emulator::with_library_convolutions`] (how the whole CLI is
/// tested on the path a GPU with cuDNN takes).
#[derive(Default)]
pub struct Emulator {
    limit: Option<u64>,
    /// Whether it offers a convolution library (as cuDNN on a GPU), emulated by nst-cpu.
    library_convolutions: bool,
    /// The most values a tensor of one library call may have (cuDNN's 2³¹ − 1 unless
    /// `NST_EMULATOR_LIBRARY_MAX_ELEMENTS` says less: how tests make the split of a large
    /// convolution into channel groups happen at small sizes).
    library_max_elements: usize,
    /// The stand-in library's algorithm choices, made by cuDNN's rule
    /// ([`crate::conv_choice`]): there is one algorithm, but the choices are timed and
    /// counted in the profile as on a GPU.
    conv_choices: Mutex<HashMap<ChoiceKey, Option<Chosen<()>>>>,
    /// Its measured choices kept on disk, as cuDNN's are: only where `NST_CACHE_DIR` names a
    /// folder (tests), never in the user's cache.
    conv_cache: AlgorithmCache,
    /// Whether launches run blocks of as many threads as asked (`NST_EMULATOR_FULL_BLOCKS=1`),
    /// not at most [`MAX_THREADS`].
    full_blocks: bool,
    /// Live allocations by address.
    allocations: Mutex<HashMap<DevicePtr, Allocation>>,
    in_use: AtomicU64,
    peak: AtomicU64,
}

impl Emulator {
    /// An emulated device; compiles the kernels on the first call of the process. Its
    /// convolutions are the im2col kernels, unless `NST_EMULATOR_CONV_LIBRARY=1`.
    pub fn new() -> GpuResult<Arc<Emulator>> {
        Self::with(std::env::var("NST_EMULATOR_CONV_LIBRARY").is_ok_and(|v| v == "1"))
    }

    /// An emulated device that also has a convolution library, as a GPU with cuDNN has
    /// (emulated by nst-cpu's convolution): tests the code that calls one.
    pub fn with_library_convolutions() -> GpuResult<Arc<Emulator>> {
        Self::with(true)
    }

    /// [`Emulator::with_library_convolutions`] whose library takes at most `max_elements`
    /// values a tensor (cuDNN: 2³¹ − 1), so that [`crate::Gpu`] splits larger convolutions
    /// into channel groups at test sizes.
    pub fn with_library_limited_to(max_elements: usize) -> GpuResult<Arc<Emulator>> {
        Self::with_limit(true, Some(max_elements.max(1)))
    }

    fn with(library_convolutions: bool) -> GpuResult<Arc<Emulator>> {
        Self::with_limit(library_convolutions, None)
    }

    /// An emulator; its library's limit is `library_max_elements`, else
    /// `NST_EMULATOR_LIBRARY_MAX_ELEMENTS`, else cuDNN's.
    fn with_limit(
        library_convolutions: bool,
        library_max_elements: Option<usize>,
    ) -> GpuResult<Arc<Emulator>> {
        available()?;
        let limit = match std::env::var("NST_EMULATOR_MEMORY_LIMIT") {
            Ok(v) => Some(v.trim().parse::<u64>().map_err(|_| {
                format!("NST_EMULATOR_MEMORY_LIMIT must be a number of bytes, not {v:?}")
            })?),
            Err(_) => None,
        };
        let from_env = std::env::var("NST_EMULATOR_LIBRARY_MAX_ELEMENTS");
        let library_max_elements = match (library_max_elements, from_env) {
            (Some(n), _) => n,
            (None, Ok(v)) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|&n| n > 0)
                .ok_or_else(|| {
                    format!("NST_EMULATOR_LIBRARY_MAX_ELEMENTS must be a positive count, not {v:?}")
                })?,
            (None, Err(_)) => i32::MAX as usize,
        };
        let cache_dir = std::env::var_os("NST_CACHE_DIR").filter(|d| !d.is_empty());
        Ok(Arc::new(Emulator {
            limit,
            library_convolutions,
            library_max_elements,
            conv_cache: match cache_dir {
                Some(dir) => AlgorithmCache::open(Some(Path::new(&dir)), "emulated library"),
                None => AlgorithmCache::none(),
            },
            full_blocks: std::env::var("NST_EMULATOR_FULL_BLOCKS").is_ok_and(|v| v == "1"),
            ..Default::default()
        }))
    }

    /// Host slice over device memory of this emulator.
    ///
    /// # Safety
    /// `ptr` points at `len` live f32 values of an allocation of this emulator, not aliased
    /// mutably elsewhere for the slice's life.
    unsafe fn floats<'a>(ptr: DevicePtr, len: usize) -> &'a [f32] {
        // SAFETY: as the caller guarantees.
        unsafe { std::slice::from_raw_parts(ptr as *const f32, len) }
    }

    /// Runs kernel `name` on `grid` blocks of `block` threads as asked (CUDA's 1 to 1024
    /// threads a block), where [`Runtime::launch`] runs at most [`MAX_BLOCKS`] blocks of
    /// [`MAX_THREADS`]: for tests of code that depends on the block's shape, such as
    /// `__syncwarp` in each of a block's warps.
    ///
    /// # Safety
    /// As [`Runtime::launch`]: the arguments match the kernel and cover what it reads and
    /// writes at any grid size.
    pub unsafe fn launch_exactly(
        &self,
        name: &str,
        grid: u32,
        block: u32,
        args: &[Arg],
    ) -> GpuResult<()> {
        let lib = library()?;
        let mut params = KernelParams::new(args);
        let mut pointers = params.pointers();
        let kernel = CString::new(name).map_err(|e| e.to_string())?;
        // SAFETY: the caller guarantees the arguments match the kernel; the pointer array
        // and the values it points at live until the call returns.
        let rc = unsafe { (lib.launch)(kernel.as_ptr(), grid, block, pointers.as_mut_ptr()) };
        match rc {
            0 => Ok(()),
            -2 => Err(format!(
                "{name}: {block} threads a block is not a CUDA block size"
            )),
            _ => Err(format!("no CUDA kernel named {name}")),
        }
    }
}

/// One past the last element index a column-major `rows × cols` operand with leading
/// dimension `ld` touches.
fn extent(rows: usize, cols: usize, ld: usize) -> usize {
    if rows == 0 || cols == 0 {
        0
    } else {
        (cols - 1) * ld + rows
    }
}

impl Runtime for Emulator {
    fn describe(&self) -> String {
        "CUDA emulator (kernels.cu compiled for the host)".into()
    }

    fn alloc(&self, bytes: usize) -> GpuResult<DevicePtr> {
        let in_use = self.in_use.load(Ordering::Relaxed);
        if let Some(limit) = self.limit.filter(|&l| in_use + bytes as u64 > l) {
            return Err(crate::runtime::out_of_memory(
                bytes,
                format!("emulator limit of {limit} bytes, {in_use} in use"),
            ));
        }
        let words = bytes.div_ceil(8);
        let mut block = vec![GUARD; words + GUARD_WORDS].into_boxed_slice();
        // Fresh device memory is garbage, not zeros: NaN patterns catch a kernel that
        // reads what nothing wrote.
        block[..words].fill(0x7fc0_0001_7fc0_0001);
        let ptr = block.as_mut_ptr() as DevicePtr;
        // Under ASan, everything past the buffer's last byte (padding and guard words).
        let end = block.len() * 8;
        asan_mark((ptr as *const u8).wrapping_add(bytes), end - bytes, true);
        self.allocations
            .lock()
            .map_err(|_| "emulator state poisoned".to_string())?
            .insert(
                ptr,
                Allocation {
                    words: block,
                    bytes,
                },
            );
        let now = self.in_use.fetch_add(bytes as u64, Ordering::Relaxed) + bytes as u64;
        self.peak.fetch_max(now, Ordering::Relaxed);
        Ok(ptr)
    }

    unsafe fn free(&self, ptr: DevicePtr) {
        let Ok(mut map) = self.allocations.lock() else {
            return;
        };
        let Some(Allocation {
            words: block,
            bytes,
        }) = map.remove(&ptr)
        else {
            panic!("emulated free of {ptr:#x}, which is not a live allocation");
        };
        drop(map);
        self.in_use.fetch_sub(bytes as u64, Ordering::Relaxed);
        asan_mark(block.as_ptr().cast(), block.len() * 8, false);
        let words = bytes.div_ceil(8);
        // Bytes between the data's end and its last word are padding, not guards.
        if block[words..].iter().any(|&w| w != GUARD) {
            panic!("a kernel wrote past the end of a {bytes}-byte device buffer");
        }
    }

    unsafe fn upload(&self, dst: DevicePtr, src: &[u8]) -> GpuResult<()> {
        // SAFETY: the caller guarantees room for src at dst.
        unsafe { std::ptr::copy_nonoverlapping(src.as_ptr(), dst as *mut u8, src.len()) };
        Ok(())
    }

    unsafe fn download(&self, src: DevicePtr, dst: &mut [u8]) -> GpuResult<()> {
        // SAFETY: the caller guarantees dst.len() bytes at src.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst.as_mut_ptr(), dst.len()) };
        Ok(())
    }

    unsafe fn copy(&self, dst: DevicePtr, src: DevicePtr, bytes: usize) -> GpuResult<()> {
        // SAFETY: the caller guarantees both ranges, which do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(src as *const u8, dst as *mut u8, bytes) };
        Ok(())
    }

    unsafe fn fill_u32(&self, dst: DevicePtr, value: u32, count: usize) -> GpuResult<()> {
        // SAFETY: the caller guarantees 4·count bytes at dst, which is 4-aligned (it is an
        // allocation's start or an f32 inside one).
        unsafe { std::slice::from_raw_parts_mut(dst as *mut u32, count).fill(value) };
        Ok(())
    }

    fn max_grid(&self) -> u32 {
        MAX_BLOCKS
    }

    /// Blocks of at most [`MAX_THREADS`] threads, or, with `NST_EMULATOR_FULL_BLOCKS=1`, of as
    /// many as asked (the GPU's 256: [`crate::gpu`]'s `BLOCK`), so that the threads of several
    /// warps share a block's `__shared__` memory and barriers as on the GPU. That makes every
    /// launch wake 8 times the threads; the sanitizer reruns use it (`tests/common/mod.rs`), so
    /// ThreadSanitizer checks the block shape the GPU runs.
    unsafe fn launch(
        &self,
        name: &'static str,
        grid: u32,
        block: u32,
        args: &[Arg],
    ) -> GpuResult<()> {
        let most_threads = if self.full_blocks { block } else { MAX_THREADS };
        let (grid, block) = (grid.clamp(1, MAX_BLOCKS), block.clamp(1, most_threads));
        // SAFETY: forwarded from the caller.
        unsafe { self.launch_exactly(name, grid, block, args) }
    }

    unsafe fn sgemm(
        &self,
        call: &Sgemm,
        a: DevicePtr,
        b: DevicePtr,
        c: DevicePtr,
    ) -> GpuResult<()> {
        if !call.is_valid() {
            return Err(format!("cuBLAS would reject {call:?}"));
        }
        let (m, n, k) = (call.m, call.n, call.k);
        // op(A) is m×k: stored m×k (column-major, ld lda), or k×m and read transposed.
        let (a_layout, a_len) = if call.trans_a {
            (
                MatLayout {
                    rows: m,
                    cols: k,
                    row_stride: call.lda,
                    col_stride: 1,
                },
                extent(k, m, call.lda),
            )
        } else {
            (
                MatLayout {
                    rows: m,
                    cols: k,
                    row_stride: 1,
                    col_stride: call.lda,
                },
                extent(m, k, call.lda),
            )
        };
        let (b_layout, b_len) = if call.trans_b {
            (
                MatLayout {
                    rows: k,
                    cols: n,
                    row_stride: call.ldb,
                    col_stride: 1,
                },
                extent(n, k, call.ldb),
            )
        } else {
            (
                MatLayout {
                    rows: k,
                    cols: n,
                    row_stride: 1,
                    col_stride: call.ldb,
                },
                extent(k, n, call.ldb),
            )
        };
        let c_layout = MatLayout {
            rows: m,
            cols: n,
            row_stride: 1,
            col_stride: call.ldc,
        };
        let c_len = extent(m, n, call.ldc);
        // SAFETY: the caller guarantees each operand covers its extent; C does not overlap A
        // or B (cuBLAS requires the same).
        unsafe {
            let (a, b) = (Self::floats(a, a_len), Self::floats(b, b_len));
            let c = std::slice::from_raw_parts_mut(c as *mut f32, c_len);
            if call.tf32 {
                // Tensor cores read TF32 operands: round copies, multiply in f32.
                let (a, b): (Vec<f32>, Vec<f32>) = (
                    a.iter().map(|&v| to_tf32(v)).collect(),
                    b.iter().map(|&v| to_tf32(v)).collect(),
                );
                gemm_strided(
                    call.alpha, &a, a_layout, &b, b_layout, call.beta, c, c_layout,
                );
            } else {
                gemm_strided(call.alpha, a, a_layout, b, b_layout, call.beta, c, c_layout);
            }
        }
        Ok(())
    }

    fn synchronize(&self) -> GpuResult<()> {
        Ok(())
    }

    fn conv_engine(&self) -> Option<&dyn ConvEngine> {
        self.library_convolutions.then_some(self as &dyn ConvEngine)
    }

    fn release_cached_memory(&self) {}

    fn available_bytes(&self) -> Option<u64> {
        let in_use = self.in_use.load(Ordering::Relaxed);
        self.limit.map(|limit| limit.saturating_sub(in_use))
    }

    fn peak_bytes(&self) -> Option<u64> {
        Some(self.peak.load(Ordering::Relaxed))
    }
}

/// The convolution library of [`Emulator::with_library_convolutions`]: nst-cpu's im2col
/// convolution with cuDNN's semantics (cross-correlation, no bias; TF32 rounds the operands
/// first). NHWC operands (KRSC weights) are transposed to NCHW around nst-cpu's NCHW
/// convolution, so the layout changes where values lie, never what is computed.
impl ConvEngine for Emulator {
    fn describe(&self) -> String {
        "emulated convolution library".into()
    }

    fn max_elements(&self) -> usize {
        self.library_max_elements
    }

    unsafe fn forward(
        &self,
        runtime: &dyn Runtime,
        p: &Conv2dParams,
        options: ConvOptions,
        (x, w, y): (DevicePtr, DevicePtr, DevicePtr),
        accumulate: bool,
    ) -> GpuResult<()> {
        self.check_library_limit(p)?;
        self.choose_algorithm(runtime, p, options, Direction::Forward)?;
        let tf32 = options.tf32;
        // SAFETY: the caller guarantees the operands cover p's shapes, y apart from x and w.
        let (x, w, y) = unsafe {
            (
                Self::floats(x, p.input_len()),
                Self::floats(w, p.weight_len()),
                std::slice::from_raw_parts_mut(y as *mut f32, p.output_len()),
            )
        };
        let (x, w) = (rounded(x, tf32), rounded(w, tf32));
        let mut out = vec![0.0; p.output_len()];
        match options.layout {
            Layout::Nchw => {
                conv::conv2d_forward(p, ConvAlgorithm::Im2col, &x, &w[..], None, &mut out)
            }
            Layout::Nhwc => {
                let (x, w) = (
                    nchw_of(&x, &input_planes(p)),
                    nchw_of(&w, &weight_planes(p)),
                );
                let mut nchw = vec![0.0; p.output_len()];
                conv::conv2d_forward(p, ConvAlgorithm::Im2col, &x, &w, None, &mut nchw);
                out = nhwc_of(&nchw, &output_planes(p));
            }
        }
        if accumulate {
            y.iter_mut().zip(out).for_each(|(y, v)| *y += v);
        } else {
            y.copy_from_slice(&out);
        }
        Ok(())
    }

    unsafe fn backward_data(
        &self,
        runtime: &dyn Runtime,
        p: &Conv2dParams,
        options: ConvOptions,
        (dy, w, dx): (DevicePtr, DevicePtr, DevicePtr),
        accumulate: bool,
    ) -> GpuResult<()> {
        self.check_library_limit(p)?;
        self.choose_algorithm(runtime, p, options, Direction::BackwardData)?;
        let tf32 = options.tf32;
        // SAFETY: as in `forward`.
        let (dy, w, dx) = unsafe {
            (
                Self::floats(dy, p.output_len()),
                Self::floats(w, p.weight_len()),
                std::slice::from_raw_parts_mut(dx as *mut f32, p.input_len()),
            )
        };
        if !accumulate {
            // β = 0: whatever dx held (fresh device memory is NaN patterns) is not read.
            dx.fill(0.0);
        }
        let (dy, w) = (rounded(dy, tf32), rounded(w, tf32));
        let algo = ConvAlgorithm::Im2col;
        match options.layout {
            Layout::Nchw => conv::conv2d_backward_input_accumulate(p, algo, &dy, &w[..], dx),
            Layout::Nhwc => {
                let (dy, w) = (
                    nchw_of(&dy, &output_planes(p)),
                    nchw_of(&w, &weight_planes(p)),
                );
                let mut grad = vec![0.0; p.input_len()];
                conv::conv2d_backward_input_accumulate(p, algo, &dy, &w, &mut grad);
                for (d, g) in dx.iter_mut().zip(nhwc_of(&grad, &input_planes(p))) {
                    *d += g;
                }
            }
        }
        Ok(())
    }
}

impl Emulator {
    /// Refuses a call with a tensor over the library's limit, as cuDNN does.
    fn check_library_limit(&self, p: &Conv2dParams) -> GpuResult<()> {
        let n = p.largest_len();
        if n > self.library_max_elements {
            return Err(format!(
                "emulated convolution library: a tensor of {n} values is over its limit of {}",
                self.library_max_elements
            ));
        }
        Ok(())
    }

    /// The stand-in library's algorithm choice for a call: as cuDNN chooses (a search or the
    /// heuristics, once per shape, direction and precision), where there is only one.
    fn choose_algorithm(
        &self,
        runtime: &dyn Runtime,
        p: &Conv2dParams,
        options: ConvOptions,
        direction: Direction,
    ) -> GpuResult<()> {
        let mut choices = self
            .conv_choices
            .lock()
            .map_err(|_| "emulator state poisoned")?;
        let key = ChoiceKey {
            p: *p,
            tf32: options.tf32,
            layout: options.layout,
            direction,
        };
        let slot = choices.entry(key).or_default();
        let pick = |how| move || conv_choice::timed(runtime, (how, direction, p), || Ok(((), 0)));
        let ways = (
            pick(AlgorithmSearch::Measured),
            pick(AlgorithmSearch::Heuristic),
            |()| Some(0),
        );
        choose_once(slot, options.search, (&self.conv_cache, &key), ways)?;
        Ok(())
    }
}

/// The stand-in library has one algorithm, number 0.
impl AlgorithmId for () {
    fn id(self) -> u32 {
        0
    }
    fn from_id(id: u32) -> Option<()> {
        (id == 0).then_some(())
    }
}

/// `[batch, channels, pixels]`: `batch` images (or output channels' weights) of `channels`
/// planes of `pixels` values each.
type Planes = [usize; 3];

fn input_planes(p: &Conv2dParams) -> Planes {
    [p.batch, p.in_channels, p.in_h * p.in_w]
}

fn output_planes(p: &Conv2dParams) -> Planes {
    [p.batch, p.out_channels, p.out_h() * p.out_w()]
}

/// The weights as `out_channels` "images" of `in_channels` planes of the kernel's taps: KCRS
/// in NCHW order, KRSC in NHWC order.
fn weight_planes(p: &Conv2dParams) -> Planes {
    [p.out_channels, p.in_channels, p.kernel_h * p.kernel_w]
}

/// NHWC values `v` (`[batch][pixels][channels]`) in NCHW order.
fn nchw_of(v: &[f32], &[batch, channels, pixels]: &Planes) -> Vec<f32> {
    assert_eq!(
        v.len(),
        batch * channels * pixels,
        "NHWC values of another shape"
    );
    let mut out = vec![0.0; v.len()];
    let image = channels * pixels;
    for (src, dst) in v.chunks(image.max(1)).zip(out.chunks_mut(image.max(1))) {
        for p in 0..pixels {
            for c in 0..channels {
                dst[c * pixels + p] = src[p * channels + c];
            }
        }
    }
    out
}

/// NCHW values `v` in NHWC order (the inverse of [`nchw_of`]).
fn nhwc_of(v: &[f32], &[batch, channels, pixels]: &Planes) -> Vec<f32> {
    nchw_of(v, &[batch, pixels, channels])
}

/// The values, rounded to TF32 when asked.
fn rounded(v: &[f32], tf32: bool) -> std::borrow::Cow<'_, [f32]> {
    if tf32 {
        v.iter().map(|&x| to_tf32(x)).collect::<Vec<_>>().into()
    } else {
        v.into()
    }
}
