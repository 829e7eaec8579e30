// SPDX-License-Identifier: GPL-2.0-or-later
//! The counters and the latency histogram, as C reads them.  Both structs
//! are outputs that may grow: a getter writes at most the caller's
//! `sizeof`, so a caller built against an older header gets the fields it
//! knows.

use super::boundary::{boundary, Void};
use super::convert::copy_out;
use crate::{latency, prepage, stats};
use std::os::raw::c_int;

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

assert_same_layout!(PostcopyRsStats, [u64; stats::NCOUNTERS]);

impl From<stats::Stats> for PostcopyRsStats {
    fn from(s: stats::Stats) -> Self {
        let stats::Stats {
            discard_blocks,
            discard_runs,
            discard_pages,
            hostpage_bits_set,
            pages_placed,
            zero_pages_placed,
            bytes_placed,
            eexist,
            eagain_retries,
            place_ioctls,
            faults_read,
            fault_reads,
            pages_requested,
            requests_deduped,
            fault_thread_pauses,
            events_ignored,
        } = s;
        PostcopyRsStats {
            discard_blocks,
            discard_runs,
            discard_pages,
            hostpage_bits_set,
            pages_placed,
            zero_pages_placed,
            bytes_placed,
            eexist,
            eagain_retries,
            place_ioctls,
            faults_read,
            fault_reads,
            pages_requested,
            requests_deduped,
            fault_thread_pauses,
            events_ignored,
        }
    }
}

/// Buckets in `PostcopyRsLatency.buckets`: QEMU's
/// `BLOCKTIME_LATENCY_BUCKET_N`.
pub const POSTCOPY_RS_LATENCY_BUCKETS: usize = 24;
const _: () = assert!(POSTCOPY_RS_LATENCY_BUCKETS == latency::NBUCKETS);

/// Fault-to-placement latency, per host page (`postcopy_rs_get_latency`).
/// Latencies are in microseconds.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PostcopyRsLatency {
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
    pub buckets: [u64; POSTCOPY_RS_LATENCY_BUCKETS],
}

assert_same_layout!(PostcopyRsLatency, [u64; 8 + POSTCOPY_RS_LATENCY_BUCKETS]);

impl From<latency::Latency> for PostcopyRsLatency {
    fn from(s: latency::Latency) -> Self {
        let latency::Latency {
            count,
            sum_us,
            max_us,
            p50_us,
            p99_us,
            pending,
            untracked,
            abandoned,
            buckets,
        } = s;
        PostcopyRsLatency {
            count,
            sum_us,
            max_us,
            p50_us,
            p99_us,
            pending,
            untracked,
            abandoned,
            buckets,
        }
    }
}

/// Copy the library's counters into `*out`.
///
/// `size` is the caller's `sizeof(PostcopyRsStats)`: the library writes
/// the first `size` bytes of its own struct at most, so that a caller built
/// against this header keeps working when later versions append fields
/// (as for `postcopy_rs_get_latency()` and
/// `postcopy_rs_get_prepage_stats()`).  Returns the number of bytes
/// written, or `-EFAULT` if `out` is NULL.
///
/// # Safety
/// `out`, if not NULL, must be writable for `size` bytes.
#[no_mangle]
pub unsafe extern "C" fn postcopy_rs_get_stats(out: *mut PostcopyRsStats, size: usize) -> c_int {
    boundary("postcopy_rs_get_stats", || {
        // SAFETY: NULL or writable for `size` bytes (contract).
        unsafe { copy_out(out, size, &PostcopyRsStats::from(stats::snapshot())) }
    })
}

/// Zero the library's counters, the pre-paging ones and the latency
/// histogram (`postcopy_rs_get_latency()`).  First faults already noted
/// stay pending: one resolved after the reset is a sample of the new
/// histogram.
#[no_mangle]
pub extern "C" fn postcopy_rs_reset_stats() {
    boundary("postcopy_rs_reset_stats", || {
        stats::reset();
        prepage::reset_stats();
        latency::reset();
        Ok(Void)
    });
}

/// Copy the destination's fault-to-placement latency histogram into
/// `*out`: per host page, from the first fault the fault thread read on it
/// to the placement that resolved it, in QEMU's `postcopy-latency-dist`
/// buckets, with p50 and p99 (see `PostcopyRsLatency`).
///
/// `size` is the caller's `sizeof(PostcopyRsLatency)`: the library writes
/// the first `size` bytes of its own struct at most, so that a caller built
/// against this header keeps working when later versions append fields.
/// Returns the number of bytes written, or `-EFAULT` if `out` is NULL.
///
/// # Safety
/// `out`, if not NULL, must be writable for `size` bytes.
#[no_mangle]
pub unsafe extern "C" fn postcopy_rs_get_latency(
    out: *mut PostcopyRsLatency,
    size: usize,
) -> c_int {
    boundary("postcopy_rs_get_latency", || {
        // SAFETY: NULL or writable for `size` bytes (contract).
        unsafe { copy_out(out, size, &PostcopyRsLatency::from(latency::snapshot())) }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{Counter, NCOUNTERS};

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
}
