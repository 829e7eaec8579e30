// SPDX-License-Identifier: GPL-2.0-or-later
//! QEMU's bitmap layout: an array of `unsigned long`, bit `i` in word
//! `i / BITS_PER_LONG` at position `i % BITS_PER_LONG` (LSB first).
//!
//! Names and sentinels follow `include/qemu/bitmap.h` and Linux's
//! `lib/find_bit.c`: the `find_*` functions return `size` when nothing is
//! found.  Everything works a word at a time; bits at or beyond `size` in the
//! last word are never read as data nor written.

use std::os::raw::c_ulong;
use std::sync::atomic::{AtomicU64, Ordering};

/// One bitmap word, `unsigned long` in C.
pub type Word = c_ulong;
/// Bits in a [`Word`].
pub const BITS_PER_LONG: usize = Word::BITS as usize;

const _: () = assert!(BITS_PER_LONG == 64);
assert_same_layout!(Word, AtomicU64);

/// Words needed for `nbits` bits (`BITS_TO_LONGS`).
#[inline]
pub const fn bits_to_longs(nbits: usize) -> usize {
    nbits.div_ceil(BITS_PER_LONG)
}

/// Mask of the valid bits of the last word of an `nbits` bitmap
/// (`BITMAP_LAST_WORD_MASK`).
#[inline]
pub const fn last_word_mask(nbits: usize) -> Word {
    let r = nbits % BITS_PER_LONG;
    if r == 0 {
        !0
    } else {
        (1 << r) - 1
    }
}

/// Mask of bits `from..BITS_PER_LONG` (`BITMAP_FIRST_WORD_MASK`).
#[inline]
const fn first_word_mask(from: usize) -> Word {
    !0 << (from % BITS_PER_LONG)
}

#[inline]
fn find_next(map: &[Word], size: usize, offset: usize, invert: Word) -> usize {
    if offset >= size {
        return size;
    }
    let mut idx = offset / BITS_PER_LONG;
    let mut w = (map[idx] ^ invert) & first_word_mask(offset);
    let last = (size - 1) / BITS_PER_LONG;
    loop {
        if idx == last {
            w &= last_word_mask(size);
        }
        if w != 0 {
            return (idx * BITS_PER_LONG + w.trailing_zeros() as usize).min(size);
        }
        if idx == last {
            return size;
        }
        idx += 1;
        w = map[idx] ^ invert;
    }
}

/// Index of the first set bit at or after `offset`, or `size`.
///
/// `map` must hold at least `bits_to_longs(size)` words.
#[inline]
pub fn find_next_bit(map: &[Word], size: usize, offset: usize) -> usize {
    find_next(map, size, offset, 0)
}

/// Index of the first clear bit at or after `offset`, or `size`.
#[inline]
pub fn find_next_zero_bit(map: &[Word], size: usize, offset: usize) -> usize {
    find_next(map, size, offset, !0)
}

/// Index of the first set bit, or `size`.
#[inline]
pub fn find_first_bit(map: &[Word], size: usize) -> usize {
    find_next_bit(map, size, 0)
}

/// Test bit `nr`.
#[inline]
pub fn test_bit(map: &[Word], nr: usize) -> bool {
    map[nr / BITS_PER_LONG] >> (nr % BITS_PER_LONG) & 1 != 0
}

/// Visit the words covering bits `start..start + len` with the mask of the
/// bits inside the range (`bitmap_set`'s walk).
#[inline]
fn for_each_range_word(start: usize, len: usize, mut f: impl FnMut(usize, Word)) {
    if len == 0 {
        return;
    }
    let end = start + len;
    let first = start / BITS_PER_LONG;
    let last = (end - 1) / BITS_PER_LONG;
    for idx in first..=last {
        let mut mask = !0;
        if idx == first {
            mask &= first_word_mask(start);
        }
        if idx == last {
            mask &= last_word_mask(end);
        }
        f(idx, mask);
    }
}

