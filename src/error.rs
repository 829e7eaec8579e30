// SPDX-License-Identifier: GPL-2.0-or-later
//! Errors of the safe core, and their fixed negative-errno values at the C edge.
//!
//! Every export returns `0` (or a non-negative count) on success and a
//! negative errno on failure, as QEMU's own migration code does.  The values
//! are fixed: a C caller may compare against `-EINVAL` and friends.

use std::fmt;

/// Everything that can go wrong in the library.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    /// A required pointer argument was NULL.  -EFAULT.
    Null(&'static str),
    /// A page size that no host can have: zero, not a power of two, below
    /// the target page size or above [`crate::limits::MAX_HOST_PAGE_SIZE`].  -EINVAL.
    PageSize {
        /// What was asked for, in bytes.
        page_size: u64,
        /// The target page size it was checked against, in bytes.
        target_page_size: u64,
    },
    /// A host-page to target-page ratio that is not a power of two in
    /// `1..=MAX_HOST_RATIO`.  -EINVAL.
    HostRatio(u64),
    /// A length that is not a whole number of host pages.  -EINVAL.
    Length {
        /// The length (in the unit named by `unit`).
        len: u64,
        /// The page size it must be a multiple of, in the same unit.
        page: u64,
        /// "bytes" or "target pages".
        unit: &'static str,
    },
    /// An address that is not aligned to its page size.  -EINVAL.
    Misaligned {
        /// The address.
        addr: u64,
        /// The alignment it needed.
        align: u64,
    },
    /// Any other invalid argument.  -EINVAL.
    Invalid(&'static str),
    /// An address or range outside the memory it must lie in.  -ERANGE.
    OutOfRange {
        /// The address.
        addr: u64,
        /// The length of the access.
        len: u64,
    },
    /// An operation that is not valid in the current state.  -EBUSY.
    State(&'static str),
    /// A handle that is not live: already stopped, or never started.
    /// -ESRCH.
    NoHandle(&'static str),
    /// A system call failed.  -errno.
    Os {
        /// What was being done.
        op: &'static str,
        /// The positive errno it failed with.
        errno: i32,
    },
    /// A userfaultfd ioctl failed on a range.  -errno.
    Ioctl {
        /// Which ioctl.
        op: &'static str,
        /// Start of the range.
        addr: u64,
        /// Length of the range.
        len: u64,
        /// The positive errno it failed with.
        errno: i32,
    },
    /// A placement found its page already present: filled by something
    /// other than the migration.  -EEXIST.
    Present {
        /// Which ioctl.
        op: &'static str,
        /// The page's address.
        addr: u64,
        /// Its size.
        len: u64,
    },
    /// A callback provided by the embedder returned an error.  Its own value.
    Callback {
        /// Which callback.
        name: &'static str,
        /// The negative value it returned.
        ret: i32,
    },
    /// A Rust panic was caught at the C boundary.  -ENOTRECOVERABLE.
    Panic,
    /// Another error, about one named RAMBlock.  The inner error's errno.
    Block {
        /// The block's idstr.
        name: String,
        /// What is wrong with it.
        err: Box<Error>,
    },
}

/// Shorthand used across the crate.
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    /// The positive errno this error is reported as.
    pub fn errno(&self) -> i32 {
        match self {
            Error::Null(_) => libc::EFAULT,
            Error::PageSize { .. }
            | Error::HostRatio(_)
            | Error::Length { .. }
            | Error::Misaligned { .. }
            | Error::Invalid(_) => libc::EINVAL,
            Error::OutOfRange { .. } => libc::ERANGE,
            Error::State(_) => libc::EBUSY,
            Error::NoHandle(_) => libc::ESRCH,
            Error::Os { errno, .. } | Error::Ioctl { errno, .. } => *errno,
            Error::Present { .. } => libc::EEXIST,
            Error::Callback { ret, .. } => {
                ret.checked_neg().filter(|e| *e > 0).unwrap_or(libc::EIO)
            }
            Error::Panic => libc::ENOTRECOVERABLE,
            Error::Block { err, .. } => err.errno(),
        }
    }

    /// The value an `int`-returning export hands back: `-errno`.
    pub fn to_neg_errno(&self) -> i32 {
        -self.errno()
    }

    /// Capture `errno` after a failed system call.
    pub fn last_os(op: &'static str) -> Error {
        let errno = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        Error::Os { op, errno }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Null(arg) => write!(f, "argument '{arg}' is NULL"),
            Error::PageSize {
                page_size,
                target_page_size,
            } => write!(
                f,
                "impossible host page size {page_size} bytes \
                 (target page size {target_page_size} bytes): it must be a power \
                 of two from the target page size up to {} bytes",
                crate::limits::MAX_HOST_PAGE_SIZE
            ),
            Error::HostRatio(r) => write!(
                f,
                "host page / target page ratio {r} is not a power of two in 1..={}",
                crate::limits::MAX_HOST_RATIO
            ),
            Error::Length { len, page, unit } => write!(
                f,
                "length {len} {unit} is not a whole number of host pages of {page} {unit}"
            ),
            Error::Misaligned { addr, align } => {
                write!(f, "address {addr:#x} is not aligned to {align:#x}")
            }
            Error::Invalid(what) => write!(f, "invalid argument: {what}"),
            Error::OutOfRange { addr, len } => {
                write!(f, "range {addr:#x}+{len:#x} lies outside guest RAM")
            }
            Error::State(what) => write!(f, "{what}"),
            Error::NoHandle(arg) => write!(
                f,
                "argument '{arg}' is not a live fault thread (already stopped, or never started)"
            ),
            Error::Os { op, errno } => write!(
                f,
                "{op} failed: {} (errno {errno})",
                std::io::Error::from_raw_os_error(*errno)
            ),
            Error::Ioctl {
                op,
                addr,
                len,
                errno,
            } => write!(
                f,
                "{op} of {len:#x} bytes at {addr:#x} failed: {} (errno {errno})",
                std::io::Error::from_raw_os_error(*errno)
            ),
            Error::Present { op, addr, len } => write!(
                f,
                "{op} of {len:#x} bytes at {addr:#x}: the page is already present, \
                 filled by something other than this migration (errno {})",
                libc::EEXIST
            ),
            Error::Callback { name, ret } => write!(f, "callback '{name}' failed with {ret}"),
            Error::Panic => write!(f, "internal error (Rust panic caught at the C boundary)"),
            Error::Block { name, err } => write!(f, "RAMBlock '{name}': {err}"),
        }
    }
}

impl std::error::Error for Error {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_values_are_fixed() {
        assert_eq!(Error::Null("x").to_neg_errno(), -libc::EFAULT);
        assert_eq!(Error::HostRatio(3).to_neg_errno(), -libc::EINVAL);
        assert_eq!(
            Error::OutOfRange { addr: 0, len: 1 }.to_neg_errno(),
            -libc::ERANGE
        );
        assert_eq!(Error::Panic.to_neg_errno(), -libc::ENOTRECOVERABLE);
        assert_eq!(Error::NoHandle("t").to_neg_errno(), -libc::ESRCH);
        assert_eq!(
            Error::Os {
                op: "x",
                errno: libc::EIO
            }
            .to_neg_errno(),
            -libc::EIO
        );
        assert_eq!(Error::Callback { name: "x", ret: -5 }.errno(), 5);
        // A callback that returns a bogus value still maps to a real errno.
        assert_eq!(Error::Callback { name: "x", ret: 7 }.errno(), libc::EIO);
        assert_eq!(
            Error::Callback {
                name: "x",
                ret: i32::MIN
            }
            .errno(),
            libc::EIO
        );
    }

    #[test]
    fn messages_name_the_numbers() {
        let m = Error::Length {
            len: 100,
            page: 512,
            unit: "target pages",
        }
        .to_string();
        assert!(m.contains("100") && m.contains("512"), "{m}");
    }
}
