// SPDX-License-Identifier: GPL-2.0-or-later
//! Source side: canonicalise a dirty bitmap to host pages and extract the
//! discard runs, in one pass over the bitmap.
//!
//! Replaces `postcopy_chunk_hostpages_pass` and `postcopy_send_discard_bm_ram`
//! of `migration/ram.c`.  The runs are exactly the ones QEMU's C emits
//! (maximal runs of set bits of the canonical bitmap, ascending, in target
//! pages), so the wire format is unchanged.
//!
//! Where QEMU repairs each partial host page one `test_and_set_bit` at a
//! time, this works on whole words: for host pages smaller than a word an
//! OR-fold plus a multiply spreads "any bit set" over each group of bits;
//! for larger host pages a page is a group of whole words.

use crate::bitmap::{bits_to_longs, last_word_mask, RunBuilder, Word, BITS_PER_LONG};
use crate::error::{Error, Result};
use std::ffi::CStr;

pub use crate::limits::{MAX_HOST_PAGE_SIZE, MAX_HOST_RATIO};

/// A validated host-page / target-page ratio: a power of two in
/// `1..=MAX_HOST_RATIO`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostRatio(usize);

impl HostRatio {
    /// Validate a raw ratio.
    pub fn new(ratio: u64) -> Result<Self> {
        if ratio == 0 || !ratio.is_power_of_two() || ratio > MAX_HOST_RATIO {
            return Err(Error::HostRatio(ratio));
        }
        Ok(HostRatio(ratio as usize))
    }

    /// The ratio of a block's host page size to the target page size.
    pub fn from_page_sizes(page_size: u64, target_page_size: u64) -> Result<Self> {
        let bad = Error::PageSize {
            page_size,
            target_page_size,
        };
        if !target_page_size.is_power_of_two()
            || !page_size.is_power_of_two()
            || page_size < target_page_size
            || page_size > MAX_HOST_PAGE_SIZE
        {
            return Err(bad);
        }
        Self::new(page_size / target_page_size)
    }

    /// Target pages per host page.
    pub fn get(self) -> usize {
        self.0
    }
}

/// Check that `nbits` target pages are a whole number of host pages.
pub fn check_length(nbits: usize, ratio: HostRatio) -> Result<()> {
    if nbits % ratio.get() != 0 {
        return Err(Error::Length {
            len: nbits as u64,
            page: ratio.get() as u64,
            unit: "target pages",
        });
    }
    Ok(())
}

/// Canonicalise `map` (of `nbits` target pages) so that every host page
/// with any dirty target page is wholly dirty, and call `emit(start, len)`
/// for every maximal run of dirty pages of the result, ascending.
///
/// Returns how many bits it newly set: QEMU adds that to
/// `migration_dirty_pages`.  Bits of the last word beyond `nbits` are left
/// untouched.
pub fn chunk_and_runs(
    map: &mut [Word],
    nbits: usize,
    ratio: HostRatio,
    mut emit: impl FnMut(usize, usize),
) -> Result<u64> {
    let map = words_of(map, nbits, ratio)?;
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2")
        && std::is_x86_feature_detected!("popcnt")
        && std::is_x86_feature_detected!("bmi1")
    {
        // SAFETY: the CPU has every feature pass_x86_v3 is compiled for.
        return Ok(unsafe { pass_x86_v3(map, nbits, ratio.get(), &mut emit) });
    }
    Ok(pass(map, nbits, ratio.get(), &mut emit))
}

/// The words of an `nbits` bitmap, after checking it is a whole number of
/// host pages and that `map` is long enough.
fn words_of(map: &mut [Word], nbits: usize, ratio: HostRatio) -> Result<&mut [Word]> {
    check_length(nbits, ratio)?;
    let nwords = bits_to_longs(nbits);
    let len = map.len();
    map.get_mut(..nwords).ok_or(Error::OutOfRange {
        addr: (len * BITS_PER_LONG) as u64,
        len: nbits as u64,
    })
}

