// SPDX-License-Identifier: GPL-2.0-or-later
//! Source-side exports: host-page canonicalisation and the discard bitmap.

use super::boundary::boundary;
use super::convert::{try_cstr, try_ref, try_slice_mut};
use crate::bitmap::{bits_to_longs, Word};
use crate::discard::{self, DiscardSink, HostRatio};
use crate::error::{Error, Result};
use crate::source::{self, Blocks, DiscardHost, RamBlock};
use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_ulong, c_void};

/// Largest host-page / target-page ratio accepted (16 GiB over 4 KiB pages).
pub const POSTCOPY_RS_MAX_HOST_RATIO: u64 = 4_194_304;
/// Largest host page size accepted, in bytes (16 GiB).
pub const POSTCOPY_RS_MAX_HOST_PAGE_SIZE: u64 = 17_179_869_184;
const _: () = assert!(POSTCOPY_RS_MAX_HOST_RATIO == discard::MAX_HOST_RATIO);
const _: () = assert!(POSTCOPY_RS_MAX_HOST_PAGE_SIZE == discard::MAX_HOST_PAGE_SIZE);

/// Canonicalise a RAMBlock's dirty bitmap to host pages: every host page
/// with any dirty target page becomes wholly dirty.
///
/// `bmap` holds `nr_pages` bits, one per target page; `host_ratio` is the
/// block's page size over the target page size.
///
/// Returns the number of bits newly set (QEMU adds it to
/// `migration_dirty_pages`), or:
/// - `-EFAULT` if `bmap` is NULL (and `nr_pages` is not 0);
/// - `-EINVAL` if `host_ratio` is not a power of two in
///   `1..=POSTCOPY_RS_MAX_HOST_RATIO`, or `nr_pages` is not a multiple of it.
///
/// On error the bitmap is unchanged.
///
/// # Safety
/// `bmap` must point to `BITS_TO_LONGS(nr_pages)` writable `unsigned long`s
/// that no other thread touches during the call.
#[no_mangle]
pub unsafe extern "C" fn postcopy_chunk_hostpages(
    bmap: *mut c_ulong,
    nr_pages: u64,
    host_ratio: u64,
) -> i64 {
    boundary("postcopy_chunk_hostpages", || {
        let ratio = HostRatio::new(host_ratio)?;
        // Validate before the slice exists: it is sized by nr_pages.
        let nbits = usize::try_from(nr_pages).map_err(|_| Error::OutOfRange {
            addr: 0,
            len: nr_pages,
        })?;
        discard::check_length(nbits, ratio)?;
        // SAFETY: bmap holds BITS_TO_LONGS(nr_pages) words, ours for the
        // call (contract).
        let map = unsafe { try_slice_mut(bmap, bits_to_longs(nbits), "bmap") }?;
        discard::chunk_hostpages(map, nbits, ratio)
    })
}

/// One RAMBlock, filled in by `PostcopyRsDiscardOps.next_block`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PostcopyRsDiscardBlock {
    /// The embedder's handle for the block (QEMU: the `RAMBlock *`): the
    /// previous block on entry to `next_block` (NULL: none yet), this one
    /// on return.  Never NULL for a block.
    pub block: *mut c_void,
    /// The block's name (`RAMBlock.idstr`), NUL-terminated; NULL reads as
    /// "".
    pub name: *const c_char,
    /// The block's dirty bitmap (`RAMBlock.bmap`), one bit per target
    /// page of `used_length`; may be NULL only if `used_length` is 0.
    pub bmap: *mut c_ulong,
    /// The block's host page size in bytes (`qemu_ram_pagesize()`).
    pub page_size: u64,
    /// Bytes of guest RAM in the block (`used_length`).
    pub used_length: u64,
}

assert_same_layout!(PostcopyRsDiscardBlock, [u64; 5]);

