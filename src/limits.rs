// SPDX-License-Identifier: GPL-2.0-or-later
//! The largest page geometry the library accepts, shared by the checks
//! and the errors that report them.

/// The largest host page size accepted: 16 GiB, the largest hugepage any
/// Linux architecture offers.
pub const MAX_HOST_PAGE_SIZE: u64 = 16 << 30;
/// The largest host-page / target-page ratio accepted: 16 GiB over 4 KiB.
pub const MAX_HOST_RATIO: u64 = 1 << 22;
