//! A convolution's weights and, optionally, a cache of the transformed kernels its Winograd
//! path multiplies by, kept from one call to the next.
//!
//! Winograd F(4×4, 3×3) multiplies by `U = G g Gᵀ` (36 values per 3×3 kernel; see
//! `winograd.rs`), and the input gradient by the `U` of the flipped kernel. Both depend on the
//! weights alone, not on the image, yet without a cache every call computes them again: in f64
//! with exact divisions, for every (output, input) channel pair, twice per iteration (forward
//! and backward). Keeping them took an iteration (`xtask bench-worker`, VGG-19 to relu5_1,
//! the two builds alternated, two runs each) from 329–331 to 237–243 ms at 256² (about −27%)
//! and from 1048–1095 to 948–949 ms at 512² (−9 … −13%).
//!
//! The cost is memory: 4 bytes × 36 per kernel in each direction, 8× the weights (at most
//! 414 MB for VGG-19 up to relu5_1). [`set_enabled`]`(false)` stops caching (and drops what a
//! cache held at its next use), for runs where memory is tight. A cache gives the same bits as
//! computing afresh: the same function fills it.
//!
//! **Only small convolutions keep their kernels** ([`KEEP_MAX_TILES`]). Transforming one
//! kernel costs about as much as 20 tiles of its product: the cache saved about 90 ms an
//! iteration at 256² (above) for 25.9 M kernel transforms, 3.5 ns each, while a tile's
//! product per channel pair is 36 multiply-adds, 0.18 ns at the GEMM's 400 GFLOP/s. So the
//! transform is about 20 / (tiles + 20) of a layer's products: half of conv5_1's at 256²,
//! under 1% above 2048 tiles. Above that the memory is worth more: at 2048², conv1_1 …
//! conv4_4 (4096 tiles and more) keep nothing, which saves 338 of the 414 MB for about 0.5%
//! of an iteration.
//!
//! Whoever owns a [`KernelCache`] must [`KernelCache::clear`] it whenever the weights it
//! belongs to change (nst-tensor's CPU storage does so on every mutable access).

use crate::system_buffer::SystemBuffer;
use crate::winograd;
use nst_params::{Conv2dParams, ConvAlgorithm};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

static ENABLED: AtomicBool = AtomicBool::new(true);

/// The most output tiles (4×4 pixels, the whole batch) a convolution may have for its
/// transformed kernels to be kept: there the transform is about 1% of its products (see the
/// module docs). 2048 tiles are 32,768 output pixels: a 180² output (45² tiles) keeps its
/// kernels, a 181² one (46²) does not.
pub const KEEP_MAX_TILES: usize = 2048;

/// Whether the transformed kernels of the Winograd convolution `q` are worth their memory.
fn worth_keeping(q: &Conv2dParams) -> bool {
    winograd::tile_count(q) <= KEEP_MAX_TILES
}

/// Turns caching on (the default) or off for the whole process. Off, each call computes its
/// transformed kernels afresh (into reusable scratch) and a cache that held some drops them.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Whether [`KernelCache`]s keep what they compute.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Bytes a [`KernelCache`] holds for the convolution `p` once its forward pass and its input
/// gradient have run by `algo` (36 f32 per channel pair for each that goes by Winograd and
/// has at most [`KEEP_MAX_TILES`] tiles).
pub fn cached_bytes(p: &Conv2dParams, algo: ConvAlgorithm) -> usize {
    let forward = crate::conv::use_winograd(p, algo) && worth_keeping(p);
    let input_gradient =
        crate::conv::winograd_input_gradient(p, algo).is_some_and(|q| worth_keeping(&q));
    (usize::from(forward) + usize::from(input_gradient)) * 4 * winograd::transformed_len(p)
}

/// What transformed kernels were computed from: the convolution's channel counts and the
/// weights' address and length.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Key {
    in_channels: usize,
    out_channels: usize,
    values: (usize, usize),
}

/// Transformed kernels and what they were computed from.
struct Entry {
    key: Key,
    u: Arc<SystemBuffer>,
}

/// One slot per use of the weights: the forward convolution, and the input gradient (a
/// forward convolution with the flipped kernel).
#[derive(Default)]
pub struct KernelCache {
    forward: Mutex<Option<Entry>>,
    input_gradient: Mutex<Option<Entry>>,
}