/// What `postcopy_rs_send_discard_bitmap()` needs from its embedder.
/// Every callback runs on the calling thread, during the call, and
/// receives `opaque`.  `next_block`, `send_init`, `send_range` and
/// `send_finish` are required; the others may be NULL.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PostcopyRsDiscardOps {
    /// Passed to every callback (QEMU: the `MigrationState *`).
    pub opaque: *mut c_void,
    /// The target page size in bytes (QEMU: `TARGET_PAGE_SIZE`).
    pub target_page_size: u64,
    /// Move `*block` to the next block to discard (QEMU: the next
    /// not-ignored RAMBlock) and fill it in; return false after the last.
    /// The blocks are walked twice, first to check them all.
    pub next_block: Option<
        unsafe extern "C" fn(opaque: *mut c_void, block: *mut PostcopyRsDiscardBlock) -> bool,
    >,
    /// The last dirty-bitmap sync, once every block has been checked and
    /// before anything is sent (QEMU: `migration_bitmap_sync()`).
    pub prepare: Option<unsafe extern "C" fn(opaque: *mut c_void)>,
    /// Start one block's discards (QEMU: `postcopy_discard_send_init()`).
    pub send_init: Option<unsafe extern "C" fn(opaque: *mut c_void, name: *const c_char)>,
    /// Discard `length` target pages from target page `start` of the block
    /// (QEMU: `postcopy_discard_send_range()`).
    pub send_range: Option<unsafe extern "C" fn(opaque: *mut c_void, start: u64, length: u64)>,
    /// End one block's discards (QEMU: `postcopy_discard_send_finish()`).
    pub send_finish: Option<unsafe extern "C" fn(opaque: *mut c_void)>,
    /// Canonicalisation marked `pages` more target pages dirty (QEMU: add
    /// them to `migration_dirty_pages`).
    pub dirty_pages_add: Option<unsafe extern "C" fn(opaque: *mut c_void, pages: u64)>,
    /// The discard failed with `err` (a negative errno) before anything was
    /// sent; `msg` says why and names the block (QEMU: fail the migration).
    pub failed: Option<unsafe extern "C" fn(opaque: *mut c_void, err: c_int, msg: *const c_char)>,
}

assert_same_layout!(PostcopyRsDiscardOps, [u64; 9]);

/// The ops, checked: the required callbacks are present.
struct Ops<'a> {
    ops: &'a PostcopyRsDiscardOps,
    send_init: unsafe extern "C" fn(*mut c_void, *const c_char),
    send_range: unsafe extern "C" fn(*mut c_void, u64, u64),
    send_finish: unsafe extern "C" fn(*mut c_void),
}

impl<'a> Ops<'a> {
    fn new(ops: &'a PostcopyRsDiscardOps) -> Result<Self> {
        Ok(Ops {
            ops,
            send_init: ops.send_init.ok_or(Error::Null("ops->send_init"))?,
            send_range: ops.send_range.ok_or(Error::Null("ops->send_range"))?,
            send_finish: ops.send_finish.ok_or(Error::Null("ops->send_finish"))?,
        })
    }
}

// The callbacks' contract (postcopy_rs_send_discard_bitmap's `# Safety`)
// is what makes each call below sound: each is callable with `opaque`
// during the call, with the arguments documented on its field.
impl DiscardSink for Ops<'_> {
    fn send_init(&mut self, name: &CStr) {
        // SAFETY: callback contract; `name` is NUL-terminated and live.
        unsafe { (self.send_init)(self.ops.opaque, name.as_ptr()) }
    }

    fn send_range(&mut self, start: u64, len: u64) {
        // SAFETY: callback contract.
        unsafe { (self.send_range)(self.ops.opaque, start, len) }
    }

    fn send_finish(&mut self) {
        // SAFETY: callback contract.
        unsafe { (self.send_finish)(self.ops.opaque) }
    }
}

impl DiscardHost for Ops<'_> {
    fn target_page_size(&self) -> u64 {
        self.ops.target_page_size
    }

    fn prepare(&mut self) {
        if let Some(f) = self.ops.prepare {
            // SAFETY: callback contract.
            unsafe { f(self.ops.opaque) }
        }
    }

    fn dirty_pages_add(&mut self, pages: u64) {
        if let Some(f) = self.ops.dirty_pages_add {
            // SAFETY: callback contract.
            unsafe { f(self.ops.opaque, pages) }
        }
    }
}

/// The embedder's block list, through `next_block`.
struct CBlocks<'a> {
    ops: &'a PostcopyRsDiscardOps,
    next: unsafe extern "C" fn(*mut c_void, *mut PostcopyRsDiscardBlock) -> bool,
    cur: PostcopyRsDiscardBlock,
}

