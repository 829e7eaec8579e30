// SPDX-License-Identifier: GPL-2.0-or-later
//! The message about mismatched page sizes between source and
//! destination.

use super::boundary::boundary;
use super::convert::try_slice_mut;
use crate::pagesize;
use std::os::raw::{c_char, c_int};

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
