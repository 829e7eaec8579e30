// SPDX-License-Identifier: GPL-2.0-or-later
//! Typed integers for what crosses the C boundary as a bare pointer: an
//! address in the embedder's memory, and the embedder's handle for a
//! block.  The core never dereferences either; the types keep them from
//! being mixed up with offsets and lengths.  `src/ffi/convert.rs` makes
//! them from C's pointers.

use std::fmt;

/// A host virtual address in the embedder's memory (QEMU: a `void *`
/// into a RAMBlock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostAddr(u64);

impl HostAddr {
    /// The address `a`.
    #[must_use]
    pub const fn new(a: u64) -> Self {
        HostAddr(a)
    }

    /// The address as a number, for arithmetic and the kernel's ioctls.
    #[must_use]
    pub const fn get(self) -> u64 {
        self.0
    }
}

impl fmt::LowerHex for HostAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::LowerHex::fmt(&self.0, f)
    }
}

/// The embedder's handle for a block (QEMU: the `RAMBlock *`), passed
/// back to it untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct BlockHandle(usize);

impl BlockHandle {
    /// The handle `h`.
    #[must_use]
    pub const fn new(h: usize) -> Self {
        BlockHandle(h)
    }

    /// The handle as the number it was made from.
    #[must_use]
    pub const fn get(self) -> usize {
        self.0
    }
}
