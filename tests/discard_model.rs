// SPDX-License-Identifier: GPL-2.0-or-later
//! Property tests of the bitmap and discard algorithms against a plain
//! bit-by-bit reference model.

use postcopy_rs::bitmap::{self, bits_to_longs, Word};
use postcopy_rs::discard::{self, DiscardSink, HostRatio, SourceBlock};
use proptest::prelude::*;
use std::ffi::{CStr, CString};

/// The model: a Vec<bool>, and QEMU's algorithm as the seed patch wrote it,
/// one bit at a time.
fn model_chunk(bits: &mut [bool], ratio: usize) -> u64 {
    let mut newly = 0;
    for page in bits.chunks_mut(ratio) {
        if page.iter().any(|&b| b) {
            for b in page.iter_mut() {
                newly += u64::from(!*b);
                *b = true;
            }
        }
    }
    newly
}

fn model_runs(bits: &[bool]) -> Vec<(usize, usize)> {
    let mut runs = vec![];
    let mut i = 0;
    while i < bits.len() {
        if bits[i] {
            let s = i;
            while i < bits.len() && bits[i] {
                i += 1;
            }
            runs.push((s, i - s));
        } else {
            i += 1;
        }
    }
    runs
}

fn to_words(bits: &[bool], junk_tail: bool) -> Vec<Word> {
    let mut m = vec![0 as Word; bits_to_longs(bits.len())];
    for (i, &b) in bits.iter().enumerate() {
        if b {
            m[i / 64] |= 1 << (i % 64);
        }
    }
    // Bits beyond nbits belong to someone else: they must survive untouched.
    if junk_tail && bits.len() % 64 != 0 {
        *m.last_mut().unwrap() |= !bitmap::last_word_mask(bits.len());
    }
    m
}

fn from_words(m: &[Word], n: usize) -> Vec<bool> {
    (0..n).map(|i| bitmap::test_bit(m, i)).collect()
}

/// Every supported ratio class: 1, powers of two up to 64, multiples of 64
/// up to 1 GiB / 4 KiB.
fn ratio() -> impl Strategy<Value = usize> {
    prop_oneof![
        (0u32..=6).prop_map(|s| 1usize << s),
        (7u32..=18).prop_map(|s| 1usize << s),
    ]
}

/// A bitmap shape: density from empty to full, plus structured patterns.
fn bits_for(n: usize) -> impl Strategy<Value = Vec<bool>> {
    prop_oneof![
        Just(vec![false; n]),
        Just(vec![true; n]),
        (0..n.max(1)).prop_map(move |i| (0..n).map(|j| j == i).collect()),
        proptest::collection::vec(proptest::bool::weighted(0.01), n),
        proptest::collection::vec(proptest::bool::weighted(0.5), n),
        proptest::collection::vec(proptest::bool::weighted(0.97), n),
        (1usize..80, 1usize..80)
            .prop_map(move |(on, off)| { (0..n).map(|i| i % (on + off) < on).collect() }),
    ]
}

