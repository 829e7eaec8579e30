// SPDX-License-Identifier: GPL-2.0-or-later
//! The exported C ABI: a thin layer over the safe core.
//!
//! This is the one place where raw pointers from C become safe types.
//! Every export:
//! - checks its pointers with [`nonnull!`] and returns `-EFAULT` for NULL;
//! - runs its body inside [`crate::panic::catch`], so no panic reaches C;
//! - returns `0`, a non-negative count, or a fixed negative errno, and logs
//!   the detail through the log sink.

use crate::bitmap::{bits_to_longs, Word};
use crate::discard::{self, HostRatio};
use crate::error::{Error, Result};
use crate::log::{self, PostcopyRsLogFn, PostcopyRsLogLevel};
use crate::panic::{catch, to_c_i64, to_c_int};
use crate::qemu::{self, MigrationState};
use crate::stats::{self, PostcopyRsStats};
use std::os::raw::{c_int, c_ulong};
use std::ptr::NonNull;

/// `NonNull` from a raw pointer, or return `Error::Null` naming the argument.
macro_rules! nonnull {
    ($p:ident) => {
        match NonNull::new($p) {
            Some(p) => p,
            None => return Err(Error::Null(stringify!($p))),
        }
    };
}

/// A bitmap of `nbits` bits from C.
///
/// # Safety
/// `map` must point to at least `bits_to_longs(nbits)` writable words that
/// nothing else accesses for `'a`.
pub(crate) unsafe fn bitmap_mut<'a>(map: NonNull<Word>, nbits: u64) -> Result<&'a mut [Word]> {
    let nbits = usize::try_from(nbits).map_err(|_| Error::OutOfRange {
        addr: 0,
        len: nbits,
    })?;
    // SAFETY: per the function's contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(map.as_ptr(), bits_to_longs(nbits)) })
}

/// Canonicalise a RAMBlock's dirty bitmap to host pages: every host page
/// with any dirty target page becomes wholly dirty.
///
/// `bmap` holds `nr_pages` bits, one per target page; `host_ratio` is the
/// block's page size over the target page size.
///
/// Returns the number of bits newly set (QEMU adds it to
/// `migration_dirty_pages`), or:
/// - `-EFAULT` if `bmap` is NULL (and `nr_pages` is not 0);
/// - `-EINVAL` if `host_ratio` is not a power of two in
///   `1..=POSTCOPY_RS_MAX_HOST_RATIO`, or `nr_pages` is not a multiple of it.
///
/// On error the bitmap is unchanged.
///
/// # Safety
/// `bmap` must point to `BITS_TO_LONGS(nr_pages)` writable `unsigned long`s
/// that no other thread touches during the call.
#[no_mangle]
pub unsafe extern "C" fn postcopy_chunk_hostpages(
    bmap: *mut c_ulong,
    nr_pages: u64,
    host_ratio: u64,
) -> i64 {
    to_c_i64(catch("postcopy_chunk_hostpages", || {
        let ratio = HostRatio::new(host_ratio)?;
        if nr_pages == 0 {
            return Ok(0);
        }
        let map = nonnull!(bmap);
        // SAFETY: per this function's contract.
        let map = unsafe { bitmap_mut(map, nr_pages) }?;
        discard::chunk_hostpages(map, nr_pages as usize, ratio)
    }))
}

/// QEMU's `ram_postcopy_send_discard_bitmap`, same signature.
///
/// At the switch to postcopy: sync the dirty bitmap a last time, canonicalise
/// every not-ignored RAMBlock's bitmap to its host page size, and send one
/// discard range per maximal run of dirty target pages, framed per block by
/// `postcopy_discard_send_init` / `_finish`.  The wire format is QEMU's.
///
/// Every block is checked first; if one has an impossible page size or a
/// length that is not a whole number of its pages, nothing is sent or
/// changed and `postcopy_rs_ram_discard_failed()` is called with `-EINVAL`
/// and a message naming the block, so QEMU fails the migration and the
/// source VM keeps running.  A NULL `ms` is logged and ignored.
///
/// # Safety
/// `ms` must be QEMU's MigrationState, on the migration thread, with the
/// source VM stopped, exactly where QEMU's postcopy_start() calls it.
#[no_mangle]
pub unsafe extern "C" fn ram_postcopy_send_discard_bitmap(ms: *mut MigrationState) {
    let r = catch("ram_postcopy_send_discard_bitmap", || {
        let ms = nonnull!(ms);
        // SAFETY: per this function's contract.
        unsafe { qemu::send_discard_bitmap(ms.as_ptr()) }
    });
    if let Err(e) = r {
        if !ms.is_null() {
            // SAFETY: ms is QEMU's MigrationState (contract).  A panic in
            // QEMU's own callback cannot happen: it is C.
            unsafe { qemu::report_discard_failure(ms, &e) };
        }
    }
}

/// Route the library's messages to `log_fn` (NULL: back to stderr).
/// Messages above `max_level` (a `PostcopyRsLogLevel`; out-of-range values
/// are clamped) are not formatted at all.
///
/// # Safety
/// `log_fn`, if not NULL, must be callable from any thread at any time
/// until replaced, and must not call back into this library.
#[no_mangle]
pub unsafe extern "C" fn postcopy_rs_set_log_fn(log_fn: PostcopyRsLogFn, max_level: c_int) {
    // An int, not the enum: a C caller can pass any value, and an
    // out-of-range Rust enum would be undefined behaviour.
    let level = match max_level {
        i32::MIN..=0 => PostcopyRsLogLevel::Error,
        1 => PostcopyRsLogLevel::Warning,
        2 => PostcopyRsLogLevel::Info,
        _ => PostcopyRsLogLevel::Debug,
    };
    log::set_sink(log_fn, level);
}

/// Copy the library's counters into `*out`.  Returns 0, or `-EFAULT` if
/// `out` is NULL.
///
/// # Safety
/// `out`, if not NULL, must point to a writable `PostcopyRsStats`.
#[no_mangle]
pub unsafe extern "C" fn postcopy_rs_get_stats(out: *mut PostcopyRsStats) -> c_int {
    to_c_int(catch("postcopy_rs_get_stats", || {
        let out = nonnull!(out);
        // SAFETY: per this function's contract.
        unsafe { out.as_ptr().write(stats::snapshot()) };
        Ok(())
    }))
}

/// Zero the library's counters.
#[no_mangle]
pub extern "C" fn postcopy_rs_reset_stats() {
    stats::reset();
}