/// [`chunk_and_runs`] without CPU-specific dispatch, so that tests cover the
/// portable build of the pass on any machine.
#[doc(hidden)]
pub fn chunk_and_runs_portable(
    map: &mut [Word],
    nbits: usize,
    ratio: HostRatio,
    mut emit: impl FnMut(usize, usize),
) -> Result<u64> {
    let map = words_of(map, nbits, ratio)?;
    Ok(pass(map, nbits, ratio.get(), &mut emit))
}

/// [`pass`] compiled for AVX2, POPCNT and BMI1 (wider folds, hardware
/// popcount, `tzcnt`/`blsr` in the run loop).
///
/// # Safety
/// The CPU must support avx2, popcnt and bmi1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,popcnt,bmi1")]
unsafe fn pass_x86_v3(
    map: &mut [Word],
    nbits: usize,
    g: usize,
    emit: &mut impl FnMut(usize, usize),
) -> u64 {
    pass(map, nbits, g, emit)
}

/// The single pass: `map` holds exactly the words of `nbits` bits, `g` is
/// the validated ratio and `nbits` a multiple of it.
#[inline(always)]
fn pass(map: &mut [Word], nbits: usize, g: usize, emit: &mut impl FnMut(usize, usize)) -> u64 {
    let mut rb = RunBuilder::new();
    let mut newly: u64 = 0;
    if g >= BITS_PER_LONG {
        return pass_huge(map, nbits, g, emit);
    }

    let n = map.len();
    let body = n.saturating_sub(1);
    let mut base = 0;
    while base < body {
        let end = (base + BITS_PER_LONG).min(body);
        // A block that is all zeros with no run open, or all ones
        // continuing one, changes nothing (canonicalisation keeps both).
        let skip: Word = if rb.is_open() { !0 } else { 0 };
        let blk = &map[base..end];
        // A full fold, not an early exit: it vectorises.
        if blk.iter().fold(0, |a, &w| a | (w ^ skip)) == 0 {
            base = end;
            continue;
        }
        // Otherwise visit only the words where something can happen: a
        // mixed word, the word after one, or a step between all-zero and
        // all-one words.  The masks are built without data-dependent
        // branches, so sparse bitmaps cost no mispredictions per word.
        let (mixed, low, high) =
            blk.iter()
                .enumerate()
                .fold((0u64, 0u64, 0u64), |(m, l, h), (j, &w)| {
                    (
                        m | u64::from(w.wrapping_add(1) > 1) << j,
                        l | (w & 1) << j,
                        h | (w >> (BITS_PER_LONG - 1)) << j,
                    )
                });
        let prev = if base == 0 { 0 } else { map[base - 1] };
        let prev_mixed = u64::from(prev.wrapping_add(1) > 1);
        let prev_high = prev >> (BITS_PER_LONG - 1);
        let step = low ^ (high << 1 | prev_high);
        // At ratio 1 words are their own canonical form and `step` sees
        // every change after a mixed word; above it, canonicalisation can
        // turn a mixed word uniform, so the word after one is visited too.
        let after_mixed = if g == 1 { 0 } else { mixed << 1 | prev_mixed };
        let mut mask = mixed | after_mixed | step;
        if end - base < BITS_PER_LONG {
            mask &= (1 << (end - base)) - 1;
        }
        while mask != 0 {
            let idx = base + mask.trailing_zeros() as usize;
            mask &= mask - 1;
            let orig = map[idx];
            let canon = canonical_word(orig, g);
            if canon != orig {
                newly += u64::from((canon ^ orig).count_ones());
                map[idx] = canon;
            }
            rb.word(idx * BITS_PER_LONG, canon, emit);
        }
        base = end;
    }
    if n > 0 {
        // The last word: only the bits below nbits are ours.
        let mask = last_word_mask(nbits);
        let w = map[n - 1];
        let orig = w & mask;
        let canon = canonical_word(orig, g);
        if canon != orig {
            newly += u64::from((canon ^ orig).count_ones());
            map[n - 1] = (w & !mask) | canon;
        }
        rb.word((n - 1) * BITS_PER_LONG, canon, emit);
    }
    rb.finish(nbits, emit);
    newly
}

