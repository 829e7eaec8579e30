// SPDX-License-Identifier: GPL-2.0-or-later
//! What the library calls in QEMU, and the source-side walk over QEMU's
//! RAMBlock list built on it.
//!
//! Boundary rule: no QEMU struct layout is mirrored here.  `MigrationState`
//! and `RAMBlock` are opaque; every field is read through an accessor QEMU
//! already has (`qemu_ram_get_idstr`, ...) or one the patch series adds
//! (`postcopy_rs_ram_*`, declared at the end of the generated header so
//! that the C compiler checks QEMU's definitions against it).  The C test
//! harness under `tests/c/` fakes every one of these.

use crate::bitmap::{bits_to_longs, Word};
use crate::discard::{self, DiscardSink, SourceBlock};
use crate::error::{Error, Result};
use crate::log;
use crate::stats::{self, Counter};
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_ulong, c_void};

/// QEMU's `MigrationState`, opaque.
#[repr(C)]
pub struct MigrationState {
    _private: [u8; 0],
}

/// QEMU's `RAMBlock`, opaque.
#[repr(C)]
pub struct RAMBlock {
    _private: [u8; 0],
}

type RamBlockIterFunc = unsafe extern "C" fn(rb: *mut RAMBlock, opaque: *mut c_void) -> c_int;

extern "C" {
    // QEMU's own functions (migration/ram.c, system/physmem.c, page-target.c,
    // migration/postcopy-ram.c).
    fn foreach_not_ignored_block(func: RamBlockIterFunc, opaque: *mut c_void) -> c_int;
    fn qemu_ram_get_idstr(rb: *mut RAMBlock) -> *const c_char;
    fn qemu_ram_pagesize(rb: *mut RAMBlock) -> usize;
    fn qemu_ram_get_used_length(rb: *mut RAMBlock) -> u64;
    fn postcopy_discard_send_init(ms: *mut MigrationState, name: *const c_char);
    fn postcopy_discard_send_range(ms: *mut MigrationState, start: c_ulong, length: c_ulong);
    fn postcopy_discard_send_finish(ms: *mut MigrationState);

    // Glue the patch series adds to migration/ram.c: these touch ram.c's
    // statics, which nothing outside ram.c can reach, and TARGET_PAGE_SIZE
    // (QEMU's qemu_target_page_size() is static inline: no symbol).
    fn postcopy_rs_ram_target_page_size() -> usize;
    fn postcopy_rs_ram_discard_prepare(ms: *mut MigrationState);
    fn postcopy_rs_ram_block_bmap(rb: *mut RAMBlock) -> *mut c_ulong;
    fn postcopy_rs_ram_dirty_pages_add(pages: u64);
    fn postcopy_rs_ram_discard_failed(ms: *mut MigrationState, err: c_int, msg: *const c_char);
}

/// The discard sink of a live migration: QEMU's `postcopy_discard_send_*`.
struct QemuSink {
    ms: *mut MigrationState,
}

impl DiscardSink for QemuSink {
    fn send_init(&mut self, name: &CStr) {
        // SAFETY: `ms` is the live MigrationState QEMU handed to
        // ram_postcopy_send_discard_bitmap; `name` is NUL-terminated.
        unsafe { postcopy_discard_send_init(self.ms, name.as_ptr()) }
    }

    fn send_range(&mut self, start: u64, len: u64) {
        // SAFETY: as above.  c_ulong is 64-bit (asserted in bitmap.rs), so
        // the casts are lossless.
        unsafe { postcopy_discard_send_range(self.ms, start as c_ulong, len as c_ulong) }
    }

    fn block_done(&mut self, sum: &discard::BlockSummary) {
        if sum.newly_dirty > 0 {
            // SAFETY: plain counter update in ram.c, on the migration thread.
            unsafe { postcopy_rs_ram_dirty_pages_add(sum.newly_dirty) };
        }
        // Before send_finish, so QEMU's trace there sees this block counted.
        stats::add(Counter::DiscardBlocks, 1);
        stats::add(Counter::DiscardRuns, sum.runs);
        stats::add(Counter::DiscardPages, sum.pages);
        stats::add(Counter::HostpageBitsSet, sum.newly_dirty);
    }

    fn send_finish(&mut self) {
        // SAFETY: as above.
        unsafe { postcopy_discard_send_finish(self.ms) }
    }
}

/// A RAMBlock's fields, read through QEMU's accessors.
struct BlockInfo {
    rb: *mut RAMBlock,
    page_size: u64,
    used_length: u64,
}

impl BlockInfo {
    /// # Safety
    /// `rb` must be a RAMBlock from `foreach_not_ignored_block`, i.e. valid
    /// for the duration of the walk (QEMU holds the RCU read lock).
    unsafe fn read(rb: *mut RAMBlock) -> Result<Self> {
        if rb.is_null() {
            return Err(Error::Null("rb"));
        }
        // SAFETY: per the function's contract.
        let (page_size, used_length) =
            unsafe { (qemu_ram_pagesize(rb), qemu_ram_get_used_length(rb)) };
        Ok(BlockInfo {
            rb,
            page_size: page_size as u64,
            used_length,
        })
    }

