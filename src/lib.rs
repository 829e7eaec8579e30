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
//! - [`ffi`]: the exported C ABI, the one place raw pointers, raw fds and
//!   callbacks from C become safe types.
//! - [`error`], [`panic`](mod@panic), [`log`], [`stats`]: errors, the panic boundary,
//!   the log sink and counters.
//!
//! The header `include/postcopy_rs.h` is generated from this crate by
//! cbindgen; `docs/BOUNDARY.md` describes the QEMU boundary.

pub mod bitmap;
pub mod discard;
pub mod error;
pub mod fault_thread;
pub mod ffi;
pub mod latency;
pub mod log;
pub mod pagesize;
pub mod panic;
pub mod placement;
pub mod prepage;
pub mod receivedmap;
pub mod source;
pub mod stats;
pub mod uffd;

pub use discard::{MAX_HOST_PAGE_SIZE, MAX_HOST_RATIO};
pub use error::{Error, Result};

/// Largest host-page / target-page ratio accepted (16 GiB over 4 KiB pages).
pub const POSTCOPY_RS_MAX_HOST_RATIO: u64 = 4_194_304;
/// Largest host page size accepted, in bytes (16 GiB).
pub const POSTCOPY_RS_MAX_HOST_PAGE_SIZE: u64 = 17_179_869_184;
static_assertions::const_assert_eq!(POSTCOPY_RS_MAX_HOST_RATIO, discard::MAX_HOST_RATIO);
static_assertions::const_assert_eq!(POSTCOPY_RS_MAX_HOST_PAGE_SIZE, discard::MAX_HOST_PAGE_SIZE);
