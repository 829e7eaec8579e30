// SPDX-License-Identifier: GPL-2.0-or-later
//! Where the library's messages go.
//!
//! QEMU routes them to `error_report()` / trace points through
//! `postcopy_rs_set_log_fn`; without a sink they go to stderr.  Errors are
//! always logged with the detail (address, length, sizes) that the bare
//! errno returned to C cannot carry.

use std::ffi::CString;
use std::os::raw::c_char;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Message severity, as passed to the log sink.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PostcopyRsLogLevel {
    /// Something failed; the caller gets an error code too.
    Error = 0,
    /// Something unexpected that the library handled.
    Warning = 1,
    /// Progress worth a line in a log.
    Info = 2,
    /// Per-event detail, for tracing.
    Debug = 3,
}

/// A log sink: `level`, then a NUL-terminated message without a trailing
/// newline.  It must stay callable for the life of the process: a thread
/// may have loaded it just before it is replaced.
pub type PostcopyRsLogFn =
    Option<unsafe extern "C" fn(level: PostcopyRsLogLevel, msg: *const c_char)>;

// 0 = no sink; otherwise the fn pointer.  Set rarely, read on every message.
static SINK: AtomicUsize = AtomicUsize::new(0);
// Messages above this level are dropped before formatting reaches the sink.
static MAX_LEVEL: AtomicUsize = AtomicUsize::new(PostcopyRsLogLevel::Info as usize);

pub(crate) fn set_sink(f: PostcopyRsLogFn, max_level: PostcopyRsLogLevel) {
    SINK.store(f.map_or(0, |f| f as usize), Ordering::Release);
    MAX_LEVEL.store(max_level as usize, Ordering::Release);
}

/// True when a message at `level` would be delivered.
pub fn enabled(level: PostcopyRsLogLevel) -> bool {
    level as usize <= MAX_LEVEL.load(Ordering::Acquire)
}

/// Deliver one message.
pub fn log(level: PostcopyRsLogLevel, msg: &str) {
    if !enabled(level) {
        return;
    }
    let raw = SINK.load(Ordering::Acquire);
    if raw == 0 {
        // Not eprintln!: it panics when stderr fails (EPIPE, ENOSPC).
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "postcopy-rs: {msg}");
        return;
    }
    // SAFETY: `raw` was stored by `set_sink` from a non-null fn pointer of
    // exactly this type; fn pointers round-trip through usize on every
    // platform Rust supports.
    let f: unsafe extern "C" fn(PostcopyRsLogLevel, *const c_char) =
        unsafe { std::mem::transmute::<usize, _>(raw) };
    // Interior NULs cannot come from our own messages; strip them anyway.
    let c = CString::new(msg.replace('\0', "")).unwrap_or_default();
    // SAFETY: the sink's contract (see `postcopy_rs_set_log_fn`) is to accept
    // any NUL-terminated string for the duration of the call.
    unsafe { f(level, c.as_ptr()) };
}

/// Log at error level.
macro_rules! error {
    ($($arg:tt)*) => {
        $crate::log::log($crate::log::PostcopyRsLogLevel::Error, &format!($($arg)*))
    };
}
/// Log at warning level.
#[allow(unused_macros)]
macro_rules! warning {
    ($($arg:tt)*) => {
        $crate::log::log($crate::log::PostcopyRsLogLevel::Warning, &format!($($arg)*))
    };
}
/// Log at debug level; the message is only formatted when enabled.
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::log::PostcopyRsLogLevel::Debug) {
            $crate::log::log($crate::log::PostcopyRsLogLevel::Debug, &format!($($arg)*))
        }
    };
}
#[allow(unused_imports)]
pub(crate) use {debug, error, warning};
