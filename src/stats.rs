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

/// A snapshot of the library's counters (the C ABI's `PostcopyRsStats`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
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

/// The number of counters: the fields of [`Stats`].
pub const NCOUNTERS: usize = 16;

/// One counter: its index is its field's position in [`Stats`] (and in the
/// C ABI's `PostcopyRsStats`, checked by a test there).
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
/// [`Stats`] and the pre-paging counters: a counter is an index.
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
pub fn snapshot() -> Stats {
    let v = STATS.iter().fold([0u64; NCOUNTERS], |mut sum, s| {
        for (t, x) in sum.iter_mut().zip(s.0.load()) {
            *t = t.wrapping_add(x);
        }
        sum
    });
    Stats {
        discard_blocks: v[Counter::DiscardBlocks as usize],
        discard_runs: v[Counter::DiscardRuns as usize],
        discard_pages: v[Counter::DiscardPages as usize],
        hostpage_bits_set: v[Counter::HostpageBitsSet as usize],
        pages_placed: v[Counter::PagesPlaced as usize],
        zero_pages_placed: v[Counter::ZeroPagesPlaced as usize],
        bytes_placed: v[Counter::BytesPlaced as usize],
        eexist: v[Counter::Eexist as usize],
        eagain_retries: v[Counter::EagainRetries as usize],
        place_ioctls: v[Counter::PlaceIoctls as usize],
        faults_read: v[Counter::FaultsRead as usize],
        fault_reads: v[Counter::FaultReads as usize],
        pages_requested: v[Counter::PagesRequested as usize],
        requests_deduped: v[Counter::RequestsDeduped as usize],
        fault_thread_pauses: v[Counter::FaultThreadPauses as usize],
        events_ignored: v[Counter::EventsIgnored as usize],
    }
}

/// Zero every counter.
pub fn reset() {
    STATS.iter().for_each(|s| s.0.reset());
}

#[cfg(test)]
mod tests {
    use super::*;

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