/// (ratio, host pages, bitmap): up to ~20000 bits (300 words, several
/// 64-word blocks) for small ratios, a few host pages for huge ones.
fn case() -> impl Strategy<Value = (usize, Vec<bool>, bool)> {
    ratio().prop_flat_map(|r| {
        let max_pages = (20_000 / r).clamp(3, 4096);
        (Just(r), 0..=max_pages, any::<bool>())
            .prop_flat_map(|(r, pages, junk)| (Just(r), bits_for(pages * r), Just(junk)))
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn chunk_and_runs_match_model((r, bits, junk) in case()) {
        let n = bits.len();
        let mut words = to_words(&bits, junk);
        let tail_before = words.last().copied();
        let mut runs = vec![];
        let newly = discard::chunk_and_runs(&mut words, n, HostRatio::new(r as u64).unwrap(),
            |s, l| runs.push((s, l))).unwrap();

        let mut model = bits.clone();
        let model_newly = model_chunk(&mut model, r);
        prop_assert_eq!(newly, model_newly);
        prop_assert_eq!(from_words(&words, n), model.clone());
        prop_assert_eq!(runs, model_runs(&model));
        if junk && n % 64 != 0 {
            let mask = !bitmap::last_word_mask(n);
            prop_assert_eq!(words.last().unwrap() & mask, tail_before.unwrap() & mask);
        }

        // The portable build of the same pass (the one above may be the
        // AVX2 one) must agree exactly.
        let mut words2 = to_words(&bits, junk);
        let mut runs2 = vec![];
        let newly2 = discard::chunk_and_runs_portable(&mut words2, n, HostRatio::new(r as u64).unwrap(),
            |s, l| runs2.push((s, l))).unwrap();
        prop_assert_eq!(newly2, model_newly);
        prop_assert_eq!(&words2, &words);
        prop_assert_eq!(runs2, model_runs(&model));
    }

    #[test]
    fn find_bits_match_model(bits in (1usize..300).prop_flat_map(bits_for), off in 0usize..320, junk in any::<bool>()) {
        let n = bits.len();
        let words = to_words(&bits, junk);
        let next_one = (off..n).find(|&i| bits[i]).unwrap_or(n);
        let next_zero = (off..n).find(|&i| !bits[i]).unwrap_or(n);
        prop_assert_eq!(bitmap::find_next_bit(&words, n, off), next_one);
        prop_assert_eq!(bitmap::find_next_zero_bit(&words, n, off), next_zero);
        prop_assert_eq!(bitmap::runs(&words, n).collect::<Vec<_>>(), model_runs(&bits));
        let mut v = vec![];
        bitmap::for_each_run(&words, n, |s, l| v.push((s, l)));
        prop_assert_eq!(v, model_runs(&bits));
    }

    #[test]
    fn set_and_clear_range_match_model(n in 1usize..400, a in 0usize..400, l in 0usize..400) {
        let start = a % n;
        let len = l.min(n - start);
        let mut words = vec![0 as Word; bits_to_longs(n)];
        bitmap::set_range(&mut words, start, len);
        let model: Vec<bool> = (0..n).map(|i| i >= start && i < start + len).collect();
        prop_assert_eq!(from_words(&words, n), model);
        bitmap::clear_range(&mut words, start, len);
        prop_assert!(words.iter().all(|&w| w == 0));
    }
}

#[test]
fn bad_ratio_and_length_leave_bitmap_unchanged() {
    let mut m = vec![0x1234 as Word; 4];
    let before = m.clone();
    HostRatio::new(6).unwrap_err();
    HostRatio::new(0).unwrap_err();
    let r = discard::chunk_hostpages(&mut m, 250, HostRatio::new(8).unwrap());
    assert!(matches!(r, Err(postcopy_rs::Error::Length { .. })), "{r:?}");
    assert_eq!(m, before);
}

#[derive(Default)]
struct Recorder(Vec<String>);

impl DiscardSink for Recorder {
    fn send_init(&mut self, name: &CStr) {
        self.0.push(format!("init {}", name.to_str().unwrap()));
    }
    fn send_range(&mut self, start: u64, len: u64) {
        self.0.push(format!("range {start} {len}"));
    }
    fn send_finish(&mut self) {
        self.0.push("finish".into());
    }
}

#[test]
fn discard_block_frames_runs_per_block() {
    let name = CString::new("pc.ram").unwrap();
    // 2 MiB pages, 4 KiB target pages: 1024 target pages, two host pages.
    let mut bmap = vec![0 as Word; 16];
    bmap[0] = 1 << 5;
    let mut rec = Recorder::default();
    let block = SourceBlock {
        name: &name,
        page_size: 2 << 20,
        used_length: 4 << 20,
        bmap: &mut bmap,
    };
    let sum = discard::discard_block(block, 4096, &mut rec).unwrap();
    assert_eq!(rec.0, vec!["init pc.ram", "range 0 512", "finish"]);
    assert_eq!((sum.runs, sum.pages, sum.newly_dirty), (1, 512, 511));

    // A block that is not a whole number of its pages: nothing is sent.
    let mut bad_rec = Recorder::default();
    let bad_block = SourceBlock {
        name: &name,
        page_size: 2 << 20,
        used_length: 3 << 20,
        bmap: &mut bmap,
    };
    discard::discard_block(bad_block, 4096, &mut bad_rec).unwrap_err();
    assert!(bad_rec.0.is_empty());
}
