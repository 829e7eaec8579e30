// SPDX-License-Identifier: GPL-2.0-or-later
//! Process-wide counters of what the library did, for tests, the demo and
//! reporting.  Relaxed atomics: they are statistics, not synchronisation.
//!
//! The fault thread, QEMU's main load thread and its preempt thread all
//! count, several times per page: [`STATS`] is split into cache-line
//! aligned shards, one per writing thread (threads past [`SHARDS`] share),
//! so that a counter bump is an uncontended add on a line the thread
//! keeps, and a snapshot sums the shards.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of the library's counters (`postcopy_rs_get_stats`).
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PostcopyRsStats {
    /// RAMBlocks walked by the source-side discard.
    pub discard_blocks: u64,
    /// Discard runs sent (`postcopy_discard_send_range` calls).
    pub discard_runs: u64,
    /// Target pages covered by those runs.
    pub discard_pages: u64,
    /// Bits set by host-page canonicalisation (added to `migration_dirty_pages`).
    pub hostpage_bits_set: u64,
    /// Host pages placed with `UFFDIO_COPY`.
    pub pages_placed: u64,
    /// Host pages placed as zero pages (`UFFDIO_ZEROPAGE`, or a zero copy
    /// on hugetlbfs).
    pub zero_pages_placed: u64,
    /// Bytes placed by either.
    pub bytes_placed: u64,
    /// Placements refused because the page was already present (EEXIST).
    pub eexist: u64,
    /// Placement retries after EAGAIN or a partial copy.
    pub eagain_retries: u64,
    /// Placement ioctls issued.
    pub place_ioctls: u64,
    /// `uffd_msg` records read by the fault thread.
    pub faults_read: u64,
    /// `read()` calls on the userfaultfd that returned messages.
    pub fault_reads: u64,
    /// Page requests sent to the source.
    pub pages_requested: u64,
    /// Faults not requested because the page was in flight or received.
    pub requests_deduped: u64,
    /// Times the fault thread paused for a broken return path.
    pub fault_thread_pauses: u64,
    /// Non-pagefault uffd events ignored.
    pub events_ignored: u64,
}

const NCOUNTERS: usize = 16;
static_assertions::assert_eq_size!(PostcopyRsStats, [u64; NCOUNTERS]);
static_assertions::assert_eq_align!(PostcopyRsStats, u64);

/// One counter: its index is its field's position in [`PostcopyRsStats`]
/// (checked by a test).
#[derive(Debug, Clone, Copy)]
#[allow(missing_docs)]
pub enum Counter {
    DiscardBlocks,
    DiscardRuns,
    DiscardPages,
    HostpageBitsSet,
    PagesPlaced,
    ZeroPagesPlaced,
    BytesPlaced,
    Eexist,
    EagainRetries,
    PlaceIoctls,
    FaultsRead,
    FaultReads,
    PagesRequested,
    RequestsDeduped,
    FaultThreadPauses,
    EventsIgnored,
}

/// A fixed table of relaxed atomic counters, the storage behind
/// [`PostcopyRsStats`] and the pre-paging counters: a counter is an index.
pub struct Counters<const N: usize>([AtomicU64; N]);

impl<const N: usize> Counters<N> {
    /// All zero.
    pub const fn new() -> Self {
        Counters([const { AtomicU64::new(0) }; N])
    }

    /// Add `n` to counter `i`.
    #[inline]
    pub fn add(&self, i: usize, n: u64) {
        self.0[i].fetch_add(n, Relaxed);
    }

    /// Raise counter `i` to `v` if it is below (a maximum, not a sum).
    pub fn max(&self, i: usize, v: u64) {
        self.0[i].fetch_max(v, Relaxed);
    }

    /// Every counter now.
    pub fn load(&self) -> [u64; N] {
        std::array::from_fn(|i| self.0[i].load(Relaxed))
    }

    /// Zero every counter.
    pub fn reset(&self) {
        self.0.iter().for_each(|c| c.store(0, Relaxed));
    }
}

impl<const N: usize> Default for Counters<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Shards of [`STATS`]: more than the threads that count (fault, main
/// load, preempt, and a source's migration thread).
const SHARDS: usize = 8;

/// One writer's counters, on cache lines of their own (two 64-byte lines
/// with their adjacent-line prefetch partner).
#[repr(align(128))]
struct Shard(Counters<NCOUNTERS>);

static STATS: [Shard; SHARDS] = [const { Shard(Counters::new()) }; SHARDS];

/// The calling thread's shard: given out in turn on a thread's first count.
fn shard() -> &'static Counters<NCOUNTERS> {
    use std::sync::atomic::AtomicUsize;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: std::cell::Cell<usize> = const { std::cell::Cell::new(usize::MAX) };
    }
    let i = MINE.with(|m| {
        if m.get() == usize::MAX {
            m.set(NEXT.fetch_add(1, Relaxed) % SHARDS);
        }
        m.get()
    });
    &STATS[i].0
}

/// Add `n` to a counter.
#[inline]
pub fn add(c: Counter, n: u64) {
    shard().add(c as usize, n);
}

/// The counters now: the sum of the shards.
pub fn snapshot() -> PostcopyRsStats {
    let raw = STATS.iter().fold([0u64; NCOUNTERS], |mut sum, s| {
        for (t, v) in sum.iter_mut().zip(s.0.load()) {
            *t = t.wrapping_add(v);
        }
        sum
    });
    // SAFETY: PostcopyRsStats is repr(C) with NCOUNTERS u64 fields and no
    // padding (size and alignment asserted above), so it has the layout of
    // [u64; NCOUNTERS], and every bit pattern is a valid u64.
    unsafe { std::mem::transmute::<[u64; NCOUNTERS], PostcopyRsStats>(raw) }
}

/// Zero every counter.
pub fn reset() {
    STATS.iter().for_each(|s| s.0.reset());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_indices_match_struct_fields() {
        macro_rules! check {
            ($($c:ident => $f:ident),*) => {$(
                assert_eq!(
                    Counter::$c as usize * 8,
                    std::mem::offset_of!(PostcopyRsStats, $f),
                    stringify!($f)
                );
            )*};
        }
        check!(DiscardBlocks => discard_blocks, DiscardRuns => discard_runs,
            DiscardPages => discard_pages, HostpageBitsSet => hostpage_bits_set,
            PagesPlaced => pages_placed, ZeroPagesPlaced => zero_pages_placed,
            BytesPlaced => bytes_placed, Eexist => eexist, EagainRetries => eagain_retries,
            PlaceIoctls => place_ioctls, FaultsRead => faults_read, FaultReads => fault_reads,
            PagesRequested => pages_requested, RequestsDeduped => requests_deduped,
            FaultThreadPauses => fault_thread_pauses, EventsIgnored => events_ignored);
        assert_eq!(Counter::EventsIgnored as usize + 1, NCOUNTERS);
    }

    /// Counts from many threads (more than the shards) all add up.
    #[test]
    fn shards_sum_up() {
        let before = snapshot().events_ignored;
        std::thread::scope(|s| {
            for _ in 0..2 * SHARDS + 1 {
                s.spawn(|| (0..1000).for_each(|_| add(Counter::EventsIgnored, 1)));
            }
        });
        // Other tests may count too, never down (none resets here).
        assert!(snapshot().events_ignored >= before + (2 * SHARDS as u64 + 1) * 1000);
        assert_eq!(std::mem::align_of::<Shard>(), 128);
    }
}