/// Host pages of `k = g / 64` whole words, in groups of 64 pages.
///
/// Inside a group there is no data-dependent branch: every word of a page
/// is stored as `dirty ? !0 : 0` (a clean page is all zeroes already), the
/// count grows by `dirty * g - popcount`, and the pages' dirty bits form one
/// word that the ordinary run builder turns into runs of host pages.  A
/// group that is all clean or all dirty is passed over whole.
#[inline(always)]
fn pass_huge(map: &mut [Word], nbits: usize, g: usize, emit: &mut impl FnMut(usize, usize)) -> u64 {
    let k = g / BITS_PER_LONG;
    let npages = map.len() / k;
    let mut rb = RunBuilder::new();
    let mut newly: u64 = 0;
    let mut scaled = |s: usize, l: usize| emit(s * g, l * g);
    for (gi, group) in map.chunks_mut(k * BITS_PER_LONG).enumerate() {
        let first = gi * BITS_PER_LONG;
        let n = group.len() / k;
        let (or, and) = group.iter().fold((0, !0), |(o, a), &w| (o | w, a & w));
        let dirty: Word = if or == 0 {
            0
        } else if and == !0 {
            !0
        } else {
            let mut dirty: Word = 0;
            for (j, page) in group.chunks_exact_mut(k).enumerate() {
                let any = page.iter().fold(0, |a, &w| a | w) != 0;
                let ones: u32 = page.iter().map(|w| w.count_ones()).sum();
                let fill = Word::from(any).wrapping_neg();
                page.fill(fill);
                newly += u64::from(any) * g as u64 - u64::from(ones);
                dirty |= Word::from(any) << j;
            }
            dirty
        };
        let dirty = if n < BITS_PER_LONG {
            dirty & ((1 << n) - 1)
        } else {
            dirty
        };
        rb.word(first, dirty, &mut scaled);
    }
    rb.finish(npages, &mut scaled);
    debug_assert_eq!(npages * g, nbits);
    newly
}

/// Every group of `g` bits (`g` a power of two below 64) with any bit set
/// becomes all ones.
#[inline(always)]
fn canonical_word(w: Word, g: usize) -> Word {
    if g == 1 || w == 0 {
        return w;
    }
    // After the fold, the lowest bit of each group holds the OR of the group.
    let mut y = w;
    let mut s = 1;
    while s < g {
        y |= y >> s;
        s <<= 1;
    }
    let spread: Word = (1 << g) - 1;
    let lsbs = Word::MAX / spread;
    // Each lsb times `spread` fills its own group; groups don't overlap, so
    // there are no carries.
    (y & lsbs).wrapping_mul(spread)
}

/// Canonicalise without emitting runs (`postcopy_chunk_hostpages`).
pub fn chunk_hostpages(map: &mut [Word], nbits: usize, ratio: HostRatio) -> Result<u64> {
    chunk_and_runs(map, nbits, ratio, |_, _| {})
}

/// One RAMBlock as the source side sees it during the discard.
pub struct SourceBlock<'a> {
    /// `RAMBlock::idstr`.
    pub name: &'a CStr,
    /// The block's host page size, in bytes.
    pub page_size: u64,
    /// `used_length`, in bytes.
    pub used_length: u64,
    /// The migration dirty bitmap, `RAMBlock::bmap`, one bit per target page.
    pub bmap: &'a mut [Word],
}

/// Where discard messages go: QEMU's `postcopy_discard_send_*` in
/// production, a recorder in tests.
pub trait DiscardSink {
    /// Start the discards of one block.
    fn send_init(&mut self, name: &CStr);
    /// Discard `len` target pages from target page `start` of the block.
    fn send_range(&mut self, start: u64, len: u64);
    /// The block's discard is complete (called just before `send_finish`).
    fn block_done(&mut self, _summary: &BlockSummary) {}
    /// End the discards of one block.
    fn send_finish(&mut self);
}

/// What one block's discard did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlockSummary {
    /// Bits newly set by host-page canonicalisation.
    pub newly_dirty: u64,
    /// Discard runs sent.
    pub runs: u64,
    /// Target pages discarded.
    pub pages: u64,
}

