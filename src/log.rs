// SPDX-License-Identifier: GPL-2.0-or-later
//! Where the library's messages go.
//!
//! QEMU routes them to `error_report()` / trace points through
//! `postcopy_rs_set_log_fn`; without a sink they go to stderr.  Errors are
//! always logged with the detail (address, length, sizes) that the bare
//! errno returned to C cannot carry.

use std::ffi::{CStr, CString};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

/// Message severity; the C ABI's `PostcopyRsLogLevel` has the same values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Something failed; the caller gets an error code too.
    Error = 0,
    /// Something unexpected that the library handled.
    Warning = 1,
    /// Progress worth a line in a log.
    Info = 2,
    /// Per-event detail, for tracing.
    Debug = 3,
}

/// Where messages go instead of stderr (the C ABI's log function).
pub trait Sink: Send + Sync {
    /// Deliver one message, a line without its newline.  Called from any
    /// thread.
    fn deliver(&self, level: Level, msg: &CStr);
}

// None: stderr.  Set rarely, read on every delivered message.
static SINK: RwLock<Option<Arc<dyn Sink>>> = RwLock::new(None);
// Messages above this level are dropped before formatting reaches the sink.
static MAX_LEVEL: AtomicUsize = AtomicUsize::new(Level::Info as usize);

/// Send messages up to `max_level` to `sink` (None: stderr).
pub fn set_sink(sink: Option<Arc<dyn Sink>>, max_level: Level) {
    *SINK.write().unwrap_or_else(PoisonError::into_inner) = sink;
    MAX_LEVEL.store(max_level as usize, Ordering::Release);
}

/// True when a message at `level` would be delivered.
pub fn enabled(level: Level) -> bool {
    level as usize <= MAX_LEVEL.load(Ordering::Acquire)
}

/// Deliver one message.
pub fn log(level: Level, msg: &str) {
    if !enabled(level) {
        return;
    }
    let sink = SINK.read().unwrap_or_else(PoisonError::into_inner).clone();
    let Some(sink) = sink else {
        // Not eprintln!: it panics when stderr fails (EPIPE, ENOSPC).
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "postcopy-rs: {msg}");
        return;
    };
    // Interior NULs cannot come from our own messages; strip them anyway.
    let c = CString::new(msg.replace('\0', "")).unwrap_or_default();
    sink.deliver(level, &c);
}

/// Log at error level.
macro_rules! error {
    ($($arg:tt)*) => {
        $crate::log::log($crate::log::Level::Error, &format!($($arg)*))
    };
}
/// Log at warning level.
#[allow(unused_macros)]
macro_rules! warning {
    ($($arg:tt)*) => {
        $crate::log::log($crate::log::Level::Warning, &format!($($arg)*))
    };
}
/// Log at debug level; the message is only formatted when enabled.
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::log::enabled($crate::log::Level::Debug) {
            $crate::log::log($crate::log::Level::Debug, &format!($($arg)*))
        }
    };
}
#[allow(unused_imports)]
pub(crate) use {debug, error, warning};