impl Blocks for CBlocks<'_> {
    fn rewind(&mut self) {
        self.cur.block = std::ptr::null_mut();
    }

    fn next_block(&mut self, target_page_size: u64) -> Result<Option<RamBlock<'_>>> {
        // SAFETY: callback contract; `cur` is a live PostcopyRsDiscardBlock.
        if !unsafe { (self.next)(self.ops.opaque, &mut self.cur) } {
            return Ok(None);
        }
        if self.cur.block.is_null() {
            // The walk would start over: an endless loop.
            return Err(Error::Null("block->block"));
        }
        // SAFETY: the name is NULL or a C string valid during the call
        // (contract).
        let name = unsafe { try_cstr(self.cur.name) }.unwrap_or(c"");
        // The geometry first: the slice below is only sound for a valid one.
        let (_, nbits) =
            discard::validate_block(self.cur.page_size, self.cur.used_length, target_page_size)
                .map_err(|e| source::named(name, e))?;
        // SAFETY: the embedder allocates bmap with one bit per target page
        // of the block (at least used_length), so it holds
        // bits_to_longs(nbits) words; the source is stopped and this thread
        // is its only user during the call (contract).
        let bmap = unsafe { try_slice_mut(self.cur.bmap, bits_to_longs(nbits), "block->bmap") }
            .map_err(|e| source::named(name, e))?;
        Ok(Some(RamBlock {
            name,
            page_size: self.cur.page_size,
            used_length: self.cur.used_length,
            bmap,
        }))
    }
}

/// Send the discard bitmap at the switch to postcopy: QEMU's
/// `ram_postcopy_send_discard_bitmap()` once the patch's glue has filled
/// `ops`.
///
/// Walks the blocks with `ops->next_block`, checks every one, calls
/// `ops->prepare` (the last bitmap sync), then walks them again:
/// canonicalises each dirty bitmap to the block's host page size and sends
/// one discard range per maximal run of dirty target pages, framed per
/// block by `send_init` / `send_finish`.  The wire format is QEMU's.
///
/// Returns 0, or a negative errno: `-EFAULT` if `ops` or a required
/// callback is NULL, or a block has a NULL `bmap` or handle; `-EINVAL` if
/// a block has an impossible page size or a length that is not a whole
/// number of its pages.  A block that fails the check fails the call with
/// nothing sent or changed; `ops->failed` (when `ops` is readable) is
/// told why, naming the block, so QEMU fails the migration and the source
/// VM keeps running.
///
/// # Safety
/// `ops` must be NULL or readable; its callbacks must be callable with
/// `ops->opaque` on this thread during the call, must not call back into
/// this library, and `next_block` must fill in blocks that obey
/// `PostcopyRsDiscardBlock`'s rules, whose bitmaps nothing else touches
/// during the call (QEMU: on the migration thread with the source
/// stopped, under the RCU read lock).
#[no_mangle]
pub unsafe extern "C" fn postcopy_rs_send_discard_bitmap(
    ops: *const PostcopyRsDiscardOps,
) -> c_int {
    boundary("postcopy_rs_send_discard_bitmap", || {
        // SAFETY: NULL or readable (contract).
        let raw = unsafe { try_ref(ops, "ops") }?;
        let r = send(raw);
        if let (Err(e), Some(failed)) = (&r, raw.failed) {
            let msg = CString::new(format!("postcopy discard: {e}")).unwrap_or_default();
            // SAFETY: callback contract; msg outlives the call.
            unsafe {
                failed(raw.opaque, e.to_neg_errno(), msg.as_ptr());
            }
        }
        r
    })
}

fn send(raw: &PostcopyRsDiscardOps) -> Result<()> {
    let mut host = Ops::new(raw)?;
    let mut blocks = CBlocks {
        ops: raw,
        next: raw.next_block.ok_or(Error::Null("ops->next_block"))?,
        cur: PostcopyRsDiscardBlock {
            block: std::ptr::null_mut(),
            name: std::ptr::null(),
            bmap: std::ptr::null_mut(),
            page_size: 0,
            used_length: 0,
        },
    };
    source::send_discard_bitmap(&mut blocks, &mut host)
}

/// The bitmap word is `unsigned long`.
const _: () = assert!(size_of::<Word>() == size_of::<c_ulong>());
