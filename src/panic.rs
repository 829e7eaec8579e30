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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_errors() {
        let r: Result<()> = catch("t", || panic!("boom"));
        assert_eq!(r, Err(Error::Panic));
        assert_eq!(catch("t", || Ok(5)), Ok(5));
    }
}