    fn name(&self) -> &CStr {
        // SAFETY: idstr is a NUL-terminated array inside the RAMBlock, valid
        // as long as the block (see `read`).
        let p = unsafe { qemu_ram_get_idstr(self.rb) };
        if p.is_null() {
            return c"";
        }
        // SAFETY: non-null, NUL-terminated, lives as long as the block.
        unsafe { CStr::from_ptr(p) }
    }
}

/// State shared with the per-block callbacks.
struct Walk {
    ms: *mut MigrationState,
    target_page_size: u64,
    send: bool,
    result: Result<()>,
}

/// Visit every not-ignored block; stops at the first error.
fn walk(w: &mut Walk) -> Result<()> {
    unsafe extern "C" fn each(rb: *mut RAMBlock, opaque: *mut c_void) -> c_int {
        // SAFETY: opaque is the &mut Walk passed to foreach_not_ignored_block
        // below, alive for the whole synchronous walk.
        let w = unsafe { &mut *opaque.cast::<Walk>() };
        // A panic must not unwind through QEMU's loop: catch it here.
        let r = crate::panic::catch("ram_postcopy_send_discard_bitmap", || {
            // SAFETY: rb comes from QEMU's walk, under its RCU read lock.
            unsafe { visit(w, rb) }
        });
        match r {
            Ok(()) => 0,
            Err(e) => {
                w.result = Err(e);
                1
            }
        }
    }
    // SAFETY: `each` matches RAMBlockIterFunc; `w` outlives the call, which
    // is synchronous.
    unsafe { foreach_not_ignored_block(each, (w as *mut Walk).cast()) };
    std::mem::replace(&mut w.result, Ok(()))
}

/// # Safety
/// As [`BlockInfo::read`].
unsafe fn visit(w: &mut Walk, rb: *mut RAMBlock) -> Result<()> {
    // SAFETY: forwarded contract.
    let info = unsafe { BlockInfo::read(rb) }?;
    let name = info.name();
    let named = |e: Error| Error::Block {
        name: name.to_string_lossy().into_owned(),
        err: Box::new(e),
    };
    let (_, nbits) = discard::validate_block(info.page_size, info.used_length, w.target_page_size)
        .map_err(named)?;
    // SAFETY: rb is valid (contract).
    let bmap = unsafe { postcopy_rs_ram_block_bmap(rb) };
    if bmap.is_null() && nbits > 0 {
        return Err(named(Error::Null("RAMBlock bmap")));
    }
    if !w.send {
        return Ok(());
    }
    let bmap: &mut [Word] = if nbits == 0 {
        &mut []
    } else {
        // SAFETY: QEMU allocates bmap with one bit per target page of the
        // block's max_length >= used_length, so it holds bits_to_longs(nbits)
        // words; the source VM is stopped and the migration thread (this
        // one) is its only user during the discard.
        unsafe { std::slice::from_raw_parts_mut(bmap, bits_to_longs(nbits)) }
    };
    let block = SourceBlock {
        name,
        page_size: info.page_size,
        used_length: info.used_length,
        bmap,
    };
    let sum = discard::discard_block(block, w.target_page_size, &mut QemuSink { ms: w.ms })
        .map_err(named)?;
    log::debug!(
        "discard '{}': {} runs, {} pages, {} bits set by host-page canonicalisation",
        name.to_string_lossy(),
        sum.runs,
        sum.pages,
        sum.newly_dirty
    );
    Ok(())
}

/// The body of `ram_postcopy_send_discard_bitmap`.
///
/// Every block is validated before anything is sent or changed, so a bad
/// block fails the migration cleanly with the source's memory and dirty
/// bitmaps untouched.
///
/// # Safety
/// `ms` must be QEMU's live MigrationState, called on the migration thread
/// with the source VM stopped, as QEMU's postcopy_start() does.
pub unsafe fn send_discard_bitmap(ms: *mut MigrationState) -> Result<()> {
    // SAFETY: no preconditions beyond QEMU being initialised.
    let target_page_size = unsafe { postcopy_rs_ram_target_page_size() } as u64;
    let mut w = Walk {
        ms,
        target_page_size,
        send: false,
        result: Ok(()),
    };
    walk(&mut w)?;
    // SAFETY: per this function's contract.
    unsafe { postcopy_rs_ram_discard_prepare(ms) };
    w.send = true;
    walk(&mut w)
}

/// Tell QEMU the discard failed, so postcopy_start() fails the migration
/// and the source VM carries on.
///
/// # Safety
/// `ms` must be QEMU's live MigrationState.
pub unsafe fn report_discard_failure(ms: *mut MigrationState, e: &Error) {
    let msg = CString::new(format!("postcopy discard: {e}")).unwrap_or_default();
    // SAFETY: per this function's contract; msg outlives the call.
    unsafe { postcopy_rs_ram_discard_failed(ms, e.to_neg_errno(), msg.as_ptr()) };
}
