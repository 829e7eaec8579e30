// SPDX-License-Identifier: GPL-2.0-or-later
//! The userfaultfd kernel ABI (`linux/userfaultfd.h`): the few ioctls and
//! structs postcopy needs, with their layouts asserted at compile time.
//!
//! Owned here rather than taken from a bindgen-based crate: six ioctls, and
//! placement needs exact control of EEXIST, EAGAIN and partial copies.

use crate::error::{Error, Result};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// An ioctl request number as libc's `ioctl()` takes it: `unsigned long`
/// on glibc, `int` on musl.
pub type IoctlRequest = libc::Ioctl;

const UFFDIO: u32 = 0xAA;

/// `_IOC(dir, UFFDIO, nr, size)`, as a 32-bit request (every Linux ioctl
/// number fits in 32 bits; musl's `int` takes the same bit pattern).
const fn ioc(dir: u32, nr: u32, size: usize) -> IoctlRequest {
    assert!(size < 1 << 14, "_IOC_SIZEBITS is 14");
    let req = (dir << 30) | ((size as u32) << 16) | (UFFDIO << 8) | nr;
    // `as`: a deliberate bit-for-bit conversion, to c_ulong (widening) or
    // to musl's c_int (the same 32 bits).
    req as IoctlRequest
}
const IOC_WRITE: u32 = 1;
const IOC_READ: u32 = 2;

