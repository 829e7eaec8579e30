// SPDX-License-Identifier: GPL-2.0-or-later
//! The exported C ABI: the one place where what C hands us (raw pointers,
//! raw fds, callbacks) becomes a safe type, and where every result becomes
//! the C return value.
//!
//! Every export is one [`boundary`] call: its body runs under
//! `catch_unwind`, so no panic reaches C; an error is logged with its
//! detail, and [`CReturn`] turns the result into `0`, a non-negative count
//! or a fixed negative errno.  Pointers are checked with [`try_ref`],
//! [`try_mut`], [`try_slice`], [`try_cstr`] and fds with [`try_fd`]: NULL
//! is `-EFAULT`, a negative fd `-EBADF`.
//!
//! - [`source`]: canonicalisation and the discard bitmap (source side);
//! - [`dest`]: placement and the fault thread (destination side), whose
//!   handles `handles.rs` keeps;
//! - [`prepage`]: pre-paging for a running fault thread, and its counters;
//! - [`misc`]: the log sink, the counters, page-size messages.

pub mod dest;
mod handles;
pub mod misc;
pub mod prepage;
pub mod source;

pub use dest::*;
pub use misc::*;
pub use prepage::*;
pub use source::*;

use crate::error::{Error, Result};
use crate::panic::catch;
use std::ffi::CStr;
use std::os::fd::BorrowedFd;
use std::os::raw::{c_char, c_int};

/// How a result becomes an export's C return value; the one mapping for
/// every export.
pub trait CReturn {
    /// The C type returned.
    type C;
    /// The C value for this result.
    fn into_c(self) -> Self::C;
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

/// `bool`: true only for `Ok(true)`.
impl CReturn for Result<bool> {
    type C = bool;
    fn into_c(self) -> bool {
        matches!(self, Ok(true))
    }
}

/// `uint32_t`: the value, or 0 (the export documents 0 as "none").
impl CReturn for Result<u32> {
    type C = u32;
    fn into_c(self) -> u32 {
        self.unwrap_or(0)
    }
}

/// Run an export's body: panics caught, errors logged under `name`, the
/// result mapped by [`CReturn`].
pub fn boundary<T>(name: &'static str, f: impl FnOnce() -> Result<T>) -> <Result<T> as CReturn>::C
where
    Result<T>: CReturn,
{
    catch(name, f).into_c()
}

/// A shared reference from a C pointer, or `Error::Null(what)`.
///
/// # Safety
/// `p` must be NULL or point to a valid `T` that nothing mutates for `'a`.
pub unsafe fn try_ref<'a, T>(p: *const T, what: &'static str) -> Result<&'a T> {
    // SAFETY: per the function's contract.
    unsafe { p.as_ref() }.ok_or(Error::Null(what))
}

/// An exclusive reference from a C pointer, or `Error::Null(what)`.
///
/// # Safety
/// `p` must be NULL or point to a valid `T` that nothing else accesses
/// for `'a`.
pub unsafe fn try_mut<'a, T>(p: *mut T, what: &'static str) -> Result<&'a mut T> {
    // SAFETY: per the function's contract.
    unsafe { p.as_mut() }.ok_or(Error::Null(what))
}

/// A slice of `n` elements from C; NULL is allowed when `n` is 0.
///
/// # Safety
/// When `n > 0`, `p` must be NULL or point to `n` valid `T` that nothing
/// mutates for `'a`.
pub unsafe fn try_slice<'a, T>(p: *const T, n: usize, what: &'static str) -> Result<&'a [T]> {
    if n == 0 {
        return Ok(&[]);
    }
    if p.is_null() {
        return Err(Error::Null(what));
    }
    check_len::<T>(n)?;
    // SAFETY: non-NULL, and `n` valid elements per the contract.
    Ok(unsafe { std::slice::from_raw_parts(p, n) })
}