/// Set bits `start..start + len` (`bitmap_set`).
pub fn set_range(map: &mut [Word], start: usize, len: usize) {
    for_each_range_word(start, len, |idx, mask| map[idx] |= mask);
}

/// Clear bits `start..start + len` (`bitmap_clear`).
pub fn clear_range(map: &mut [Word], start: usize, len: usize) {
    for_each_range_word(start, len, |idx, mask| map[idx] &= !mask);
}

/// Atomically set bits `start..start + len` (`bitmap_set_atomic`), for
/// bitmaps other threads read concurrently, such as QEMU's `receivedmap`.
/// Release ordering: a reader that sees the bit also sees the page content
/// placed before it was set.
pub fn set_range_atomic(map: &[AtomicU64], start: usize, len: usize) {
    for_each_range_word(start, len, |idx, mask| {
        if map[idx].load(Ordering::Relaxed) & mask != mask {
            map[idx].fetch_or(mask, Ordering::Release);
        }
    });
}

/// Atomically test bit `nr` (acquire: pairs with [`set_range_atomic`]).
pub fn test_bit_atomic(map: &[AtomicU64], nr: usize) -> bool {
    map[nr / BITS_PER_LONG].load(Ordering::Acquire) >> (nr % BITS_PER_LONG) & 1 != 0
}

/// Builds maximal runs of set bits from words fed in ascending order.
///
/// The hot loop of run extraction: per run it costs two `trailing_zeros`
/// and a couple of shifts, with no re-scan of earlier words.
#[derive(Debug, Default)]
pub struct RunBuilder {
    open: Option<usize>,
}

impl RunBuilder {
    /// A builder with no run open.
    pub const fn new() -> Self {
        RunBuilder { open: None }
    }

    /// Is a run open (carried over from the previous word)?
    #[inline(always)]
    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Feed word `w` whose bit 0 is bit `base` of the bitmap.  Bits of `w`
    /// outside the bitmap must already be clear.
    ///
    /// Runs come from two masks, the first and the last bit of each run
    /// inside the word, consumed in step: two independent
    /// `trailing_zeros` / clear-lowest chains instead of one serial scan.
    #[inline(always)]
    pub fn word(&mut self, base: usize, w: Word, emit: &mut impl FnMut(usize, usize)) {
        if let Some(start) = self.open {
            if w & 1 == 0 {
                emit(start, base - start);
                self.open = None;
            } else if w == !0 {
                return;
            }
        }
        if w == 0 {
            return;
        }
        if w == !0 {
            self.open = Some(base);
            return;
        }
        let carry = Word::from(self.open.is_some());
        let mut starts = w & !((w << 1) | carry);
        // A run reaching bit 63 does not end here: leave it open.
        let mut ends = w & !(w >> 1) & !(1 << (BITS_PER_LONG - 1));
        if let Some(start) = self.open.take() {
            // w has a zero, so the run through bit 0 ends inside the word.
            let e = ends.trailing_zeros() as usize;
            ends &= ends - 1;
            emit(start, base + e + 1 - start);
        }
        while starts != 0 {
            let s = starts.trailing_zeros() as usize;
            starts &= starts - 1;
            if ends != 0 {
                let e = ends.trailing_zeros() as usize;
                ends &= ends - 1;
                emit(base + s, e + 1 - s);
            } else {
                self.open = Some(base + s);
            }
        }
    }

    /// Close any open run at `size`.
    #[inline(always)]
    pub fn finish(self, size: usize, emit: &mut impl FnMut(usize, usize)) {
        if let Some(start) = self.open {
            emit(start, size - start);
        }
    }
}

/// Call `emit(start, len)` for every maximal run of set bits in
/// `0..size`, ascending.
pub fn for_each_run(map: &[Word], size: usize, mut emit: impl FnMut(usize, usize)) {
    let nwords = bits_to_longs(size);
    let mut rb = RunBuilder::new();
    for (idx, &w) in map[..nwords].iter().enumerate() {
        let w = if idx + 1 == nwords {
            w & last_word_mask(size)
        } else {
            w
        };
        rb.word(idx * BITS_PER_LONG, w, &mut emit);
    }
    rb.finish(size, &mut emit);
}

