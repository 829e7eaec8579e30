// SPDX-License-Identifier: GPL-2.0-or-later
//! Destination side: how long a faulting thread waited for its page.
//!
//! Per host page, from the first fault on it that the fault thread reads
//! to the placement that resolves it: the return of the library's
//! `UFFDIO_COPY`/`UFFDIO_ZEROPAGE`, which wakes the faulting threads.  That
//! end is inside the library for every embedder, and on QEMU 10.0 and 10.2
//! alike, whatever each does afterwards under its own mutex.
//!
//! The histogram has QEMU 10.1's `postcopy-latency-dist` buckets
//! (`blocktime_latency_account()` in migration/postcopy-ram.c): bucket N
//! counts latencies of `[2^N, 2^(N+1))` µs, bucket 0 also 0 µs, and the
//! last one everything from `2^23` µs up.  QEMU counts one sample per
//! blocked thread and page; this counts one per host page (the first
//! fault), so the two agree when one thread waits per page.
//!
//! Lock-free: the fault thread notes a first fault in a fixed table of
//! atomics (no allocation), a placement takes the page's entry back and
//! adds one sample to atomic buckets.  Process-wide, like the counters.
//!
//! A fault read after its page was placed was resolved before it could be
//! timed, and gives no sample: the fault thread re-checks the received
//! bitmap after noting the fault, and the placement looks for an entry
//! after marking the page received, each behind a `SeqCst` fence, so one
//! of them sees the other.  An embedder that marks pages received itself,
//! after the placement returns (QEMU 10.2), leaves a window of a few µs in
//! which such a fault is noted and not taken back; it is dropped when the
//! fault thread stops.

use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};

/// Buckets in [`Latency::buckets`]: QEMU's `BLOCKTIME_LATENCY_BUCKET_N`.
pub const NBUCKETS: usize = 24;

/// Fault-to-placement latency, per host page (the C ABI's
/// `PostcopyRsLatency`).  Latencies are in microseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Latency {
    /// Samples: host pages whose first fault a placement resolved (the
    /// sum of `buckets`).
    pub count: u64,
    /// Sum of the samples (the mean is `sum_us / count`).
    pub sum_us: u64,
    /// The largest sample.
    pub max_us: u64,
    /// Median: an upper bound, the end of the bucket it is in (every
    /// sample in that bucket is below it), at most `max_us`.  0 without
    /// samples.
    pub p50_us: u64,
    /// 99th percentile, bounded the same way.
    pub p99_us: u64,
    /// First faults noted and not resolved yet.
    pub pending: u64,
    /// First faults not timed: no free entry near the page's slot in the
    /// table of pending faults.
    pub untracked: u64,
    /// Noted faults still unresolved when their fault thread stopped.
    pub abandoned: u64,
    /// `buckets[N]`: samples of `[2^N, 2^(N+1))` us (bucket 0 from 0, the
    /// last one without an end), as QEMU's `postcopy-latency-dist`.
    pub buckets: [u64; NBUCKETS],
}

/// The bucket of a latency of `us` microseconds: `floor(log2(us))`, 0 for
/// 0, at most the last bucket (QEMU's `blocktime_latency_account()`).
pub fn bucket_of(us: u64) -> usize {
    if us == 0 {
        return 0;
    }
    (us.ilog2() as usize).min(NBUCKETS - 1)
}

/// The latency at or below which `permille`/1000 of the samples are, as
/// the exclusive end of its bucket clamped to `max_us` (the last bucket has
/// no end: `max_us`).  0 without samples.
pub fn percentile(buckets: &[u64; NBUCKETS], max_us: u64, permille: u64) -> u64 {
    let count: u64 = buckets.iter().sum();
    if count == 0 {
        return 0;
    }
    // The rank of the sample: ceil(count * permille / 1000), at least 1.
    let rank = (u128::from(count) * u128::from(permille))
        .div_ceil(1000)
        .max(1);
    let mut seen = 0u128;
    for (i, &n) in buckets.iter().enumerate() {
        seen += u128::from(n);
        if seen >= rank {
            if i == NBUCKETS - 1 {
                return max_us;
            }
            return (1u64 << (i + 1)).min(max_us);
        }
    }
    max_us
}

// The histogram.

static BUCKETS: [AtomicU64; NBUCKETS] = [const { AtomicU64::new(0) }; NBUCKETS];
static SUM_US: AtomicU64 = AtomicU64::new(0);
static MAX_US: AtomicU64 = AtomicU64::new(0);
static UNTRACKED: AtomicU64 = AtomicU64::new(0);
static ABANDONED: AtomicU64 = AtomicU64::new(0);

