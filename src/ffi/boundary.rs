// SPDX-License-Identifier: GPL-2.0-or-later
//! The one boundary every export runs its body through: a panic never
//! unwinds into C, an error is logged with the detail a bare errno cannot
//! carry, and [`CReturn`] turns the result into the C return value.

use crate::error::{Error, Result};
use crate::log;
use std::any::Any;
use std::os::raw::c_int;
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

/// How a result becomes an export's C return value; the one mapping for
/// every export.
pub trait CReturn {
    /// The C type returned.
    type C;
    /// The C value for this result.
    fn into_c(self) -> Self::C;
}

/// What a `void` export's body returns: its errors (and panics) are only
/// logged, as C gets nothing back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Void;

/// `void`.
impl CReturn for Result<Void> {
    type C = ();
    fn into_c(self) {}
}

/// `int`: 0 or `-errno`.
impl CReturn for Result<()> {
    type C = c_int;
    fn into_c(self) -> c_int {
        self.map_or_else(|e| e.to_neg_errno(), |()| 0)
    }
}

/// `int`: a non-negative value or `-errno`.
impl CReturn for Result<c_int> {
    type C = c_int;
    fn into_c(self) -> c_int {
        self.unwrap_or_else(|e| e.to_neg_errno())
    }
}

/// `int64_t`: a non-negative count or `-errno`.
impl CReturn for Result<u64> {
    type C = i64;
    fn into_c(self) -> i64 {
        match self {
            Ok(v) => i64::try_from(v).unwrap_or(i64::MAX),
            Err(e) => i64::from(e.to_neg_errno()),
        }
    }
}

/// `uint32_t`: a value that is never 0, or 0 after an internal error.
impl CReturn for Result<std::num::NonZeroU32> {
    type C = u32;
    fn into_c(self) -> u32 {
        self.map_or(0, std::num::NonZeroU32::get)
    }
}

/// Run an export's body: panics caught, errors logged under `name`, the
/// result mapped by [`CReturn`].  Every export is one call of it.
pub fn boundary<T>(name: &'static str, f: impl FnOnce() -> Result<T>) -> <Result<T> as CReturn>::C
where
    Result<T>: CReturn,
{
    catch(name, f).into_c()
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

    #[test]
    fn results_map_to_c() {
        let r: Result<()> = catch("t", || panic!("boom"));
        assert_eq!(r, Err(Error::Panic));
        assert_eq!(r.into_c(), -libc::ENOTRECOVERABLE);
        assert_eq!(Ok::<u64, Error>(5).into_c(), 5);
        assert_eq!(Ok::<u64, Error>(u64::MAX).into_c(), i64::MAX);
        assert_eq!(
            Err::<u64, Error>(Error::Null("p")).into_c(),
            -i64::from(libc::EFAULT)
        );
        let n: c_int = boundary("t", || Ok::<c_int, Error>(7));
        assert_eq!(n, 7);
        let v = std::num::NonZeroU32::new(3).unwrap();
        assert_eq!(boundary("t", || Ok(v)), 3);
        assert_eq!(Err::<std::num::NonZeroU32, Error>(Error::Panic).into_c(), 0);
        // A void export's panic is caught too.
        boundary("t", || -> Result<Void> { panic!("boom") });
    }
}
