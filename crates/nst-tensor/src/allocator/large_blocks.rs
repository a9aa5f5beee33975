//! Blocks of [`MIN_BYTES`] or more: mapped from the OS directly, and on free kept for reuse,
//! but only so far as the blocks live and kept together stay within the most ever live at
//! once.
//!
//! Why: mimalloc, told to keep freed memory ([`super`]), holds each of its arenas at that
//! arena's own high-water mark. At 2048² the 1 GiB activations of conv1_x took an arena each,
//! smaller blocks filled the holes they left, and peak RSS was 4949 MB for a heap peak of
//! 3466 MB (`xtask bench-worker --size 2048 --iters 3`). Returning large blocks to the OS at
//! once (plain `mmap`/`munmap`) brought it to 4066 MB but took 25% more time per iteration
//! (16.4 → 20.5 s): each iteration's page faults zeroed the same gigabytes again.
//!
//! Here a request takes a kept block of exactly its size if there is one. Otherwise it gets a
//! fresh mapping, and kept pages are moved into it with `mremap`, a 2 MiB page at a time,
//! which moves page-table entries, not data: from the smallest kept block that covers the
//! request (its tail stays kept), else from several, smallest first. Only what no kept page
//! covers faults in fresh, and that happens only when nothing is kept, so live + kept never
//! exceeds the live high-water mark. At 2048² an iteration now faults in about 96 MiB and moves or reuses
//! 8.7 GiB; peak RSS 3697 MB (−25%), at 1024² 1415 against 1744 MB, at 512² 869–894 against
//! 934–952 MB, with the same time per iteration within the machine's noise (1024², three
//! alternating pairs: 3906/3917, 5032/4745, 3937/3941 ms; after the move became one page at
//! a time, 3891 ms and 1415 MB at 1024², 16.4 s and 3596 MB at 2048² with `--iters 2`).
//!
//! Blocks are whole, aligned 2 MiB pages, marked for transparent huge pages, so that moving
//! them keeps them huge, as mimalloc's arenas are.
//!
//! The bookkeeping is a fixed array under a mutex: a global allocator cannot allocate.

use std::sync::Mutex;

/// Requests of this size or more are served here; smaller ones stay with mimalloc. 32 MiB is
/// a 128-channel tensor at 256² or a 64-channel one at 362²: the large layers' activations
/// and gradients at the sizes where memory matters, few enough (tens an iteration) that a
/// system call each costs nothing measurable.
pub(super) const MIN_BYTES: usize = 32 << 20;

/// The granularity of blocks: a transparent huge page on x86-64 (and arm64 with 4 KiB base
/// pages). With 4 KiB pages instead, the largest layers read their blocks through more TLB
/// misses than mimalloc's huge-page arenas gave them.
const PAGE: usize = 2 << 20;

/// How many freed blocks are kept at most; beyond it the oldest goes back to the OS. An
/// iteration has about twenty large blocks live at a time.
const MAX_KEPT: usize = 64;

#[derive(Clone, Copy, Debug, PartialEq)]
struct Block {
    addr: usize,
    len: usize,
}

/// The blocks kept for reuse, and the live bytes.
struct Blocks {
    /// Freed blocks, oldest first.
    kept: [Block; MAX_KEPT],
    kept_count: usize,
    live_bytes: usize,
    /// The most bytes ever live at once. The live and kept bytes never exceed it by
    /// construction (fresh pages only when nothing is kept), so nothing here reads it; the
    /// tests check the rule against it.
    high_water: usize,
    /// Whether `free` keeps blocks at all.
    keep_freed: bool,
}

static BLOCKS: Mutex<Blocks> = Mutex::new(Blocks::new());

fn lock() -> std::sync::MutexGuard<'static, Blocks> {
    // Nothing panics while holding the lock, but should it, the counts are still usable.
    BLOCKS.lock().unwrap_or_else(|e| e.into_inner())
}

