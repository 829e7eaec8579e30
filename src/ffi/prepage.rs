// SPDX-License-Identifier: GPL-2.0-or-later
//! Pre-paging exports: turning it on for a running fault thread, and its
//! counters.  Kept apart from `dest.rs` so that `PostcopyRsFaultConfig`
//! and `PostcopyRsFaultOps` keep their size: a caller built against an
//! older header is never read past.

use super::boundary::boundary;
use super::convert::{block_ptr, copy_out};
use super::handles::{self, PostcopyRsFaultThread};
use crate::addr::{BlockHandle, HostAddr};
use crate::error::{Error, Result};
use crate::prepage::{self, RangeRequester, Settings};
use std::os::raw::{c_int, c_void};

/// Largest pre-paging window, in host pages, that
/// `postcopy_rs_fault_thread_set_prepage()` accepts.
pub const POSTCOPY_RS_PREPAGE_MAX_PAGES: u32 = 1024;
const _: () = assert!(POSTCOPY_RS_PREPAGE_MAX_PAGES == prepage::MAX_WINDOW);

/// Most bytes a pre-paging request asks for after the faulting page,
/// whatever the window (one page ahead on 2 MiB hugepages).
pub const POSTCOPY_RS_PREPAGE_MAX_BYTES: u64 = 2_097_152;
const _: () = assert!(POSTCOPY_RS_PREPAGE_MAX_BYTES == prepage::MAX_PREPAGE_BYTES);

/// Pre-paging counters (`postcopy_rs_get_prepage_stats`).  Pages are
/// host pages.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PostcopyRsPrepageStats {
    /// Page requests that carried pre-paged pages (more than one page).
    pub requests: u64,
    /// Pages pre-paged: requested beyond the faulting pages.
    pub pages: u64,
    /// Pre-paged pages a thread then faulted on while still in flight.
    pub hits_in_flight: u64,
    /// Pre-paged pages of runs the guest walked past (the stream's next
    /// fault was the first missing page after the run), not counted as
    /// in-flight hits: used most likely, but not observed page by page.
    pub hits_walked_past: u64,
    /// Pre-paged pages of runs dropped with no hit (stream replaced, or
    /// the fault thread paused): perhaps used without a fault, perhaps
    /// wasted.
    pub unconfirmed: u64,
    /// Streams started (faults that continued no stream).
    pub streams: u64,
    /// Times a window doubled.
    pub window_grows: u64,
    /// The largest window reached, in pages (a maximum, not a sum).
    pub max_window: u64,
}

assert_same_layout!(PostcopyRsPrepageStats, [u64; 8]);

impl From<prepage::Stats> for PostcopyRsPrepageStats {
    fn from(s: prepage::Stats) -> Self {
        let prepage::Stats {
            requests,
            pages,
            hits_in_flight,
            hits_walked_past,
            unconfirmed,
            streams,
            window_grows,
            max_window,
        } = s;
        PostcopyRsPrepageStats {
            requests,
            pages,
            hits_in_flight,
            hits_walked_past,
            unconfirmed,
            streams,
            window_grows,
            max_window,
        }
    }
}

/// Ask the source for `len` bytes of `block` from block offset `offset`
/// in one request (QEMU: one `MIG_RP_MSG_REQ_PAGES` of that length).  The
/// range is whole host pages, at least two; its first page is the one
/// that faulted, at `addr`.  Called on the fault thread with the
/// `opaque` of the thread's `PostcopyRsFaultOps`, for requests of more
/// than one page only (one page still goes through `request_page`).
///
/// Return 0 when the whole range was requested; a positive count of
/// bytes when only that much from `offset` was (at least the faulting
/// page: the rest is not counted as in flight); or a negative errno if
/// the return path is broken: the thread then pauses and retries, as for
/// `request_page`.
pub type PostcopyRsRequestRangeFn = Option<
    unsafe extern "C" fn(
        opaque: *mut c_void,
        block: *mut c_void,
        offset: u64,
        len: u64,
        addr: u64,
    ) -> i64,
>;

/// The C range callback and the fault ops' `opaque`.
struct CRange {
    f: unsafe extern "C" fn(*mut c_void, *mut c_void, u64, u64, u64) -> i64,
    opaque: *mut c_void,
}

