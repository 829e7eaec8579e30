// SPDX-License-Identifier: GPL-2.0-or-later
//! postcopy-rs: QEMU's postcopy live-migration RAM path in Rust, behind a
//! C ABI.
//!
//! - [`bitmap`]: QEMU-layout bitmaps, word at a time.
//! - [`discard`]: source side, host-page canonicalisation and discard runs.
//! - [`source`]: source side, the discard bitmap over the embedder's
//!   RAMBlocks.
//! - [`uffd`]: the userfaultfd kernel ABI.
//! - [`placement`]: destination side, atomic page placement.
//! - [`receivedmap`]: the destination's received bitmap, shared with C.
//! - [`fault_thread`]: destination side, the userfaultfd fault thread.
//! - [`latency`]: destination side, fault-to-placement latency per host
//!   page, as a histogram.
//! - [`prepage`]: destination side, adaptive pre-paging in the fault thread.
//! - [`pagesize`]: telling the source which page sizes did not match.
//! - [`ffi`]: the exported C ABI: every `#[repr(C)]` type of it, the one
//!   panic boundary every export goes through, and the one place raw
//!   pointers, raw fds and callbacks from C become safe types.  The
//!   modules above never import it.
//! - [`addr`]: typed host addresses and block handles, as the core takes
//!   them from [`ffi`].
//! - [`error`], [`limits`], [`log`], [`stats`]: errors, the page geometry
//!   accepted, the log sink and counters.
//!
//! The header `include/postcopy_rs.h` is generated from this crate by
//! cbindgen; `docs/BOUNDARY.md` describes the QEMU boundary.

/// The compile fails unless `$a` has the size and the alignment of `$b`
/// (`static_assertions`' `assert_eq_size!` and `assert_eq_align!`, which
/// QEMU's meson build has no wrap for).
macro_rules! assert_same_layout {
    ($a:ty, $b:ty) => {
        const _: () = assert!(::core::mem::size_of::<$a>() == ::core::mem::size_of::<$b>());
        const _: () = assert!(::core::mem::align_of::<$a>() == ::core::mem::align_of::<$b>());
    };
}

pub mod addr;
pub mod bitmap;
pub mod discard;
pub mod error;
pub mod fault_thread;
pub mod ffi;
pub mod latency;
pub mod limits;
pub mod log;
pub mod pagesize;
pub mod placement;
pub mod prepage;
pub mod receivedmap;
pub mod source;
pub mod stats;
pub mod uffd;

pub use error::{Error, Result};
pub use limits::{MAX_HOST_PAGE_SIZE, MAX_HOST_RATIO};
