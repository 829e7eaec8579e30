// SPDX-License-Identifier: GPL-2.0-or-later
//! Exports for both sides: the log sink, the counters, the latency
//! histogram, and the messages about mismatched page sizes.

use super::{boundary, copy_out, try_slice_mut};
use crate::latency::{self, PostcopyRsLatency};
use crate::log::{self, PostcopyRsLogLevel};
use crate::pagesize;
use crate::stats::{self, PostcopyRsStats};
use std::ffi::CStr;
use std::os::raw::{c_char, c_int};

/// A log sink: `level`, then a NUL-terminated message without a trailing
/// newline.  It must stay callable for the life of the process: a thread
/// may have loaded it just before it is replaced.
pub type PostcopyRsLogFn =
    Option<unsafe extern "C" fn(level: PostcopyRsLogLevel, msg: *const c_char)>;

/// A C log sink, trusted once, when `postcopy_rs_set_log_fn()` registers it.
#[derive(Clone, Copy, Debug)]
pub struct CLogSink(unsafe extern "C" fn(PostcopyRsLogLevel, *const c_char));

impl CLogSink {
    /// Deliver one message.
    pub fn deliver(&self, level: PostcopyRsLogLevel, msg: &CStr) {
        // SAFETY: the sink's contract (see `postcopy_rs_set_log_fn`) is to
        // accept any NUL-terminated string, from any thread, for the life
        // of the process.
        unsafe { (self.0)(level, msg.as_ptr()) }
    }
}

/// Route the library's messages to `log_fn` (NULL: back to stderr).
/// Messages above `max_level` (a `PostcopyRsLogLevel`; out-of-range values
/// are clamped) are not formatted at all.
///
/// # Safety
/// `log_fn`, if not NULL, must be callable from any thread for the life of
/// the process (a thread may call it just after it is replaced), and must
/// not call back into this library.
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
    log::set_sink(log_fn.map(CLogSink), level);
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
        unsafe { copy_out(out, size, &stats::snapshot()) }
    })
}

/// Zero the library's counters, the pre-paging ones and the latency
/// histogram (`postcopy_rs_get_latency()`).  First faults already noted
/// stay pending: one resolved after the reset is a sample of the new
/// histogram.
#[no_mangle]
pub extern "C" fn postcopy_rs_reset_stats() {
    stats::reset();
    crate::prepage::reset_stats();
    latency::reset();
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
        unsafe { copy_out(out, size, &latency::snapshot()) }
    })
}

// ---------------------------------------------------------------------------
// Mismatched page sizes between source and destination.

/// Write the error for mismatched page summaries, naming both sides' page
/// sizes, into `buf` (at most `len` bytes, always NUL-terminated when
/// `len > 0`, like snprintf).  Returns the message's full length, or
/// `-EFAULT` if `buf` is NULL and `len` is not 0.
///
/// # Safety
/// `buf` must be writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn postcopy_rs_pagesize_mismatch_message(
    source_summary: u64,
    destination_summary: u64,
    buf: *mut c_char,
    len: usize,
) -> c_int {
    boundary("postcopy_rs_pagesize_mismatch_message", || {
        let msg = pagesize::mismatch_message(source_summary, destination_summary);
        // SAFETY: NULL or writable for len bytes (contract).
        let out = unsafe { try_slice_mut(buf.cast::<u8>(), len, "buf") }?;
        if let Some((last, body)) = out.split_last_mut() {
            let n = msg.len().min(body.len());
            body[..n].copy_from_slice(&msg.as_bytes()[..n]);
            match body.get_mut(n) {
                Some(b) => *b = 0,
                None => *last = 0,
            }
        }
        Ok(c_int::try_from(msg.len()).unwrap_or(c_int::MAX))
    })
}
