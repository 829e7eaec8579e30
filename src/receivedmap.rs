// SPDX-License-Identifier: GPL-2.0-or-later
//! The destination's received bitmap (`RAMBlock::receivedmap`): one bit per
//! target page, set when the page is placed, read by the fault thread.
//!
//! The memory belongs to the embedder, which also reads and clears it, so
//! the library only ever touches it atomically, as QEMU's
//! `bitmap_set_atomic()` does; like QEMU's `Opaque<T>` (rust/qemu-api) it
//! never makes a plain Rust reference to memory C also touches beyond a
//! slice of atomics.  [`ReceivedMap::from_raw`] is the one place such a
//! map is trusted; Rust callers (tests, benchmarks) allocate their own with
//! [`ReceivedMap::new`].

use crate::bitmap::{self, bits_to_longs, Word};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

/// A received bitmap of `bits` bits.  Cloning shares the same bits.
#[derive(Debug, Clone)]
pub struct ReceivedMap {
    words: NonNull<AtomicU64>,
    nwords: usize,
    bits: usize,
    /// The storage, when Rust allocated it; None for the embedder's.
    _owned: Option<Arc<[AtomicU64]>>,
}

// SAFETY: the words are only accessed through atomics, and the embedder's
// map stays valid for as long as any ReceivedMap made from it exists
// (from_raw's contract); a Rust-allocated map is kept alive by its Arc.
// So sharing and sending the map between threads is sound.
unsafe impl Send for ReceivedMap {}
// SAFETY: as for Send.
unsafe impl Sync for ReceivedMap {}

assert_same_layout!(Word, AtomicU64);

impl ReceivedMap {
    /// A zeroed map of `bits` bits, owned by Rust.
    pub fn new(bits: usize) -> Self {
        let owned: Arc<[AtomicU64]> = (0..bits_to_longs(bits).max(1))
            .map(|_| AtomicU64::new(0))
            .collect();
        // From the whole slice, so that the pointer may reach every word;
        // AtomicU64 is interior-mutable, so the cast to *mut is sound.
        let words = NonNull::new(owned.as_ptr().cast_mut()).expect("Arc data is never NULL");
        ReceivedMap {
            words,
            nwords: bits_to_longs(bits),
            bits,
            _owned: Some(owned),
        }
    }

    /// The embedder's map at `words`, `bits` bits long.
    ///
    /// # Safety
    /// `words` must point to `bits_to_longs(bits)` `unsigned long`s that
    /// stay valid while this map or any clone of it exists, and that
    /// everyone else accesses atomically while a placement of the same
    /// page can race (QEMU clears bits only where none can).
    pub unsafe fn from_raw(words: NonNull<Word>, bits: usize) -> Self {
        ReceivedMap {
            words: words.cast(),
            nwords: bits_to_longs(bits),
            bits,
            _owned: None,
        }
    }

    /// Bits in the map.
    pub fn bits(&self) -> usize {
        self.bits
    }

    fn words(&self) -> &[AtomicU64] {
        // SAFETY: `words` points to `nwords` AtomicU64 (same size and
        // alignment as unsigned long, asserted above) valid for as long as
        // self (from_raw's contract, or the Arc); atomics may be shared.
        unsafe { std::slice::from_raw_parts(self.words.as_ptr(), self.nwords) }
    }

    /// Is bit `nr` set?  Acquire: pairs with [`ReceivedMap::set_range`].
    /// False beyond the end.
    pub fn test(&self, nr: usize) -> bool {
        nr < self.bits && bitmap::test_bit_atomic(self.words(), nr)
    }

    /// Set bits `start..start + len` (`bitmap_set_atomic`, release), clipped
    /// to the map.
    pub fn set_range(&self, start: usize, len: usize) {
        let end = start.saturating_add(len).min(self.bits);
        if start < end {
            bitmap::set_range_atomic(self.words(), start, end - start);
        }
    }

    /// Clear every bit: the embedder dropped the pages (QEMU clears the
    /// bits of a discarded range; a test that drops its pages does too).
    pub fn clear_all(&self) {
        for w in self.words() {
            w.store(0, std::sync::atomic::Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_and_test() {
        let m = ReceivedMap::new(130);
        let c = m.clone();
        m.set_range(60, 10);
        assert!(c.test(60) && c.test(69) && !c.test(70) && !c.test(59));
        m.set_range(125, 100);
        assert!(c.test(129) && !c.test(130));
        assert_eq!(ReceivedMap::new(0).bits(), 0);
        assert!(!ReceivedMap::new(0).test(0));
    }

    #[test]
    fn from_raw_sees_c_memory() {
        let mut words: [Word; 2] = [0, 0];
        {
            let p = NonNull::new(words.as_mut_ptr()).unwrap();
            // SAFETY: two live words, accessed only through the map until
            // it is dropped at the end of this block.
            let m = unsafe { ReceivedMap::from_raw(p, 100) };
            m.set_range(63, 2);
        }
        assert_eq!(words, [1 << 63, 1]);
    }
}