/// `UFFD_API`.
pub const UFFD_API: u64 = 0xAA;
/// `UFFD_EVENT_PAGEFAULT`.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
/// `UFFD_PAGEFAULT_FLAG_WRITE`.
pub const UFFD_PAGEFAULT_FLAG_WRITE: u64 = 1;
/// `UFFD_FEATURE_THREAD_ID`: fault messages carry the faulting thread's id.
pub const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
/// `UFFDIO_REGISTER_MODE_MISSING`.
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioRange {
    /// Start address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioApi {
    /// `UFFD_API`.
    pub api: u64,
    /// Requested/offered features.
    pub features: u64,
    /// Supported ioctls (out).
    pub ioctls: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioRegister {
    /// The range to register.
    pub range: UffdioRange,
    /// `UFFDIO_REGISTER_MODE_*`.
    pub mode: u64,
    /// Ioctls available on the range (out).
    pub ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioCopy {
    /// Destination (registered) address.
    pub dst: u64,
    /// Source address.
    pub src: u64,
    /// Bytes to copy.
    pub len: u64,
    /// `UFFDIO_COPY_MODE_*`.
    pub mode: u64,
    /// Bytes copied, or -errno (out).
    pub copy: i64,
}

/// `struct uffdio_zeropage`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdioZeropage {
    /// The range to fill with zeroes.
    pub range: UffdioRange,
    /// `UFFDIO_ZEROPAGE_MODE_*`.
    pub mode: u64,
    /// Bytes zeroed, or -errno (out).
    pub zeropage: i64,
}

/// `struct uffd_msg`, pagefault view of the union.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
pub struct UffdMsg {
    /// `UFFD_EVENT_*`.
    pub event: u8,
    /// Reserved.
    pub reserved1: u8,
    /// Reserved.
    pub reserved2: u16,
    /// Reserved.
    pub reserved3: u32,
    /// `arg.pagefault.flags`.
    pub pf_flags: u64,
    /// `arg.pagefault.address`.
    pub pf_address: u64,
    /// `arg.pagefault.feat.ptid` (0 unless `UFFD_FEATURE_THREAD_ID`).
    pub pf_ptid: u32,
    /// Rest of the union.
    pub pad: u32,
}

const _: () = assert!(size_of::<UffdioRange>() == 16);
const _: () = assert!(size_of::<UffdioApi>() == 24);
const _: () = assert!(size_of::<UffdioRegister>() == 32);
const _: () = assert!(size_of::<UffdioCopy>() == 40);
const _: () = assert!(size_of::<UffdioZeropage>() == 32);
const _: () = assert!(size_of::<UffdMsg>() == 32);
const _: () = assert!(align_of::<UffdioRange>() == align_of::<u64>());
const _: () = assert!(align_of::<UffdioApi>() == align_of::<u64>());
const _: () = assert!(align_of::<UffdioRegister>() == align_of::<u64>());
const _: () = assert!(align_of::<UffdioCopy>() == align_of::<u64>());
const _: () = assert!(align_of::<UffdioZeropage>() == align_of::<u64>());
const _: () = assert!(align_of::<UffdMsg>() == align_of::<u64>());
const _: () = assert!(std::mem::offset_of!(UffdMsg, pf_address) == 16);
const _: () = assert!(std::mem::offset_of!(UffdMsg, pf_ptid) == 24);

/// `UFFDIO_API`.
pub const UFFDIO_API: IoctlRequest =
    ioc(IOC_READ | IOC_WRITE, 0x3F, std::mem::size_of::<UffdioApi>());
/// `UFFDIO_REGISTER`.
pub const UFFDIO_REGISTER: IoctlRequest = ioc(
    IOC_READ | IOC_WRITE,
    0x00,
    std::mem::size_of::<UffdioRegister>(),
);
/// `UFFDIO_UNREGISTER`.
pub const UFFDIO_UNREGISTER: IoctlRequest = ioc(IOC_READ, 0x01, std::mem::size_of::<UffdioRange>());
/// `UFFDIO_WAKE`.
pub const UFFDIO_WAKE: IoctlRequest = ioc(IOC_READ, 0x02, std::mem::size_of::<UffdioRange>());
/// `UFFDIO_COPY`.
pub const UFFDIO_COPY: IoctlRequest = ioc(
    IOC_READ | IOC_WRITE,
    0x03,
    std::mem::size_of::<UffdioCopy>(),
);
/// `UFFDIO_ZEROPAGE`.
pub const UFFDIO_ZEROPAGE: IoctlRequest = ioc(
    IOC_READ | IOC_WRITE,
    0x04,
    std::mem::size_of::<UffdioZeropage>(),
);

// The numbers <linux/userfaultfd.h> gives on x86_64 and aarch64, checked
// at compile time (compared as 32-bit patterns, whatever IoctlRequest is).
const _: () = assert!(UFFDIO_API as u32 == 0xc018_aa3f);
const _: () = assert!(UFFDIO_REGISTER as u32 == 0xc020_aa00);
const _: () = assert!(UFFDIO_UNREGISTER as u32 == 0x8010_aa01);
const _: () = assert!(UFFDIO_WAKE as u32 == 0x8010_aa02);
const _: () = assert!(UFFDIO_COPY as u32 == 0xc028_aa03);
const _: () = assert!(UFFDIO_ZEROPAGE as u32 == 0xc020_aa04);

/// Issue one ioctl on a userfaultfd.
///
/// # Safety
/// `arg` must be the struct type `req` expects; any addresses in it must be
/// valid for the operation.
pub unsafe fn ioctl<T>(fd: BorrowedFd<'_>, req: IoctlRequest, arg: &mut T) -> std::io::Result<()> {
    // SAFETY: per the function's contract; `fd` is open (borrowed) and
    // `arg` is a live &mut.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, std::ptr::from_mut(arg)) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Wake threads blocked on faults in `start..start + len`.
pub fn wake(fd: BorrowedFd<'_>, start: u64, len: u64) -> Result<()> {
    let mut r = UffdioRange { start, len };
    // SAFETY: UFFDIO_WAKE takes a uffdio_range; it only wakes waiters.
    unsafe { ioctl(fd, UFFDIO_WAKE, &mut r) }.map_err(|e| Error::Os {
        op: "UFFDIO_WAKE",
        errno: e.raw_os_error().unwrap_or(libc::EIO),
    })
}

/// A userfaultfd of our own: for tests, benchmarks and embedders that do not
/// create theirs (QEMU does).
#[derive(Debug)]
pub struct Userfaultfd {
    fd: OwnedFd,
    features: u64,
}

impl Userfaultfd {
    /// Open a non-blocking userfaultfd and negotiate the API, asking for
    /// `features` (e.g. [`UFFD_FEATURE_THREAD_ID`]).
    pub fn new(features: u64) -> Result<Self> {
        // SAFETY: plain syscall with flag arguments.
        let raw =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if raw < 0 {
            return Err(Error::last_os("userfaultfd()"));
        }
        // SAFETY: the syscall returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw as RawFd) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_API takes a uffdio_api.
        unsafe { ioctl(fd.as_fd(), UFFDIO_API, &mut api) }.map_err(|e| Error::Os {
            op: "UFFDIO_API",
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        })?;
        Ok(Userfaultfd {
            fd,
            features: api.features,
        })
    }

    /// Features the kernel granted.
    pub fn features(&self) -> u64 {
        self.features
    }

    /// Register `start..start + len` for missing-page faults.
    pub fn register(&self, start: u64, len: u64) -> Result<()> {
        let mut reg = UffdioRegister {
            range: UffdioRange { start, len },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER takes a uffdio_register; the kernel checks
        // the range is a mapping of ours.
        unsafe { ioctl(self.fd.as_fd(), UFFDIO_REGISTER, &mut reg) }.map_err(|e| Error::Os {
            op: "UFFDIO_REGISTER",
            errno: e.raw_os_error().unwrap_or(libc::EIO),
        })
    }
}

impl AsFd for Userfaultfd {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for Userfaultfd {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}
