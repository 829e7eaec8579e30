// SPDX-License-Identifier: GPL-2.0-or-later
//! The fault-thread handles that C holds, and the one place where such a
//! handle becomes a reference.
//!
//! A handle is the address of a `Box` handed to C.  Every call looks it up
//! here before touching it, so a handle used after
//! `postcopy_rs_fault_thread_stop()` (a second stop, a late notify from a
//! cleanup path) is `-ESRCH` instead of a use-after-free.  Like `free()`,
//! a later start may reuse the address; the registry catches the common
//! mistake, not an embedder that keeps stale handles forever.

use crate::error::{Error, Result};
use crate::fault_thread::FaultThread;
use std::collections::BTreeSet;
use std::os::raw::c_void;
use std::sync::{Mutex, MutexGuard, PoisonError};

/// A running fault thread (opaque), and the `opaque` of its ops.
pub struct PostcopyRsFaultThread(pub(super) FaultThread, pub(super) *mut c_void);

static LIVE: Mutex<BTreeSet<usize>> = Mutex::new(BTreeSet::new());

fn live() -> MutexGuard<'static, BTreeSet<usize>> {
    LIVE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Hand `t` to C.
pub(super) fn register(t: PostcopyRsFaultThread) -> *mut PostcopyRsFaultThread {
    let p = Box::into_raw(Box::new(t));
    live().insert(p as usize);
    p
}

/// Run `f` on the live handle `t`.  The registry stays locked meanwhile, so
/// that a concurrent stop cannot free it under `f`; every `f` is short and
/// never waits for the fault thread.
pub(super) fn with_live<R>(
    t: *const PostcopyRsFaultThread,
    f: impl FnOnce(&PostcopyRsFaultThread) -> Result<R>,
) -> Result<R> {
    if t.is_null() {
        return Err(Error::Null("t"));
    }
    let live = live();
    if !live.contains(&(t as usize)) {
        return Err(Error::NoHandle("t"));
    }
    // SAFETY: registered by `register` and not yet taken back: a live Box,
    // which `take` cannot free while we hold the registry's lock.
    let ret = f(unsafe { &*t });
    drop(live);
    ret
}

/// Take `t` back from C, for the stop; it is no longer live.
pub(super) fn take(t: *mut PostcopyRsFaultThread) -> Result<Box<PostcopyRsFaultThread>> {
    if t.is_null() {
        return Err(Error::Null("t"));
    }
    if !live().remove(&(t as usize)) {
        return Err(Error::NoHandle("t"));
    }
    // SAFETY: registered by `register` (a Box::into_raw) and just removed
    // under the lock, so no other call can reach it any more.
    Ok(unsafe { Box::from_raw(t) })
}
