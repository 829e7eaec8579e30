// SPDX-License-Identifier: GPL-2.0-or-later
//! The version of the C ABI, for an embedder to check at build time (the
//! macro) and at run time (the function) that it was written against this
//! library.

use super::boundary::boundary;
use std::num::NonZeroU32;

/// The version of this C ABI.  It changes whenever any exported function's
/// signature, or the layout of any exported struct or enum, changes; the
/// minor number of the library's version (0.x, and so pkg-config's
/// `Version`) moves with it.  Compare it with
/// `postcopy_rs_abi_version()` to catch a header and a library that do not
/// match.
pub const POSTCOPY_RS_ABI_VERSION: u32 = 3;

/// Checked at compile time: 0 is what an internal error returns.
const VERSION: NonZeroU32 = match NonZeroU32::new(POSTCOPY_RS_ABI_VERSION) {
    Some(v) => v,
    None => panic!("POSTCOPY_RS_ABI_VERSION must not be 0"),
};

/// The ABI version the library was built with: `POSTCOPY_RS_ABI_VERSION`
/// of its own header.  Never 0.
#[no_mangle]
pub extern "C" fn postcopy_rs_abi_version() -> u32 {
    boundary("postcopy_rs_abi_version", || Ok(VERSION))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The crate's version carries the ABI version: 0.N.x for ABI N.
    /// Cargo's view only: QEMU's meson build (which sets `--cfg MESON`)
    /// has no `CARGO_PKG_*` variables to compare with.
    #[cfg(not(MESON))]
    #[test]
    fn crate_version_carries_the_abi_version() {
        assert_eq!(env!("CARGO_PKG_VERSION_MAJOR"), "0");
        assert_eq!(
            env!("CARGO_PKG_VERSION_MINOR").parse::<u32>(),
            Ok(POSTCOPY_RS_ABI_VERSION)
        );
        assert_eq!(postcopy_rs_abi_version(), POSTCOPY_RS_ABI_VERSION);
    }
}