/// A block of at least `bytes`, aligned to 2 MiB, zeroed if `zeroed`; null if the OS refuses.
pub(super) fn allocate(bytes: usize, zeroed: bool) -> *mut u8 {
    let Some(len) = page_round(bytes) else {
        return std::ptr::null_mut();
    };
    let Some((addr, reused)) = lock().allocate(len) else {
        return std::ptr::null_mut();
    };
    if zeroed {
        // SAFETY: [addr, addr + len) is ours and nobody else's yet. Its first `reused`
        // bytes held earlier data; the rest are fresh pages, zero on first touch.
        unsafe { std::ptr::write_bytes(addr as *mut u8, 0, reused) };
    }
    addr as *mut u8
}

/// Takes back a block from [`allocate`] with the same `bytes`.
pub(super) fn free(addr: *mut u8, bytes: usize) {
    let len = page_round(bytes).expect("allocate rounded the same size");
    lock().free(Block {
        addr: addr as usize,
        len,
    });
}

/// Whether freed blocks are kept (the default) or unmapped at once (what was kept goes too).
pub(super) fn keep_freed(keep: bool) {
    let mut blocks = lock();
    blocks.keep_freed = keep;
    if !keep {
        blocks.release_kept();
    }
}

/// Unmaps every kept block and lowers the high-water mark to what is live now: for a
/// long-lived process between runs, so that one large run does not set what later ones keep.
pub(super) fn release_kept() {
    lock().release_kept();
}

fn page_round(bytes: usize) -> Option<usize> {
    Some(bytes.checked_next_multiple_of(PAGE)?.max(PAGE))
}

impl Blocks {
    const fn new() -> Self {
        Blocks {
            kept: [Block { addr: 0, len: 0 }; MAX_KEPT],
            kept_count: 0,
            live_bytes: 0,
            high_water: 0,
            keep_freed: true,
        }
    }

    /// A block of `len` bytes (a multiple of [`PAGE`]): its address, and how many of its
    /// first bytes are reused memory (not zero).
    fn allocate(&mut self, len: usize) -> Option<(usize, usize)> {
        let block = match self.kept().iter().position(|k| k.len == len) {
            Some(i) => self.take(i),
            None => {
                // Where the OS refuses (a strict overcommit limit, say), what is kept may be
                // what stands in the way.
                let addr = map(len).or_else(|| {
                    self.release_kept();
                    map(len)
                })?;
                match self.move_kept_pages_to(addr, len) {
                    Ok(moved) => Block { addr, len: moved },
                    Err(hole) => {
                        // Not ours any more: give back the rest and fail the request.
                        unmap(addr, hole - addr);
                        unmap(hole + PAGE, addr + len - (hole + PAGE));
                        return None;
                    }
                }
            }
        };
        self.live_bytes += len;
        self.high_water = self.high_water.max(self.live_bytes);
        Some((block.addr, block.len))
    }

    fn free(&mut self, block: Block) {
        self.live_bytes -= block.len;
        if !self.keep_freed {
            unmap(block.addr, block.len);
            return;
        }
        if self.kept_count == MAX_KEPT {
            let oldest = self.take(0);
            unmap(oldest.addr, oldest.len);
        }
        self.kept[self.kept_count] = block;
        self.kept_count += 1;
    }

    fn release_kept(&mut self) {
        while self.kept_count > 0 {
            let block = self.take(0);
            unmap(block.addr, block.len);
        }
        self.high_water = self.live_bytes;
    }

    fn kept(&self) -> &[Block] {
        &self.kept[..self.kept_count]
    }

    fn take(&mut self, index: usize) -> Block {
        let block = self.kept[index];
        self.kept.copy_within(index + 1..self.kept_count, index);
        self.kept_count -= 1;
        block
    }

