// SPDX-License-Identifier: GPL-2.0-or-later
//! The C boundary: every export runs its body through [`catch`], so an
//! error is logged with its detail and a panic never unwinds into C.

use crate::error::{Error, Result};
use crate::log;
use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

fn panic_message(payload: &(dyn Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(non-string panic payload)")
}

/// Run `f`; log any error or panic under `name`.  A panic becomes
/// [`Error::Panic`].
pub fn catch<T>(name: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
    // AssertUnwindSafe: after a panic we never touch the closure's state
    // again; the caller only sees Error::Panic.
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => {
            log::error!("{name}: {e}");
            Err(e)
        }
        Err(payload) => {
            log::error!(
                "{name}: internal error: {}",
                panic_message(payload.as_ref())
            );
            Err(Error::Panic)
        }
    }
}

/// `0` or `-errno`, for `int`-returning exports.
pub fn to_c_int(r: Result<()>) -> i32 {
    r.map_or_else(|e| e.to_neg_errno(), |()| 0)
}

/// A non-negative count or `-errno`, for `int64_t`-returning exports.
pub fn to_c_i64(r: Result<u64>) -> i64 {
    match r {
        Ok(v) => i64::try_from(v).unwrap_or(i64::MAX),
        Err(e) => i64::from(e.to_neg_errno()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_errors() {
        let r: Result<()> = catch("t", || panic!("boom"));
        assert_eq!(r, Err(Error::Panic));
        assert_eq!(to_c_int(r), -libc::ENOTRECOVERABLE);
        assert_eq!(to_c_i64(Ok(5)), 5);
        assert_eq!(to_c_i64(Err(Error::Null("p"))), -i64::from(libc::EFAULT));
    }
}
