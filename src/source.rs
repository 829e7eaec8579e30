// SPDX-License-Identifier: GPL-2.0-or-later
//! Source side: the discard bitmap sent at the switch to postcopy, over
//! every RAMBlock the embedder lists.
//!
//! Replaces QEMU's `ram_postcopy_send_discard_bitmap()` body.  What it
//! needs from the embedder comes through two safe traits: [`Blocks`] (the
//! RAMBlock list and each block's dirty bitmap) and [`DiscardHost`] (the
//! last bitmap sync, the dirty page count and the `postcopy_discard_send_*`
//! messages).  `ffi::source` implements them over the C ops struct.

use crate::bitmap::Word;
use crate::discard::{self, BlockSummary, DiscardSink};
use crate::error::{Error, Result};
use crate::log;
use crate::stats::{self, Counter};
use std::ffi::CStr;

/// One RAMBlock, as the embedder describes it.
pub struct RamBlock<'a> {
    /// `RAMBlock::idstr`.
    pub name: &'a CStr,
    /// The block's host page size, in bytes.
    pub page_size: u64,
    /// `used_length`, in bytes.
    pub used_length: u64,
    /// The dirty bitmap, `RAMBlock::bmap`, one bit per target page of
    /// `used_length`.
    pub bmap: &'a mut [Word],
}

/// The embedder's list of RAMBlocks (QEMU: `RAMBLOCK_FOREACH_NOT_IGNORED`).
pub trait Blocks {
    /// Start again from the first block.
    fn rewind(&mut self);
    /// The next block, or None after the last.  The block's geometry is
    /// already validated against `target_page_size` (the bitmap could not
    /// be borrowed otherwise); errors name the block.
    fn next_block(&mut self, target_page_size: u64) -> Result<Option<RamBlock<'_>>>;
}

/// The rest of what the discard needs from its embedder.
pub trait DiscardHost: DiscardSink {
    /// The target page size, in bytes.
    fn target_page_size(&self) -> u64;
    /// The last dirty-bitmap sync, with the source stopped, after every
    /// block has been checked and before anything is sent.
    fn prepare(&mut self);
    /// Canonicalisation marked `pages` more target pages dirty.
    fn dirty_pages_add(&mut self, pages: u64);
}

/// Adds the counters and the dirty page count to the embedder's sink.
struct Counted<'h, H: DiscardHost>(&'h mut H);

impl<H: DiscardHost> DiscardSink for Counted<'_, H> {
    fn send_init(&mut self, name: &CStr) {
        self.0.send_init(name);
    }

    fn send_range(&mut self, start: u64, len: u64) {
        self.0.send_range(start, len);
    }

    fn block_done(&mut self, sum: &BlockSummary) {
        if sum.newly_dirty > 0 {
            self.0.dirty_pages_add(sum.newly_dirty);
        }
        // Before send_finish, so QEMU's trace there sees this block counted.
        stats::add(Counter::DiscardBlocks, 1);
        stats::add(Counter::DiscardRuns, sum.runs);
        stats::add(Counter::DiscardPages, sum.pages);
        stats::add(Counter::HostpageBitsSet, sum.newly_dirty);
    }

    fn send_finish(&mut self) {
        self.0.send_finish();
    }
}

/// `err` about the block named `name`.
pub fn named(name: &CStr, err: Error) -> Error {
    Error::Block {
        name: name.to_string_lossy().into_owned(),
        err: Box::new(err),
    }
}

/// Canonicalise every block's dirty bitmap to its host page size and send
/// one discard range per maximal run of dirty target pages, framed per
/// block by `send_init` / `send_finish`: QEMU's wire format.
///
/// Every block is checked first, so a bad block fails the migration with
/// nothing sent and the source's bitmaps untouched.
pub fn send_discard_bitmap(blocks: &mut impl Blocks, host: &mut impl DiscardHost) -> Result<()> {
    let tps = host.target_page_size();
    blocks.rewind();
    while blocks.next_block(tps)?.is_some() {}
    host.prepare();
    blocks.rewind();
    while let Some(b) = blocks.next_block(tps)? {
        let name = b.name;
        let block = discard::SourceBlock {
            name,
            page_size: b.page_size,
            used_length: b.used_length,
            bmap: b.bmap,
        };
        let sum =
            discard::discard_block(block, tps, &mut Counted(host)).map_err(|e| named(name, e))?;
        log::debug!(
            "discard '{}': {} runs, {} pages, {} bits set by host-page canonicalisation",
            name.to_string_lossy(),
            sum.runs,
            sum.pages,
            sum.newly_dirty
        );
    }
    Ok(())
}