/// Which use of the weights a transformed kernel serves.
#[derive(Clone, Copy)]
pub(crate) enum Slot {
    Forward,
    InputGradient,
}

impl KernelCache {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Drops every cached kernel (call when the weights change).
    pub fn clear(&mut self) {
        for slot in [&mut self.forward, &mut self.input_gradient] {
            *slot.get_mut().unwrap_or_else(|e| e.into_inner()) = None;
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        [&self.forward, &self.input_gradient]
            .iter()
            .filter_map(|slot| lock(slot).as_ref().map(|e| 4 * e.u.len()))
            .sum()
    }

    /// The transformed kernels of `values` for the Winograd convolution `q` (the forward
    /// shape, or the input gradient as a forward convolution), from the cache or computed by
    /// `compute` (and kept). `None` when caching is disabled or `q` is too large to keep
    /// kernels for; then the cache drops what it held (an earlier, smaller scale's kernels
    /// would otherwise stay through this one's memory peak).
    pub(crate) fn get_or_compute(
        &self,
        slot: Slot,
        values: &[f32],
        q: &Conv2dParams,
        compute: impl FnOnce(&mut [f32]),
    ) -> Option<Arc<SystemBuffer>> {
        if !enabled() || !worth_keeping(q) {
            for held in [&self.forward, &self.input_gradient] {
                *lock(held) = None;
            }
            return None;
        }
        let slot = match slot {
            Slot::Forward => &self.forward,
            Slot::InputGradient => &self.input_gradient,
        };
        // Keyed by the channel counts (the same weights reshaped to other channel counts, a
        // tensor view, transform differently) and by where the values are, so that a cache
        // paired with other weights by mistake computes afresh. (Values changed in place are
        // the owner's to report, by `clear`.)
        let key = Key {
            in_channels: q.in_channels,
            out_channels: q.out_channels,
            values: (values.as_ptr() as usize, values.len()),
        };
        if let Some(e) = lock(slot).as_ref().filter(|e| e.key == key) {
            return Some(e.u.clone());
        }
        // Computed without the lock held: `compute` runs rayon tasks, and a thread waiting
        // for them may run another task that asks this cache for the same slot.
        let mut u = SystemBuffer::zeroed(winograd::transformed_len(q));
        compute(&mut u);
        let u = Arc::new(u);
        *lock(slot) = Some(Entry { key, u: u.clone() });
        Some(u)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A copy starts empty (it would be filled again at its first use).
impl Clone for KernelCache {
    fn clone(&self) -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for KernelCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "KernelCache({} bytes)", self.bytes())
    }
}

/// A convolution's weights `[C_out, C_in, kh, kw]`, with the cache of their transformed
/// kernels where the caller keeps one. Plain slices convert into it (no cache).
#[derive(Clone, Copy)]
pub struct Weights<'a> {
    /// The weights.
    pub values: &'a [f32],
    /// Where their transformed kernels are kept across calls, if anywhere.
    pub cache: Option<&'a KernelCache>,
}

impl<'a> Weights<'a> {
    /// Weights whose transformed kernels are kept in `cache`.
    pub fn cached(values: &'a [f32], cache: &'a KernelCache) -> Self {
        Self {
            values,
            cache: Some(cache),
        }
    }

    /// Runs `f` with the transformed kernels of the Winograd convolution `q` in `slot`: from
    /// the cache, or computed by `compute` (into the cache, or into scratch when there is
    /// none or caching is off).
    pub(crate) fn with_transformed<R>(
        &self,
        slot: Slot,
        q: &Conv2dParams,
        compute: impl Fn(&mut [f32]),
        f: impl FnOnce(&[f32]) -> R,
    ) -> R {
        let len = winograd::transformed_len(q);
        let cached = self
            .cache
            .and_then(|c| c.get_or_compute(slot, self.values, q, &compute));
        match cached {
            Some(u) => f(&u),
            None => crate::scratch::with_scratch(len, |u| {
                compute(u);
                f(u)
            }),
        }
    }
}

impl<'a> From<&'a [f32]> for Weights<'a> {
    fn from(values: &'a [f32]) -> Self {
        Self {
            values,
            cache: None,
        }
    }
}

impl<'a> From<&'a Vec<f32>> for Weights<'a> {
    fn from(values: &'a Vec<f32>) -> Self {
        values.as_slice().into()
    }
}