/// Validate a block: its host page size, and its length as a whole number
/// of host pages.  Returns the ratio and the number of target pages.
pub fn validate_block(
    page_size: u64,
    used_length: u64,
    target_page_size: u64,
) -> Result<(HostRatio, usize)> {
    let ratio = HostRatio::from_page_sizes(page_size, target_page_size)?;
    if used_length % page_size != 0 {
        return Err(Error::Length {
            len: used_length,
            page: page_size,
            unit: "bytes",
        });
    }
    let nbits = usize::try_from(used_length / target_page_size).map_err(|_| Error::OutOfRange {
        addr: 0,
        len: used_length,
    })?;
    Ok((ratio, nbits))
}

/// Canonicalise one block's bitmap and send its discard runs, framed by
/// `send_init` / `send_finish` as `postcopy_each_ram_send_discard` does.
pub fn discard_block(
    block: SourceBlock<'_>,
    target_page_size: u64,
    sink: &mut impl DiscardSink,
) -> Result<BlockSummary> {
    let (ratio, nbits) = validate_block(block.page_size, block.used_length, target_page_size)?;
    let mut sum = BlockSummary::default();
    sink.send_init(block.name);
    let res = chunk_and_runs(block.bmap, nbits, ratio, |start, len| {
        sum.runs += 1;
        sum.pages += len as u64;
        sink.send_range(start as u64, len as u64);
    });
    if let Ok(n) = res {
        sum.newly_dirty = n;
        sink.block_done(&sum);
    }
    sink.send_finish();
    res.map(|_| sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ratios() {
        HostRatio::new(0).unwrap_err();
        HostRatio::new(3).unwrap_err();
        HostRatio::new(MAX_HOST_RATIO * 2).unwrap_err();
        assert_eq!(HostRatio::new(262_144).unwrap().get(), 262_144);
        HostRatio::from_page_sizes(4096, 4096).unwrap();
        HostRatio::from_page_sizes(2048, 4096).unwrap_err();
        HostRatio::from_page_sizes(3 << 12, 4096).unwrap_err();
        HostRatio::from_page_sizes(32 << 30, 4096).unwrap_err();
        assert_eq!(
            HostRatio::from_page_sizes(2 << 20, 4096).unwrap().get(),
            512
        );
    }

    #[test]
    fn canonical_word_groups() {
        assert_eq!(canonical_word(0b0100_0001, 4), 0b1111_1111);
        assert_eq!(canonical_word(0b0100_0000, 4), 0b1111_0000);
        assert_eq!(canonical_word(1 << 63, 32), 0xffff_ffff_0000_0000);
        assert_eq!(canonical_word(1, 32), 0xffff_ffff);
        assert_eq!(
            canonical_word(0x8000_0000_0000_0001, 2),
            0xc000_0000_0000_0003
        );
    }

    #[test]
    fn rejects_partial_host_page() {
        let mut m = vec![0 as Word; 2];
        assert!(matches!(
            chunk_hostpages(&mut m, 100, HostRatio::new(8).unwrap()),
            Err(Error::Length { .. })
        ));
        validate_block(2 << 20, 3 << 20, 4096).unwrap_err();
    }

    #[test]
    fn huge_page_fill_counts_new_bits() {
        let mut m = vec![0 as Word; 16];
        m[9] = 0b11;
        let mut runs = vec![];
        let n = chunk_and_runs(&mut m, 1024, HostRatio::new(512).unwrap(), |s, l| {
            runs.push((s, l))
        })
        .unwrap();
        assert_eq!(n, 510);
        assert_eq!(runs, vec![(512, 512)]);
        assert!(m[..8].iter().all(|&w| w == 0) && m[8..].iter().all(|&w| w == !0));
    }

    #[test]
    fn tail_bits_beyond_size_are_preserved() {
        // 72 bits, ratio 8: the last word's bits 8.. are not ours.
        let mut m = vec![0 as Word, 0xff00 | 0x10];
        let n = chunk_hostpages(&mut m, 72, HostRatio::new(8).unwrap()).unwrap();
        assert_eq!(n, 7);
        assert_eq!(m[1], 0xff00 | 0xff);
    }
}
