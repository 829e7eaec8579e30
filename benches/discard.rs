// SPDX-License-Identifier: GPL-2.0-or-later
//! Source-side discard on a 1 TiB guest: 2^28 target pages, a 32 MiB bitmap.
//!
//! For each pattern and host ratio (1 and 512) it times canonicalisation
//! plus run extraction, and in the same run:
//! - `floor`: one plain read of the same 32 MiB (an OR over every word);
//! - `qemu-algo`: QEMU 10.0's C algorithm (`find_next_bit` / `find_next_zero_bit`
//!   runs and the `test_and_set_bit` host-page fix-up), transliterated.
//!
//! `scripts/cargo-bench-report.py` turns criterion's estimates into the ratios in
//! docs/BENCHMARKS.md.
#![allow(missing_docs)]

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use postcopy_rs::bitmap::{find_next_bit, find_next_zero_bit, Word};
use postcopy_rs::discard::{chunk_and_runs, HostRatio};
use std::time::{Duration, Instant};

const NBITS: usize = 1 << 28;
const NWORDS: usize = NBITS / 64;

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

fn pattern(name: &str) -> Vec<Word> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut m = vec![0 as Word; NWORDS];
    match name {
        "empty" => {}
        "full" => m.fill(!0),
        "random-0.1%" => {
            for _ in 0..NBITS / 1000 {
                let b = (rng.next() % NBITS as u64) as usize;
                m[b / 64] |= 1 << (b % 64);
            }
        }
        "random-50%" => m.iter_mut().for_each(|w| *w = rng.next()),
        "alternating" => m.fill(0x5555_5555_5555_5555),
        "runs-of-37" => {
            for b in (0..NBITS).filter(|b| b % 74 < 37) {
                m[b / 64] |= 1 << (b % 64);
            }
        }
        _ => unreachable!(),
    }
    m
}

/// QEMU 10.0 migration/ram.c: `postcopy_chunk_hostpages_pass` followed by
/// `postcopy_send_discard_bm_ram`, with the send replaced by a counter.
fn qemu_algo(bitmap: &mut [Word], pages: usize, host_ratio: usize) -> (u64, u64) {
    let mut dirty = 0u64;
    if host_ratio != 1 {
        let mut run_start = find_next_bit(bitmap, pages, 0);
        while run_start < pages {
            if run_start % host_ratio == 0 {
                run_start = find_next_zero_bit(bitmap, pages, run_start + 1);
            }
            if run_start % host_ratio != 0 {
                let fixup = run_start / host_ratio * host_ratio;
                run_start = fixup + host_ratio;
                for page in fixup..fixup + host_ratio {
                    // test_and_set_bit
                    let (w, b) = (page / 64, page % 64);
                    let old = bitmap[w] >> b & 1;
                    bitmap[w] |= 1 << b;
                    dirty += u64::from(old == 0);
                }
            }
            run_start = find_next_bit(bitmap, pages, run_start);
        }
    }
    let mut runs = 0u64;
    let mut current = 0;
    while current < pages {
        let one = find_next_bit(bitmap, pages, current);
        if one >= pages {
            break;
        }
        let zero = find_next_zero_bit(bitmap, pages, one + 1);
        let len = zero.min(pages) - one;
        runs += 1;
        black_box((one, len));
        current = one + len;
    }
    (dirty, runs)
}

fn ours(bitmap: &mut [Word], ratio: HostRatio) -> (u64, u64) {
    let mut runs = 0u64;
    let dirty = chunk_and_runs(bitmap, NBITS, ratio, |s, l| {
        runs += 1;
        black_box((s, l));
    })
    .unwrap();
    (dirty, runs)
}

fn timed(
    iters: u64,
    base: &[Word],
    scratch: &mut [Word],
    mut f: impl FnMut(&mut [Word]),
) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        scratch.copy_from_slice(base);
        let t = Instant::now();
        f(scratch);
        total += t.elapsed();
    }
    total
}

#[allow(
    clippy::significant_drop_tightening,
    reason = "nursery false positive: the group is consumed by finish()"
)]
fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("discard-1TiB");
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));

    // Every timed run starts from a fresh copy of its input, made untimed,
    // so that all of them (the floor too) see the same cache state.
    let floor_base = pattern("random-50%");
    let mut scratch = floor_base.clone();
    g.bench_function("floor", |b| {
        b.iter_custom(|iters| {
            timed(iters, &floor_base, &mut scratch, |m| {
                black_box(black_box(&*m).iter().fold(0, |a, &w| a | w));
            })
        })
    });

    let mut counts = String::from("{\n");
    for name in [
        "empty",
        "full",
        "random-0.1%",
        "random-50%",
        "alternating",
        "runs-of-37",
    ] {
        let base = pattern(name);
        for ratio in [1usize, 512] {
            let r = HostRatio::new(ratio as u64).unwrap();
            // Both implementations must agree before either is timed.
            let (mut a, mut q) = (base.clone(), base.clone());
            let ra = ours(&mut a, r);
            let rq = qemu_algo(&mut q, NBITS, ratio);
            assert_eq!(
                ra, rq,
                "{name}/{ratio}: results differ from QEMU's algorithm"
            );
            assert!(a == q, "{name}/{ratio}: canonical bitmaps differ");
            counts.push_str(&format!("  \"{name}/{ratio}\": {},\n", ra.1));

            g.bench_function(format!("ours/{name}/{ratio}"), |b| {
                b.iter_custom(|iters| {
                    timed(iters, &base, &mut scratch, |m| {
                        black_box(ours(m, r));
                    })
                })
            });
            g.bench_function(format!("qemu-algo/{name}/{ratio}"), |b| {
                b.iter_custom(|iters| {
                    timed(iters, &base, &mut scratch, |m| {
                        black_box(qemu_algo(m, NBITS, ratio));
                    })
                })
            });
        }
    }
    g.finish();
    counts.push_str("  \"_\": 0\n}\n");
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"));
    let _ = std::fs::create_dir_all(dir);
    std::fs::write(dir.join("discard-runs.json"), counts).expect("write run counts");
}

criterion_group!(benches, bench);
criterion_main!(benches);