/// Iterator over maximal runs of set bits as `(start, len)`, ascending,
/// built on [`find_next_bit`] / [`find_next_zero_bit`].
#[derive(Debug, Clone)]
pub struct Runs<'a> {
    map: &'a [Word],
    size: usize,
    pos: usize,
}

/// Runs of set bits in `0..size`.
pub fn runs(map: &[Word], size: usize) -> Runs<'_> {
    assert!(
        map.len() >= bits_to_longs(size),
        "bitmap shorter than its size"
    );
    Runs { map, size, pos: 0 }
}

impl Iterator for Runs<'_> {
    type Item = (usize, usize);

    fn next(&mut self) -> Option<(usize, usize)> {
        let start = find_next_bit(self.map, self.size, self.pos);
        if start >= self.size {
            self.pos = self.size;
            return None;
        }
        let end = find_next_zero_bit(self.map, self.size, start + 1);
        self.pos = end;
        Some((start, end - start))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_bits(bits: &[bool]) -> Vec<Word> {
        let mut m = vec![0; bits_to_longs(bits.len()).max(1)];
        for (i, &b) in bits.iter().enumerate() {
            if b {
                m[i / 64] |= 1 << (i % 64);
            }
        }
        m
    }

    #[test]
    fn find_sentinels() {
        let m = [0 as Word; 2];
        assert_eq!(find_next_bit(&m, 100, 0), 100);
        assert_eq!(find_next_zero_bit(&m, 100, 3), 3);
        assert_eq!(find_next_bit(&m, 100, 100), 100);
        assert_eq!(find_next_bit(&m, 0, 0), 0);
        let full = [!0 as Word; 2];
        // Bits past size are set but must not be reported.
        assert_eq!(find_next_zero_bit(&full, 100, 0), 100);
        assert_eq!(find_next_bit(&full, 100, 99), 99);
    }

    #[test]
    fn single_bit_in_last_word() {
        let mut bits = vec![false; 130];
        bits[129] = true;
        let m = from_bits(&bits);
        assert_eq!(find_first_bit(&m, 130), 129);
        assert_eq!(runs(&m, 130).collect::<Vec<_>>(), vec![(129, 1)]);
        let mut v = vec![];
        for_each_run(&m, 130, |s, l| v.push((s, l)));
        assert_eq!(v, vec![(129, 1)]);
    }

    #[test]
    fn set_and_clear_ranges() {
        let mut m = vec![0 as Word; 3];
        set_range(&mut m, 60, 70);
        assert_eq!(runs(&m, 192).collect::<Vec<_>>(), vec![(60, 70)]);
        clear_range(&mut m, 64, 64);
        assert_eq!(runs(&m, 192).collect::<Vec<_>>(), vec![(60, 4), (128, 2)]);
        let a: Vec<AtomicU64> = (0..3).map(|_| AtomicU64::new(0)).collect();
        set_range_atomic(&a, 1, 190);
        assert!(!test_bit_atomic(&a, 0) && test_bit_atomic(&a, 1) && test_bit_atomic(&a, 190));
        assert!(!test_bit_atomic(&a, 191));
    }

    #[test]
    fn run_builder_across_words() {
        let mut m = vec![0 as Word; 4];
        set_range(&mut m, 10, 200);
        set_range(&mut m, 255, 1);
        let mut v = vec![];
        for_each_run(&m, 256, |s, l| v.push((s, l)));
        assert_eq!(v, vec![(10, 200), (255, 1)]);
        let alt = vec![0x5555_5555_5555_5555 as Word; 1];
        let mut alt_runs = vec![];
        for_each_run(&alt, 64, |s, l| alt_runs.push((s, l)));
        assert_eq!(alt_runs.len(), 32);
        assert!(alt_runs.iter().enumerate().all(|(i, &r)| r == (2 * i, 1)));
    }
}
