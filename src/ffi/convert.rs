// SPDX-License-Identifier: GPL-2.0-or-later
//! Where what C hands the library becomes a safe type: pointers become
//! references and slices (NULL is `-EFAULT`), fds become borrowed fds (a
//! negative one is `-EBADF`), C strings become `CStr`, and the embedder's
//! pointers become [`HostAddr`] and [`BlockHandle`].  Every such
//! conversion of the C ABI is here, or under `src/ffi/` next to the C
//! struct it reads (the block view, the fault-thread handles).

use crate::addr::{BlockHandle, HostAddr};
use crate::error::{Error, Result};
use std::ffi::CStr;
use std::os::fd::BorrowedFd;
use std::os::raw::{c_char, c_int, c_void};

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

/// The host address C passed as a pointer, or `Error::Null(what)`.
pub fn host_addr(p: *const c_void, what: &'static str) -> Result<HostAddr> {
    if p.is_null() {
        return Err(Error::Null(what));
    }
    Ok(HostAddr::new(p as u64))
}

/// The embedder's block handle (QEMU: a `RAMBlock *`), which the library
/// only hands back.
pub fn block_handle(p: *mut c_void) -> BlockHandle {
    BlockHandle::new(p as usize)
}

/// The pointer a block handle came from, to hand back to C.
pub fn block_ptr(h: BlockHandle) -> *mut c_void {
    h.get() as *mut c_void
}

#[cfg(test)]
mod tests {
    use super::*;

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