// SAFETY: the contract of postcopy_rs_fault_thread_set_prepage() is that
// the callback may be called with `opaque` from the fault thread.
unsafe impl Send for CRange {}

impl RangeRequester for CRange {
    fn request_range(
        &mut self,
        handle: BlockHandle,
        offset: u64,
        len: u64,
        addr: HostAddr,
    ) -> Result<u64> {
        // SAFETY: callback contract (PostcopyRsRequestRangeFn).
        let r = unsafe { (self.f)(self.opaque, block_ptr(handle), offset, len, addr.get()) };
        if r < 0 {
            return Err(Error::Callback {
                name: "request_range",
                ret: c_int::try_from(r).unwrap_or(-libc::EIO),
            });
        }
        // 0 and over-long answers mean the whole range.
        Ok(u64::try_from(r).unwrap_or(0).min(len))
    }
}

/// Turn adaptive pre-paging on (or off) for a running fault thread.  On a
/// fault that leads to a request, the thread then asks for the faulting
/// page and up to `max_pages - 1` missing host pages after it in the same
/// block, in one `request` call starting at the faulting page; the
/// window adapts per stream of sequential faults (it grows while the
/// pre-paged pages are faulted on or walked past, and a stream that stops
/// being hit is dropped, so random faults request one page each).  Pre-paged
/// pages are in flight: only the first fault on one requests it again,
/// alone.  A request asks for at most `POSTCOPY_RS_PREPAGE_MAX_BYTES`
/// after the faulting page, one page ahead on 2 MiB hugepages.  The
/// policy is described in src/prepage.rs of the library's source;
/// `postcopy_rs_get_prepage_stats()` gives the counters.
///
/// `max_pages` 0 or 1, or a NULL `request`, turns it off: the
/// default, which requests exactly what QEMU's own thread does.  It
/// applies from the thread's next wake-up (this call wakes it).
///
/// Returns 0, `-EFAULT` for a NULL `t`, `-ESRCH` for a handle not live,
/// `-EINVAL` for `max_pages` above `POSTCOPY_RS_PREPAGE_MAX_PAGES`.
///
/// # Safety
/// `request`, if not NULL, must be callable from the fault thread
/// with the `opaque` of the ops the thread was started with until the
/// thread is stopped (turning pre-paging off does not wait for a call
/// under way), and must not call back into the fault-thread API.
#[no_mangle]
pub unsafe extern "C" fn postcopy_rs_fault_thread_set_prepage(
    t: *mut PostcopyRsFaultThread,
    max_pages: u32,
    request: PostcopyRsRequestRangeFn,
) -> c_int {
    boundary("postcopy_rs_fault_thread_set_prepage", || {
        handles::with_live(t, |t| {
            if max_pages > POSTCOPY_RS_PREPAGE_MAX_PAGES {
                return Err(Error::Invalid(
                    "max_pages above POSTCOPY_RS_PREPAGE_MAX_PAGES",
                ));
            }
            let settings = match request {
                Some(f) if max_pages > 1 => Some(Settings {
                    max_pages,
                    requester: Box::new(CRange { f, opaque: t.1 }),
                }),
                _ => None,
            };
            t.0.set_prepage(settings);
            Ok(())
        })
    })
}

/// Copy the pre-paging counters (all fault threads of the process, since
/// start or the last `postcopy_rs_reset_stats()`) into `*out`, its first
/// `size` bytes at most (`sizeof(PostcopyRsPrepageStats)`, as for
/// `postcopy_rs_get_stats()`).  Returns the number of bytes written, or
/// `-EFAULT` if `out` is NULL.
///
/// # Safety
/// `out`, if not NULL, must be writable for `size` bytes.
#[no_mangle]
pub unsafe extern "C" fn postcopy_rs_get_prepage_stats(
    out: *mut PostcopyRsPrepageStats,
    size: usize,
) -> c_int {
    boundary("postcopy_rs_get_prepage_stats", || {
        // SAFETY: NULL or writable for `size` bytes (contract).
        unsafe {
            copy_out(
                out,
                size,
                &PostcopyRsPrepageStats::from(prepage::snapshot()),
            )
        }
    })
}