    /// Moves kept pages into the start of the fresh mapping [dest, dest + len): from the
    /// smallest kept block that covers what is left (its tail stays kept), else from the
    /// smallest first, so that splinters do not pile up. Returns how many bytes were moved, or
    /// where a page of the destination was lost (see [`move_pages`]).
    fn move_kept_pages_to(&mut self, dest: usize, len: usize) -> Result<usize, usize> {
        let mut moved = 0;
        while moved < len && self.kept_count > 0 {
            let want = len - moved;
            let kept = self.kept();
            let covering = (0..kept.len())
                .filter(|&i| kept[i].len >= want)
                .min_by_key(|&i| kept[i].len);
            let smallest = || (0..kept.len()).min_by_key(|&i| kept[i].len);
            let Some(i) = covering.or_else(smallest) else {
                break;
            };
            let block = kept[i];
            let piece = block.len.min(want);
            let result = move_pages(block.addr, dest + moved, piece);
            if piece == block.len {
                self.take(i);
            } else {
                self.kept[i] = Block {
                    addr: block.addr + piece,
                    len: block.len - piece,
                };
            }
            result?;
            moved += piece;
        }
        Ok(moved)
    }
}

/// Moves the pages of [src, src + len) to [dst, dst + len), both ours, whole [`PAGE`]s and
/// unused by anyone, the destination inside a fresh mapping whose pages it replaces.
///
/// One page at a time: a block gathered from several kept blocks spans several kernel
/// mappings (VMAs), which one `mremap` cannot move before Linux 6.17, and a failed
/// `MREMAP_FIXED` has already unmapped its destination, where another thread's mapping could
/// land before a retry. A page always lies in one mapping (their boundaries fall on whole
/// pages), so only the kernel running out of memory makes a move fail. At 2048² that is
/// about 4,500 calls an iteration, each moving a huge page's table entry.
///
/// If a move fails, the source page goes back to the OS and a fresh page is mapped in its
/// place. If another mapping took that place meanwhile, the rest of the source goes back too
/// and the lost page's address is the error.
fn move_pages(src: usize, dst: usize, len: usize) -> Result<(), usize> {
    for offset in (0..len).step_by(PAGE) {
        if remap(src + offset, dst + offset, PAGE) {
            continue;
        }
        unmap(src + offset, PAGE);
        if !map_in_place(dst + offset) {
            unmap(src + offset + PAGE, len - offset - PAGE);
            return Err(dst + offset);
        }
    }
    Ok(())
}