/// Add one sample of `ns` nanoseconds.
fn record(ns: u64) {
    let us = ns / 1000;
    BUCKETS[bucket_of(us)].fetch_add(1, Ordering::Relaxed);
    SUM_US.fetch_add(us, Ordering::Relaxed);
    MAX_US.fetch_max(us, Ordering::Relaxed);
}

/// The histogram now, with its percentiles.  Not one atomic snapshot: a
/// sample added meanwhile may be in some figures and not others.
pub fn snapshot() -> Latency {
    let buckets: [u64; NBUCKETS] = std::array::from_fn(|i| BUCKETS[i].load(Ordering::Relaxed));
    let max_us = MAX_US.load(Ordering::Relaxed);
    Latency {
        count: buckets.iter().sum(),
        sum_us: SUM_US.load(Ordering::Relaxed),
        max_us,
        p50_us: percentile(&buckets, max_us, 500),
        p99_us: percentile(&buckets, max_us, 990),
        pending: PENDING.load(Ordering::Relaxed),
        untracked: UNTRACKED.load(Ordering::Relaxed),
        abandoned: ABANDONED.load(Ordering::Relaxed),
        buckets,
    }
}

/// Zero the histogram and its counters.  Faults noted and still pending
/// stay: one placed after the reset is a sample of the new histogram.
pub fn reset() {
    for a in BUCKETS
        .iter()
        .chain([&SUM_US, &MAX_US, &UNTRACKED, &ABANDONED])
    {
        a.store(0, Ordering::Relaxed);
    }
}

// The table of pending first faults: open addressing over a fixed array,
// a page's entry in one of PROBES slots from its hash.  A slot's key is 0
// (free), BUSY (being filled) or the host page's address (never 0 or 1:
// pages are aligned), and only a key CAS from 0 (by the fault thread) or
// from the page (by whoever takes the entry back) changes hands.

const SLOTS: usize = 8192;
const PROBES: usize = 16;
const BUSY: u64 = 1;
/// An entry this old may be replaced when its neighbourhood is full: a
/// page that never came (a failed migration) should not block the slot.
const STALE_NS: u64 = 60_000_000_000;

static KEYS: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
static START_NS: [AtomicU64; SLOTS] = [const { AtomicU64::new(0) }; SLOTS];
/// Entries in the table: lets a placement skip the lookup when none are.
static PENDING: AtomicU64 = AtomicU64::new(0);
/// Whether faults are timed.  Only the fault benchmark turns it off, to
/// measure what timing costs the fault path.
static ENABLED: AtomicBool = AtomicBool::new(true);

/// Time faults (the default) or not, from the next fault on; an entry
/// noted before is left pending (and abandoned when its thread stops).
/// For benchmarks: the C ABI does not offer it.
#[doc(hidden)]
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Whether faults are timed ([`set_enabled`]).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

fn slots(page: u64) -> impl Iterator<Item = usize> {
    // Fibonacci hashing of the 4 KiB frame number.
    let h = ((page >> 12).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 51) as usize;
    (0..PROBES).map(move |i| (h + i) % SLOTS)
}

/// Now, in nanoseconds of `CLOCK_MONOTONIC`.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a live timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    (ts.tv_sec as u64)
        .wrapping_mul(1_000_000_000)
        .wrapping_add(ts.tv_nsec as u64)
}

