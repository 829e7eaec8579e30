// SPDX-License-Identifier: GPL-2.0-or-later
//! The log sink: where C wants the library's messages.

use super::boundary::{boundary, Void};
use crate::log::{self, Level, Sink};
use std::ffi::CStr;
use std::os::raw::{c_char, c_int};
use std::sync::Arc;

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

assert_same_layout!(PostcopyRsLogLevel, c_int);

impl From<Level> for PostcopyRsLogLevel {
    fn from(l: Level) -> Self {
        match l {
            Level::Error => Self::Error,
            Level::Warning => Self::Warning,
            Level::Info => Self::Info,
            Level::Debug => Self::Debug,
        }
    }
}

/// A log sink: `level`, then a NUL-terminated message without a trailing
/// newline.  It must stay callable for the life of the process: a thread
/// may have loaded it just before it is replaced.
pub type PostcopyRsLogFn =
    Option<unsafe extern "C" fn(level: PostcopyRsLogLevel, msg: *const c_char)>;

/// A C log sink, trusted once, when `postcopy_rs_set_log_fn()` registers it.
#[derive(Clone, Copy, Debug)]
pub struct CLogSink(unsafe extern "C" fn(PostcopyRsLogLevel, *const c_char));

impl Sink for CLogSink {
    fn deliver(&self, level: Level, msg: &CStr) {
        // SAFETY: the sink's contract (see `postcopy_rs_set_log_fn`) is to
        // accept any NUL-terminated string, from any thread, for the life
        // of the process.
        unsafe { (self.0)(level.into(), msg.as_ptr()) }
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
    boundary("postcopy_rs_set_log_fn", || {
        // An int, not the enum: a C caller can pass any value, and an
        // out-of-range Rust enum would be undefined behaviour.
        let level = match max_level {
            i32::MIN..=0 => Level::Error,
            1 => Level::Warning,
            2 => Level::Info,
            _ => Level::Debug,
        };
        log::set_sink(
            log_fn.map(|f| Arc::new(CLogSink(f)) as Arc<dyn Sink>),
            level,
        );
        Ok(Void)
    });
}