/// Maps a fresh page at `addr` unless something is mapped there already.
fn map_in_place(addr: usize) -> bool {
    // SAFETY: MAP_FIXED_NOREPLACE never replaces an existing mapping.
    let p = unsafe {
        libc::mmap(
            addr as *mut libc::c_void,
            PAGE,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return false;
    }
    if p as usize != addr {
        // Kernels before 4.17 take the flag as a hint and map elsewhere.
        unmap(p as usize, PAGE);
        return false;
    }
    true
}

/// One `mremap`: whether it moved [src, src + len) to dst.
fn remap(src: usize, dst: usize, len: usize) -> bool {
    // SAFETY: as `move_pages` requires; MREMAP_FIXED replaces the destination's pages.
    let p = unsafe {
        libc::mremap(
            src as *mut libc::c_void,
            len,
            len,
            libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED,
            dst as *mut libc::c_void,
        )
    };
    p != libc::MAP_FAILED
}

/// A fresh mapping of `len` bytes (a multiple of [`PAGE`]), aligned to [`PAGE`] and marked
/// for huge pages; `None` if the OS refuses.
fn map(len: usize) -> Option<usize> {
    // Over-map by a page, then unmap the misaligned head and what is left of the tail.
    let padded = len.checked_add(PAGE)?;
    // SAFETY: a new anonymous private mapping; no existing memory is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            padded,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return None;
    }
    let start = p as usize;
    let aligned = start.next_multiple_of(PAGE);
    unmap(start, aligned - start);
    unmap(aligned + len, start + padded - (aligned + len));
    // SAFETY: advice on our own fresh mapping; where it fails (no THP) pages stay small.
    unsafe { libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
    Some(aligned)
}

fn unmap(addr: usize, len: usize) {
    if len == 0 {
        return;
    }
    // SAFETY: [addr, addr + len) is part of a mapping of ours that nobody uses any more.
    unsafe { libc::munmap(addr as *mut libc::c_void, len) };
}

#[cfg(test)]
mod tests {
    use super::{map, move_pages, unmap, Block, Blocks, MAX_KEPT, PAGE};
    use rand::{Rng, SeedableRng};

    /// Fills a block with bytes derived from `tag`, one per 4 KiB page (enough to tell pages
    /// apart without writing them whole).
    fn stamp(addr: usize, len: usize, tag: u8) {
        for (n, page) in (0..len).step_by(4096).enumerate() {
            // SAFETY: the test owns the block.
            unsafe { *((addr + page) as *mut u8) = tag.wrapping_add(n as u8) };
        }
    }

    /// Whether a page is mapped (`msync` fails with ENOMEM on unmapped memory).
    fn is_mapped(addr: usize) -> bool {
        // SAFETY: msync only inspects the range.
        unsafe { libc::msync(addr as *mut libc::c_void, 4096, libc::MS_ASYNC) == 0 }
    }

    fn kept_bytes(blocks: &Blocks) -> usize {
        blocks.kept().iter().map(|b| b.len).sum()
    }

    fn give_back(blocks: &mut Blocks, addr: usize, len: usize) {
        blocks.free(Block { addr, len });
    }

    /// Two blocks taken, stamped 5 (one page) and 9 (two pages) and given back: two kernel
    /// mappings with pages of their own (untouched ones would merge). Their addresses.
    fn kept_one_and_two_pages(blocks: &mut Blocks) -> (usize, usize) {
        let (a, _) = blocks.allocate(PAGE).unwrap();
        let (b, _) = blocks.allocate(2 * PAGE).unwrap();
        stamp(a, PAGE, 5);
        stamp(b, 2 * PAGE, 9);
        give_back(blocks, a, PAGE);
        give_back(blocks, b, 2 * PAGE);
        (a, b)
    }

    fn stamped(addr: usize, len: usize, tag: u8) -> bool {
        (0..len).step_by(4096).enumerate().all(|(n, page)| {
            // SAFETY: the test owns the block.
            unsafe { *((addr + page) as *const u8) == tag.wrapping_add(n as u8) }
        })
    }

    #[test]
    fn a_freed_block_serves_the_next_request_of_its_size() {
        let mut blocks = Blocks::new();
        let (a, reused) = blocks.allocate(4 * PAGE).unwrap();
        assert_eq!((a % PAGE, reused), (0, 0), "fresh, aligned");
        stamp(a, 4 * PAGE, 7);
        give_back(&mut blocks, a, 4 * PAGE);
        let (b, reused) = blocks.allocate(4 * PAGE).unwrap();
        assert_eq!((b, reused), (a, 4 * PAGE));
        assert!(stamped(b, 4 * PAGE, 7), "the same pages, not fresh ones");
        assert_eq!((blocks.live_bytes, kept_bytes(&blocks)), (4 * PAGE, 0));
        give_back(&mut blocks, b, 4 * PAGE);
        blocks.release_kept();
        assert_eq!((blocks.kept_count, blocks.high_water), (0, 0));
    }

    #[test]
    fn a_larger_request_gathers_kept_pages_smallest_first() {
        let mut blocks = Blocks::new();
        let (a, _) = blocks.allocate(3 * PAGE).unwrap();
        let (b, _) = blocks.allocate(PAGE).unwrap();
        stamp(a, 3 * PAGE, 1);
        stamp(b, PAGE, 100);
        give_back(&mut blocks, a, 3 * PAGE);
        give_back(&mut blocks, b, PAGE);
        let (c, reused) = blocks.allocate(5 * PAGE).unwrap();
        assert_eq!(reused, 4 * PAGE, "everything kept was moved in");
        assert!(stamped(c, PAGE, 100), "b's page first");
        assert!(stamped(c + PAGE, 3 * PAGE, 1), "then a's");
        // SAFETY: the test owns the block; its last page is fresh.
        assert_eq!(unsafe { *((c + 4 * PAGE) as *const u8) }, 0);
        assert_eq!((kept_bytes(&blocks), blocks.high_water), (0, 5 * PAGE));
        give_back(&mut blocks, c, 5 * PAGE);
        blocks.release_kept();
    }

    #[test]
    fn a_smaller_request_takes_the_head_of_a_larger_block() {
        let mut blocks = Blocks::new();
        let (a, _) = blocks.allocate(5 * PAGE).unwrap();
        stamp(a, 5 * PAGE, 3);
        give_back(&mut blocks, a, 5 * PAGE);
        let (b, reused) = blocks.allocate(2 * PAGE).unwrap();
        assert_eq!(reused, 2 * PAGE);
        assert!(stamped(b, 2 * PAGE, 3));
        assert_eq!(
            blocks.kept(),
            [Block {
                addr: a + 2 * PAGE,
                len: 3 * PAGE
            }]
        );
        give_back(&mut blocks, b, 2 * PAGE);
        blocks.release_kept();
    }

    /// A block gathered from two kept blocks spans two kernel mappings (VMAs), which one
    /// `mremap` could not move before Linux 6.17; when it is freed and moved again, its
    /// contents still come along.
    #[test]
    fn a_block_gathered_from_several_moves_again_whole() {
        let mut blocks = Blocks::new();
        kept_one_and_two_pages(&mut blocks);
        let (c, reused) = blocks.allocate(3 * PAGE).unwrap();
        assert_eq!(reused, 3 * PAGE);
        stamp(c, 3 * PAGE, 40);
        give_back(&mut blocks, c, 3 * PAGE);
        let (d, reused) = blocks.allocate(4 * PAGE).unwrap();
        assert_eq!(reused, 3 * PAGE);
        assert!(stamped(d, 3 * PAGE, 40), "c's pages, moved");
        give_back(&mut blocks, d, 4 * PAGE);
        blocks.release_kept();
    }

    /// Pages move one at a time, also across two mappings.
    #[test]
    fn pages_move_across_mappings() {
        let (a, b) = (map(PAGE).unwrap(), map(2 * PAGE).unwrap());
        stamp(a, PAGE, 5);
        stamp(b, 2 * PAGE, 9);
        let src = map(3 * PAGE).unwrap();
        move_pages(a, src, PAGE).unwrap();
        move_pages(b, src + PAGE, 2 * PAGE).unwrap();
        let dst = map(3 * PAGE).unwrap();
        move_pages(src, dst, 3 * PAGE).unwrap();
        assert!(stamped(dst, PAGE, 5) && stamped(dst + PAGE, 2 * PAGE, 9));
        unmap(dst, 3 * PAGE);
    }

    /// Moved, not copied: the sources are unmapped afterwards. Checked in a process of its own
    /// (this test binary again, this test alone), because other tests' threads map memory and
    /// may take a freed address at once.
    #[test]
    fn moved_pages_leave_their_source_unmapped() {
        const ALONE: &str = "NST_LARGE_BLOCKS_TEST_ALONE";
        if std::env::var_os(ALONE).is_none() {
            let name = "allocator::large_blocks::tests::moved_pages_leave_their_source_unmapped";
            let run = std::process::Command::new(std::env::current_exe().unwrap())
                .args(["--exact", name, "--test-threads=1"])
                .env(ALONE, "1")
                .output()
                .unwrap();
            assert!(
                run.status.success(),
                "{}",
                String::from_utf8_lossy(&run.stdout)
            );
            return;
        }
        let mut blocks = Blocks::new();
        let (a, b) = kept_one_and_two_pages(&mut blocks);
        let (c, reused) = blocks.allocate(3 * PAGE).unwrap();
        assert_eq!(reused, 3 * PAGE);
        assert!(stamped(c, PAGE, 5) && stamped(c + PAGE, 2 * PAGE, 9));
        assert!(is_mapped(c) && !is_mapped(a) && !is_mapped(b) && !is_mapped(b + PAGE));
        give_back(&mut blocks, c, 3 * PAGE);
        blocks.release_kept();
        assert!(!is_mapped(c));
    }

    #[test]
    fn a_refused_mapping_fails_the_request_and_changes_no_count() {
        let mut blocks = Blocks::new();
        let (a, _) = blocks.allocate(PAGE).unwrap();
        assert!(blocks.allocate(1 << 60).is_none());
        assert_eq!(
            (blocks.live_bytes, kept_bytes(&blocks), blocks.high_water),
            (PAGE, 0, PAGE)
        );
        give_back(&mut blocks, a, PAGE);
        blocks.release_kept();
    }

    /// The global allocator's path: a reused block asked for zeroed is zero.
    #[test]
    fn a_reused_block_asked_for_zeroed_is_zero() {
        let len = 3 * PAGE;
        let a = super::allocate(len, false);
        stamp(a as usize, len, 1);
        super::free(a, len);
        let b = super::allocate(len, true);
        assert_eq!(b, a, "the kept block");
        // SAFETY: the test owns the block.
        assert!(unsafe { std::slice::from_raw_parts(b, len) }
            .iter()
            .all(|&v| v == 0));
        super::free(b, len);
        super::release_kept();
    }

    #[test]
    fn beyond_max_kept_the_oldest_freed_block_goes_back() {
        let mut blocks = Blocks::new();
        let all: Vec<usize> = (0..=MAX_KEPT)
            .map(|_| blocks.allocate(PAGE).unwrap().0)
            .collect();
        for &addr in &all {
            give_back(&mut blocks, addr, PAGE);
        }
        assert_eq!(blocks.kept_count, MAX_KEPT);
        assert_eq!(kept_bytes(&blocks), MAX_KEPT * PAGE);
        assert!(blocks.kept().iter().all(|b| b.addr != all[0]));
        blocks.release_kept();
    }

    #[test]
    fn when_not_keeping_a_freed_block_goes_back_at_once() {
        let mut blocks = Blocks::new();
        let (a, _) = blocks.allocate(2 * PAGE).unwrap();
        let (b, _) = blocks.allocate(PAGE).unwrap();
        give_back(&mut blocks, a, 2 * PAGE);
        assert_eq!(kept_bytes(&blocks), 2 * PAGE);
        blocks.keep_freed = false;
        blocks.release_kept();
        give_back(&mut blocks, b, PAGE);
        assert_eq!((blocks.kept_count, blocks.live_bytes), (0, 0));
        let (_, reused) = blocks.allocate(PAGE).unwrap();
        assert_eq!(reused, 0, "fresh pages");
    }

    /// Random requests, frees and sizes: every live block keeps its contents, and live + kept
    /// never exceeds the live high-water mark.
    #[test]
    fn live_and_kept_stay_within_the_high_water_mark() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut blocks = Blocks::new();
        let mut live: Vec<(Block, u8)> = Vec::new();
        let mut most_live = 0;
        for step in 0..2000 {
            if live.len() < 12 && (live.is_empty() || rng.random_bool(0.55)) {
                let len = rng.random_range(1..=6) * PAGE;
                let (addr, _) = blocks.allocate(len).unwrap();
                let tag = step as u8;
                stamp(addr, len, tag);
                live.push((Block { addr, len }, tag));
            } else {
                let (block, tag) = live.swap_remove(rng.random_range(0..live.len()));
                assert!(
                    stamped(block.addr, block.len, tag),
                    "step {step}: overwritten"
                );
                blocks.free(block);
            }
            let live_bytes: usize = live.iter().map(|(b, _)| b.len).sum();
            most_live = most_live.max(live_bytes);
            assert_eq!(blocks.live_bytes, live_bytes);
            assert_eq!(blocks.high_water, most_live);
            assert!(
                blocks.live_bytes + kept_bytes(&blocks) <= blocks.high_water,
                "step {step}"
            );
            assert!(blocks.kept_count <= MAX_KEPT);
        }
        for (block, tag) in live {
            assert!(stamped(block.addr, block.len, tag));
            blocks.free(block);
        }
        blocks.release_kept();
        assert_eq!(blocks.high_water, 0);
    }
}