/// The fault thread read a fault on host page `page` at `t` (ns).  Notes it
/// unless the page is pending already (not a first fault).  Returns true
/// if noted: the caller then re-checks that the page is still missing
/// (after this function's fence) and calls [`cancel`] if not.
pub fn begin(page: u64, t: u64) -> bool {
    if !enabled() {
        return false;
    }
    // One pass over the keys: is the page pending, and where is the first
    // free slot.  The start times are only read when the neighbourhood is
    // full (below).
    let mut first_free = None;
    for (k, s) in slots(page).enumerate() {
        let key = KEYS[s].load(Ordering::Acquire);
        if key == page {
            return false;
        }
        if key == 0 && first_free.is_none() {
            first_free = Some(k);
        }
    }
    let mut noted = false;
    if let Some(k) = first_free {
        for s in slots(page).skip(k) {
            if KEYS[s]
                .compare_exchange(0, BUSY, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                START_NS[s].store(t, Ordering::Relaxed);
                KEYS[s].store(page, Ordering::Release);
                PENDING.fetch_add(1, Ordering::Relaxed);
                noted = true;
                break;
            }
        }
    }
    let oldest = if noted { None } else { oldest_entry(page) };
    if !noted {
        // Full: replace the oldest entry if it is stale (no sample for it).
        match oldest {
            Some((s, k, at))
                if t.saturating_sub(at) > STALE_NS
                    && KEYS[s]
                        .compare_exchange(k, BUSY, Ordering::Acquire, Ordering::Relaxed)
                        .is_ok() =>
            {
                ABANDONED.fetch_add(1, Ordering::Relaxed);
                START_NS[s].store(t, Ordering::Relaxed);
                KEYS[s].store(page, Ordering::Release);
                noted = true;
            }
            _ => {
                UNTRACKED.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    if noted {
        // Pairs with the fence in `end`: either this thread's re-check of
        // the received bitmap sees the placement, or the placement sees
        // the entry.  (Nothing to re-check when nothing was noted.)
        fence(Ordering::SeqCst);
    }
    noted
}

/// The oldest entry of `page`'s neighbourhood: (slot, key, start).
fn oldest_entry(page: u64) -> Option<(usize, u64, u64)> {
    let mut oldest: Option<(usize, u64, u64)> = None;
    for s in slots(page) {
        let k = KEYS[s].load(Ordering::Acquire);
        if k > BUSY {
            let at = START_NS[s].load(Ordering::Relaxed);
            if oldest.map_or(true, |(_, _, o)| at < o) {
                oldest = Some((s, k, at));
            }
        }
    }
    oldest
}

/// Take `page`'s entry back if it is in the table: its start, if this
/// call took it.
fn take(page: u64) -> Option<u64> {
    for s in slots(page) {
        if KEYS[s].load(Ordering::Acquire) == page {
            let at = START_NS[s].load(Ordering::Relaxed);
            if KEYS[s]
                .compare_exchange(page, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                PENDING.fetch_sub(1, Ordering::Relaxed);
                return Some(at);
            }
            return None;
        }
    }
    None
}

/// The fault noted by [`begin`] was resolved before it was read (its page
/// is received): drop it without a sample.
pub fn cancel(page: u64) {
    take(page);
}

/// Host pages `first, first + page_size, ...` (`npages` of them) were just
/// placed (or found present and woken), and marked received if the library
/// does that: one sample per page with a pending first fault.
pub fn end(first: u64, page_size: u64, npages: u64) {
    if !enabled() {
        return;
    }
    // Pairs with the fence in `begin`.
    fence(Ordering::SeqCst);
    // Background pages nobody faulted on, the most: no clock, no lookup.
    if PENDING.load(Ordering::Relaxed) == 0 {
        return;
    }
    end_at(first, page_size, npages, now_ns());
}

/// [`end`] at time `t` (ns).
fn end_at(first: u64, page_size: u64, npages: u64, t: u64) {
    for i in 0..npages {
        if let Some(at) = take(first.wrapping_add(i.wrapping_mul(page_size))) {
            record(t.saturating_sub(at));
        }
    }
}

/// A fault thread is stopping: drop its unresolved entries, those of pages
/// in `ranges` (`(start, len)` of its blocks), counting them abandoned.
pub fn abandon(ranges: &[(u64, u64)]) {
    if ranges.is_empty() || PENDING.load(Ordering::Relaxed) == 0 {
        return;
    }
    for key in &KEYS {
        let k = key.load(Ordering::Acquire);
        if k > BUSY
            && ranges.iter().any(|&(s, l)| k >= s && k - s < l)
            && key
                .compare_exchange(k, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            PENDING.fetch_sub(1, Ordering::Relaxed);
            ABANDONED.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_match_qemu() {
        // QEMU: time_us ? 63 - clz64(time_us) : 0, capped at N - 1.
        let qemu = |us: u64| {
            if us == 0 {
                0
            } else {
                ((63 - us.leading_zeros()) as usize).min(NBUCKETS - 1)
            }
        };
        for us in (0..5000).chain([
            (1 << 22) - 1,
            1 << 22,
            (1 << 23) - 1,
            1 << 23,
            (1 << 24) - 1,
            1 << 24,
            1 << 40,
            u64::MAX,
        ]) {
            assert_eq!(bucket_of(us), qemu(us), "{us} us");
        }
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(1), 0);
        assert_eq!(bucket_of(2), 1);
        assert_eq!(bucket_of(3), 1);
        assert_eq!(bucket_of(4), 2);
        assert_eq!(bucket_of(20_000), 14); // [16384, 32768) us
        assert_eq!(bucket_of(u64::MAX), 23);
    }

    fn hist(samples: &[u64]) -> ([u64; NBUCKETS], u64) {
        let mut b = [0; NBUCKETS];
        for &s in samples {
            b[bucket_of(s)] += 1;
        }
        (b, samples.iter().copied().max().unwrap_or(0))
    }

    fn pct(samples: &[u64], permille: u64) -> u64 {
        let (b, max) = hist(samples);
        percentile(&b, max, permille)
    }

    #[test]
    fn percentiles_are_bucket_upper_bounds() {
        assert_eq!(pct(&[], 500), 0);
        // One sample: every percentile is its bucket's end, clamped to it.
        assert_eq!(pct(&[100], 500), 100);
        assert_eq!(pct(&[100], 990), 100);
        // 99 samples at 10 us, one at 5000 us: p50 and p99 in [8, 16).
        let mut one_slow = vec![10; 99];
        one_slow.push(5000);
        assert_eq!(pct(&one_slow, 500), 16);
        assert_eq!(pct(&one_slow, 990), 16);
        assert_eq!(pct(&one_slow, 1000), 5000);
        // 98 + 2: the 99th sample is a slow one.
        let mut two_slow = vec![10; 98];
        two_slow.extend([5000, 6000]);
        assert_eq!(pct(&two_slow, 990), 6000); // [4096, 8192) clamped
        assert_eq!(pct(&two_slow, 500), 16);
        // The top bucket has no end: the maximum.
        assert_eq!(pct(&[1, 1 << 30], 990), 1 << 30);
        assert_eq!(pct(&[1, 1 << 30], 500), 2); // [0, 2)
    }

    /// Against the exact percentile of random samples: never below it,
    /// and below twice it (the bucket's end), or the maximum.
    #[test]
    fn percentiles_bound_the_exact_ones() {
        let mut x: u64 = 0x1234_5678;
        for n in [1usize, 2, 3, 10, 99, 100, 101, 1000, 4097] {
            let mut s: Vec<u64> = (0..n)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 1_000_000) >> (x % 20)
                })
                .collect();
            let (b, max) = hist(&s);
            s.sort_unstable();
            for p in [500u64, 990] {
                let rank = (n as u64 * p).div_ceil(1000).max(1) as usize;
                let exact = s[rank - 1];
                let got = percentile(&b, max, p);
                assert!(
                    got >= exact && (got <= 2 * exact.max(1) || got == max),
                    "n {n} p {p}: {got} for {exact}"
                );
            }
        }
    }

    // The table is process-wide: these tests use addresses no other test
    // maps (above the 47-bit user address space), and leave no entry.

    const BASE: u64 = 0xdead_0000_0000_0000;
    /// The two tests below share the table's slots.
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

    fn serial() -> std::sync::MutexGuard<'static, ()> {
        SERIAL
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    #[test]
    fn first_fault_to_placement() {
        let _g = serial();
        let p = BASE;
        assert!(begin(p, 1_000));
        // A second fault on the pending page is not a first fault.
        assert!(!begin(p, 2_000));
        let before = snapshot();
        end_at(p, 4096, 1, 21_001_000); // 21 ms later
        let after = snapshot();
        assert_eq!(after.buckets[14], before.buckets[14] + 1);
        assert!(after.max_us >= 21_000);
        // Taken: a second end mark for the page gives no sample.
        end_at(p, 4096, 1, 30_000_000);
        assert_eq!(snapshot().buckets, after.buckets);
        // Cancelled: no sample either.
        assert!(begin(p + 4096, 5));
        cancel(p + 4096);
        end_at(p + 4096, 4096, 1, 10);
        assert_eq!(snapshot().buckets, after.buckets);
    }

    #[test]
    fn a_full_neighbourhood_is_untracked_then_abandoned() {
        let _g = serial();
        let base = BASE + (1 << 40);
        // Pages that hash to the same slot: probe a range until PROBES + 1
        // of them share a start slot.
        let first = slots(base).next().unwrap();
        let same: Vec<u64> = (0u64..1 << 22)
            .map(|i| base + (i << 12))
            .filter(|&p| slots(p).next() == Some(first))
            .take(PROBES + 1)
            .collect();
        assert_eq!(same.len(), PROBES + 1);
        let u0 = snapshot().untracked;
        for &p in &same[..PROBES] {
            assert!(begin(p, 0));
        }
        // Full, and none stale yet.
        assert!(!begin(same[PROBES], 1));
        assert_eq!(snapshot().untracked, u0 + 1);
        // Stale: the oldest is replaced.
        let a0 = snapshot().abandoned;
        assert!(begin(same[PROBES], STALE_NS + 10));
        assert_eq!(snapshot().abandoned, a0 + 1);
        abandon(&[(base, 1 << 40)]);
        assert_eq!(snapshot().abandoned, a0 + 1 + PROBES as u64);
        for &p in &same {
            assert_eq!(take(p), None);
        }
    }
}