/// A mutable slice of `n` elements from C; NULL is allowed when `n` is 0.
///
/// # Safety
/// When `n > 0`, `p` must be NULL or point to `n` valid `T` that nothing
/// else accesses for `'a`.
pub unsafe fn try_slice_mut<'a, T>(p: *mut T, n: usize, what: &'static str) -> Result<&'a mut [T]> {
    if n == 0 {
        return Ok(&mut []);
    }
    if p.is_null() {
        return Err(Error::Null(what));
    }
    check_len::<T>(n)?;
    // SAFETY: non-NULL, and `n` valid elements per the contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(p, n) })
}

/// `from_raw_parts` requires the slice to fit in `isize::MAX` bytes.
fn check_len<T>(n: usize) -> Result<()> {
    match n.checked_mul(std::mem::size_of::<T>()) {
        Some(b) if isize::try_from(b).is_ok() => Ok(()),
        _ => Err(Error::OutOfRange {
            addr: 0,
            len: n as u64,
        }),
    }
}

/// Copy `value` into C's `*out`, its first `size` bytes at most, for the
/// getters whose struct may grow: a caller built against an older header
/// passes its smaller `sizeof` and gets the fields it knows.  Returns the
/// bytes written, or `Error::Null("out")`.
///
/// # Safety
/// `out`, if not NULL, must be writable for `size` bytes.
pub unsafe fn copy_out<T: Copy>(out: *mut T, size: usize, value: &T) -> Result<c_int> {
    if out.is_null() {
        return Err(Error::Null("out"));
    }
    let n = size.min(std::mem::size_of::<T>());
    // SAFETY: `value` is readable for size_of::<T>() bytes; `out` is
    // writable for `size` bytes (contract) and cannot overlap a reference
    // we hold; n is at most both.
    unsafe {
        std::ptr::copy_nonoverlapping(std::ptr::from_ref(value).cast::<u8>(), out.cast::<u8>(), n);
    }
    Ok(c_int::try_from(n).unwrap_or(c_int::MAX))
}

/// A C string, or None for NULL.
///
/// # Safety
/// `p` must be NULL or a NUL-terminated string that stays unchanged for `'a`.
pub unsafe fn try_cstr<'a>(p: *const c_char) -> Option<&'a CStr> {
    if p.is_null() {
        None
    } else {
        // SAFETY: non-NULL and NUL-terminated per the contract.
        Some(unsafe { CStr::from_ptr(p) })
    }
}

/// A borrowed fd from C, or `-EBADF` for a negative one.
///
/// Every use the library makes of a borrowed fd (an ioctl, `fcntl`, `dup`)
/// fails with `EBADF` on a number that is not open, which is how a closed
/// fd from C is reported.
///
/// # Safety
/// `fd`, if not negative, must be a descriptor C will not close (or
/// reuse) during `'a`.
pub unsafe fn try_fd<'a>(fd: c_int, what: &'static str) -> Result<BorrowedFd<'a>> {
    if fd < 0 {
        return Err(Error::Os {
            op: what,
            errno: libc::EBADF,
        });
    }
    // SAFETY: open for 'a per the contract; -1 was ruled out above.
    Ok(unsafe { BorrowedFd::borrow_raw(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(!Err::<bool, Error>(Error::Panic).into_c());
        let n: c_int = boundary("t", || Ok::<c_int, Error>(7));
        assert_eq!(n, 7);
    }

    #[test]
    fn pointer_checks() {
        // SAFETY: NULL, and a live local.
        unsafe {
            assert_eq!(try_ref::<u8>(std::ptr::null(), "x"), Err(Error::Null("x")));
            assert_eq!(try_slice::<u8>(std::ptr::null(), 0, "x"), Ok(&[][..]));
            try_slice::<u8>(std::ptr::null(), 1, "x").unwrap_err();
            try_fd(-1, "fd").unwrap_err();
            assert!(try_cstr(std::ptr::null()).is_none());
            let v = 3u32;
            assert_eq!(try_ref(&v, "v"), Ok(&3));
            try_slice(&v, usize::MAX, "v").unwrap_err();
        }
    }
}
