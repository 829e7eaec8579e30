// SPDX-License-Identifier: GPL-2.0-or-later
//! The exported C ABI: every `#[repr(C)]` type, constant and function of
//! `include/postcopy_rs.h`, and the one place where what C hands us (raw
//! pointers, raw fds, callbacks) becomes a safe type.  The core below it
//! takes references, slices, borrowed fds, [`crate::addr::HostAddr`] and
//! [`crate::addr::BlockHandle`], and never imports this module.
//!
//! Every export is one [`boundary::boundary`] call: its body runs under
//! `catch_unwind`, so no panic reaches C; an error is logged with its
//! detail, and [`boundary::CReturn`] turns the result into `0`, a
//! non-negative count or a fixed negative errno.  Pointers are checked by
//! the functions of [`convert`]: NULL is `-EFAULT`, a negative fd
//! `-EBADF`.
//!
//! - [`version`]: the ABI version;
//! - [`source`]: canonicalisation and the discard bitmap (source side);
//! - [`dest`]: placement and the fault thread (destination side), whose
//!   handles [`handles`] keeps;
//! - [`prepage`]: pre-paging for a running fault thread, and its counters;
//! - [`stats`]: the counters and the latency histogram;
//! - [`log`]: the log sink;
//! - [`pagesize`]: the message about mismatched page sizes.

pub mod boundary;
pub mod convert;
pub mod dest;
pub mod handles;
pub mod log;
pub mod pagesize;
pub mod prepage;
pub mod source;
pub mod stats;
pub mod version;

pub use dest::*;
pub use handles::PostcopyRsFaultThread;
pub use log::*;
pub use pagesize::*;
pub use prepage::*;
pub use source::*;
pub use stats::*;
pub use version::*;
