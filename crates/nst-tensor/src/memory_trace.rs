//! Where the memory peak occurs: a running count of heap bytes, its peak, and what the program
//! was doing when the peak was reached.
//!
//! The counting is done by a global allocator that calls [`allocated`] and [`freed`] — nst's
//! binaries use `nst_tensor::allocator::Allocator` (feature `mimalloc`), which does. What the
//! program is doing is a *phase* that the code sets as it goes: `Objective::new` sets
//! "targets", `Objective::evaluate` "forward", the backward pass sets
//! `backward of OP → [output shape]` before each op's rule, the optimizers set
//! "optimizer step". Without a counting allocator, [`peak`] says so
//! (`None`).
//!
//! The counts are heap bytes in use (what tensors and buffers hold), not resident memory: the
//! difference is what the allocator keeps for reuse.
//!
//! Everything is atomics, so the allocator never allocates or locks. A phase is a static name
//! and up to four dimensions, copied beside the peak when a new peak is reached.
//!
//! ```
//! nst_tensor::memory_trace::set_phase("loading", &[3, 512, 512]);
//! // With nst's counting allocator installed, `peak()` is `Some((bytes, "… → [3, 512, 512]"))`.
//! let _ = nst_tensor::memory_trace::peak();
//! ```

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// A phase: a static name and up to four dimensions. The name's address and length are packed
/// into one atomic word (48 + 16 bits), so a reader never pairs one name's address with
/// another's length; the dimensions may be torn between two phases, which only mislabels a
/// shape.
struct PhaseSlot {
    name: AtomicU64,
    dims: [AtomicUsize; 4],
    rank: AtomicUsize,
}

/// `name` packed (0 when its address or length does not fit, which reads as "unnamed").
fn pack(name: &'static str) -> u64 {
    let (addr, len) = (name.as_ptr() as u64, name.len() as u64);
    if addr >> 48 == 0 && len >> 16 == 0 {
        addr | len << 48
    } else {
        0
    }
}

fn unpack(word: u64) -> Option<&'static str> {
    if word == 0 {
        return None;
    }
    let (addr, len) = (word & ((1 << 48) - 1), (word >> 48) as usize);
    // SAFETY: a non-zero word was made by `pack` from a `&'static str`: this is its address
    // and length, so the bytes are live for the program and valid UTF-8.
    Some(unsafe {
        std::str::from_utf8_unchecked(std::slice::from_raw_parts(addr as *const u8, len))
    })
}

impl PhaseSlot {
    const fn new() -> Self {
        PhaseSlot {
            name: AtomicU64::new(0),
            dims: [const { AtomicUsize::new(0) }; 4],
            rank: AtomicUsize::new(0),
        }
    }

    fn set(&self, name: &'static str, dims: &[usize]) {
        let rank = dims.len().min(4);
        for (slot, &d) in self.dims.iter().zip(dims.iter().take(rank)) {
            slot.store(d, Relaxed);
        }
        self.rank.store(rank, Relaxed);
        self.name.store(pack(name), Relaxed);
    }

    fn copy_from(&self, other: &PhaseSlot) {
        for (a, b) in self.dims.iter().zip(&other.dims) {
            a.store(b.load(Relaxed), Relaxed);
        }
        self.rank.store(other.rank.load(Relaxed), Relaxed);
        self.name.store(other.name.load(Relaxed), Relaxed);
    }

    fn describe(&self) -> Option<String> {
        let name = unpack(self.name.load(Relaxed))?;
        let rank = self.rank.load(Relaxed);
        if rank == 0 {
            return Some(name.to_string());
        }
        let dims: Vec<String> = self.dims[..rank]
            .iter()
            .map(|d| d.load(Relaxed).to_string())
            .collect();
        Some(format!("{name} → [{}]", dims.join(", ")))
    }
}

static PHASE: PhaseSlot = PhaseSlot::new();
static PEAK_PHASE: PhaseSlot = PhaseSlot::new();

/// Sets what the program is doing now (a static name and, e.g., an op's output shape).
pub fn set_phase(name: &'static str, dims: &[usize]) {
    PHASE.set(name, dims);
}

/// Counts an allocation of `bytes` (for a global allocator).
pub fn allocated(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Relaxed) + bytes;
    if live > PEAK.load(Relaxed) {
        PEAK.fetch_max(live, Relaxed);
        PEAK_PHASE.copy_from(&PHASE);
    }
}

/// Counts a release of `bytes` (for a global allocator).
pub fn freed(bytes: usize) {
    LIVE.fetch_sub(bytes, Relaxed);
}

/// The peak so far: heap bytes in use at once, and the phase it was reached in. `None`
/// without a counting global allocator (nothing was ever counted).
pub fn peak() -> Option<(usize, String)> {
    let peak = PEAK.load(Relaxed);
    (peak > 0).then(|| {
        (
            peak,
            PEAK_PHASE
                .describe()
                .unwrap_or_else(|| "before any phase was set".into()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_round_trip_and_the_peak_keeps_its_phase() {
        let slot = PhaseSlot::new();
        assert_eq!(slot.describe(), None);
        slot.set("backward of conv2d", &[1, 64, 20, 18]);
        assert_eq!(
            slot.describe().unwrap(),
            "backward of conv2d → [1, 64, 20, 18]"
        );
        slot.set("forward", &[]);
        assert_eq!(slot.describe().unwrap(), "forward");
        let at_peak = PhaseSlot::new();
        at_peak.copy_from(&slot);
        slot.set("optimizer step", &[3]);
        assert_eq!(at_peak.describe().unwrap(), "forward");
    }
}
