// SPDX-License-Identifier: GPL-2.0-or-later
//! The exported C ABI: a thin layer over the safe core.
//!
//! This is the one place where raw pointers from C become safe types.
//! Every export:
//! - checks its pointers with [`nonnull!`] and returns `-EFAULT` for NULL;
//! - runs its body inside [`crate::panic::catch`], so no panic reaches C;
//! - returns `0`, a non-negative count, or a fixed negative errno, and logs
//!   the detail through the log sink.

use crate::bitmap::{bits_to_longs, Word};
use crate::discard::{self, HostRatio};
use crate::error::{Error, Result};
use crate::fault_thread::{FaultHandler, FaultThread, Resolved};
use crate::log::{self, PostcopyRsLogFn, PostcopyRsLogLevel};
use crate::pagesize;
use crate::panic::{catch, to_c_i64, to_c_int};
use crate::placement::{self, Block};
use crate::qemu::{self, MigrationState};
use crate::stats::{self, PostcopyRsStats};
use crate::uffd::UffdMsg;
use std::os::fd::RawFd;
use std::os::raw::{c_char, c_int, c_ulong, c_void};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU64;

/// Raw pointers of either mutability, for [`nonnull!`].
trait RawPtr<T> {
    fn into_mut(self) -> *mut T;
}
impl<T> RawPtr<T> for *mut T {
    fn into_mut(self) -> *mut T {
        self
    }
}
impl<T> RawPtr<T> for *const T {
    fn into_mut(self) -> *mut T {
        self.cast_mut()
    }
}

/// `NonNull` from a raw pointer, or return `Error::Null` naming the argument.
macro_rules! nonnull {
    ($p:ident) => {
        match NonNull::new(RawPtr::into_mut($p)) {
            Some(p) => p,
            None => return Err(Error::Null(stringify!($p))),
        }
    };
}

/// A bitmap of `nbits` bits from C.
///
/// # Safety
/// `map` must point to at least `bits_to_longs(nbits)` writable words that
/// nothing else accesses for `'a`.
pub(crate) unsafe fn bitmap_mut<'a>(map: NonNull<Word>, nbits: u64) -> Result<&'a mut [Word]> {
    let nbits = usize::try_from(nbits).map_err(|_| Error::OutOfRange {
        addr: 0,
        len: nbits,
    })?;
    // SAFETY: per the function's contract.
    Ok(unsafe { std::slice::from_raw_parts_mut(map.as_ptr(), bits_to_longs(nbits)) })
}

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
    to_c_i64(catch("postcopy_chunk_hostpages", || {
        let ratio = HostRatio::new(host_ratio)?;
        if nr_pages == 0 {
            return Ok(0);
        }
        let map = nonnull!(bmap);
        // SAFETY: per this function's contract.
        let map = unsafe { bitmap_mut(map, nr_pages) }?;
        discard::chunk_hostpages(map, nr_pages as usize, ratio)
    }))
}

/// QEMU's `ram_postcopy_send_discard_bitmap`, same signature.
///
/// At the switch to postcopy: sync the dirty bitmap a last time, canonicalise
/// every not-ignored RAMBlock's bitmap to its host page size, and send one
/// discard range per maximal run of dirty target pages, framed per block by
/// `postcopy_discard_send_init` / `_finish`.  The wire format is QEMU's.
///
/// Every block is checked first; if one has an impossible page size or a
/// length that is not a whole number of its pages, nothing is sent or
/// changed and `postcopy_rs_ram_discard_failed()` is called with `-EINVAL`
/// and a message naming the block, so QEMU fails the migration and the
/// source VM keeps running.  A NULL `ms` is logged and ignored.
///
/// # Safety
/// `ms` must be QEMU's MigrationState, on the migration thread, with the
/// source VM stopped, exactly where QEMU's postcopy_start() calls it.
#[no_mangle]
pub unsafe extern "C" fn ram_postcopy_send_discard_bitmap(ms: *mut MigrationState) {
    let r = catch("ram_postcopy_send_discard_bitmap", || {
        let ms = nonnull!(ms);
        // SAFETY: per this function's contract.
        unsafe { qemu::send_discard_bitmap(ms.as_ptr()) }
    });
    if let Err(e) = r {
        if !ms.is_null() {
            // SAFETY: ms is QEMU's MigrationState (contract).  A panic in
            // QEMU's own callback cannot happen: it is C.
            unsafe { qemu::report_discard_failure(ms, &e) };
        }
    }
}

/// Route the library's messages to `log_fn` (NULL: back to stderr).
/// Messages above `max_level` (a `PostcopyRsLogLevel`; out-of-range values
/// are clamped) are not formatted at all.
///
/// # Safety
/// `log_fn`, if not NULL, must be callable from any thread for the life of
/// the process (a thread may call it just after it is replaced), and must
/// not call back into this library.
#[no_mangle]
pub unsafe extern "C" fn postcopy_rs_set_log_fn(log_fn: PostcopyRsLogFn, max_level: c_int) {
    // An int, not the enum: a C caller can pass any value, and an
    // out-of-range Rust enum would be undefined behaviour.
    let level = match max_level {
        i32::MIN..=0 => PostcopyRsLogLevel::Error,
        1 => PostcopyRsLogLevel::Warning,
        2 => PostcopyRsLogLevel::Info,
        _ => PostcopyRsLogLevel::Debug,
    };
    log::set_sink(log_fn, level);
}

/// Copy the library's counters into `*out`.  Returns 0, or `-EFAULT` if
/// `out` is NULL.
///
/// # Safety
/// `out`, if not NULL, must point to a writable `PostcopyRsStats`.
#[no_mangle]
pub unsafe extern "C" fn postcopy_rs_get_stats(out: *mut PostcopyRsStats) -> c_int {
    to_c_int(catch("postcopy_rs_get_stats", || {
        let out = nonnull!(out);
        // SAFETY: per this function's contract.
        unsafe { out.as_ptr().write(stats::snapshot()) };
        Ok(())
    }))
}

/// Zero the library's counters.
#[no_mangle]
pub extern "C" fn postcopy_rs_reset_stats() {
    stats::reset();
}

// ---------------------------------------------------------------------------
// Destination side: placement.

/// UFFDIO_ZEROPAGE works on the block's memory (anonymous or shmem; not
/// hugetlbfs).  QEMU: `qemu_ram_is_uf_zeroable()`.
pub const POSTCOPY_RS_BLOCK_ZEROPAGE: u32 = 1;

/// A RAMBlock as the destination sees it, filled in by the embedder.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PostcopyRsBlockView {
    /// Host address of the block's first byte (`RAMBlock::host`), aligned
    /// to `page_size`.
    pub host: *mut c_void,
    /// Bytes of guest RAM in the block (`used_length`), a multiple of
    /// `page_size`.
    pub used_length: u64,
    /// The block's host page size (`qemu_ram_pagesize()`): the unit of
    /// placement.
    pub page_size: u64,
    /// `RAMBlock::receivedmap`, one bit per target page, updated
    /// atomically; or NULL to not track.
    pub receivedmap: *mut c_ulong,
    /// log2 of the target page size (`qemu_target_page_bits()`).
    pub target_page_bits: u32,
    /// `POSTCOPY_RS_BLOCK_*` flags.
    pub flags: u32,
}

static_assertions::assert_eq_size!(PostcopyRsBlockView, [u64; 5]);
static_assertions::assert_eq_align!(PostcopyRsBlockView, u64);

/// Validate a block view from C.
///
/// # Safety
/// `v.receivedmap`, if not NULL, must point to `BITS_TO_LONGS(used_length
/// >> target_page_bits)` words that stay valid, and are only accessed
/// atomically by others, for `'a`.
pub(crate) unsafe fn block_from_view<'a>(v: &PostcopyRsBlockView) -> Result<Block<'a>> {
    if v.host.is_null() {
        return Err(Error::Null("view->host"));
    }
    let zeropage = v.flags & POSTCOPY_RS_BLOCK_ZEROPAGE != 0;
    // The geometry first: the slice below is only sound for a valid one.
    let block = Block::new(
        v.host as u64,
        v.used_length,
        v.page_size,
        v.target_page_bits,
        None,
        zeropage,
    )?;
    if v.receivedmap.is_null() {
        return Ok(block);
    }
    let bits =
        usize::try_from(v.used_length >> v.target_page_bits).map_err(|_| Error::OutOfRange {
            addr: v.host as u64,
            len: v.used_length,
        })?;
    // SAFETY: per the function's contract the map holds this many words
    // for 'a.  AtomicU64 has the size and alignment of unsigned long
    // (asserted in bitmap.rs).  QEMU also reads and clears bits with plain
    // accesses (test_bit, bitmap_clear); it does so only where no placement
    // of the same page can race, as its own C relied on.
    let map = unsafe {
        std::slice::from_raw_parts(v.receivedmap.cast::<AtomicU64>(), bits_to_longs(bits))
    };
    Block::new(
        v.host as u64,
        v.used_length,
        v.page_size,
        v.target_page_bits,
        Some(map),
        zeropage,
    )
}

/// Place one host page atomically: `block->page_size` bytes from `from` at
/// `host` with UFFDIO_COPY, which wakes any thread faulting on it, then
/// mark it in `block->receivedmap`.  QEMU: `postcopy_place_page()`.
///
/// A page that is already present (EEXIST) is not an error: the range is
/// woken and 0 returned.  EAGAIN and partial copies are retried.
///
/// Returns 0 or:
/// - `-EFAULT` if `block`, `block->host`, `host` or `from` is NULL;
/// - `-EINVAL` if `host` is not aligned to the page size or the view's
///   geometry is impossible; `-ERANGE` if the page is outside the block;
/// - the ioctl's `-errno` otherwise (logged with the address and length).
///
/// # Safety
/// `uffd` must be the userfaultfd the block is registered with; `block`
/// must satisfy `PostcopyRsBlockView`'s rules; `from` must be readable for
/// `block->page_size` bytes.  Safe to call from several threads at once.
#[no_mangle]
pub unsafe extern "C" fn postcopy_rs_place_page(
    uffd: c_int,
    block: *const PostcopyRsBlockView,
    host: *mut c_void,
    from: *const c_void,
) -> c_int {
    // SAFETY: forwarded contract, npages = 1.
    unsafe { place_pages_impl("postcopy_rs_place_page", uffd, block, host, from, 1) }
}

/// Place `npages` contiguous host pages with one UFFDIO_COPY where the
/// kernel allows it.  Same rules and return values as
/// `postcopy_rs_place_page()`; `from` must be readable for
/// `npages * block->page_size` bytes, and `npages` must be at least 1.
///
/// # Safety
/// As `postcopy_rs_place_page()`.
#[no_mangle]
pub unsafe extern "C" fn postcopy_rs_place_pages(
    uffd: c_int,
    block: *const PostcopyRsBlockView,
    host: *mut c_void,
    from: *const c_void,
    npages: u64,
) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { place_pages_impl("postcopy_rs_place_pages", uffd, block, host, from, npages) }
}

/// # Safety
/// As `postcopy_rs_place_pages()`.
unsafe fn place_pages_impl(
    name: &'static str,
    uffd: c_int,
    block: *const PostcopyRsBlockView,
    host: *mut c_void,
    from: *const c_void,
    npages: u64,
) -> c_int {
    to_c_int(catch(name, || {
        let view = nonnull!(block);
        let host = nonnull!(host);
        let from = nonnull!(from);
        // SAFETY: view points to a readable PostcopyRsBlockView (contract);
        // its receivedmap obeys the view's rules for this call.
        let b = unsafe { block_from_view(view.as_ref()) }?;
        // SAFETY: from is readable for npages pages (contract).
        unsafe {
            placement::place_pages(uffd, &b, host.as_ptr() as u64, from.as_ptr().cast(), npages)
        }
    }))
}

/// Place one zero host page at `host` and mark it received: UFFDIO_ZEROPAGE
/// if `block->flags` has `POSTCOPY_RS_BLOCK_ZEROPAGE`, otherwise (hugetlbfs)
/// a copy from a zero buffer of the block's page size.
/// QEMU: `postcopy_place_page_zero()`.  Return values as
/// `postcopy_rs_place_page()`.
///
/// # Safety
/// As `postcopy_rs_place_page()`, without `from`.
#[no_mangle]
pub unsafe extern "C" fn postcopy_rs_place_page_zero(
    uffd: c_int,
    block: *const PostcopyRsBlockView,
    host: *mut c_void,
) -> c_int {
    to_c_int(catch("postcopy_rs_place_page_zero", || {
        let view = nonnull!(block);
        let host = nonnull!(host);
        // SAFETY: as in place_pages_impl.
        let b = unsafe { block_from_view(view.as_ref()) }?;
        placement::place_zero(uffd, &b, host.as_ptr() as u64)
    }))
}

// ---------------------------------------------------------------------------
// Destination side: the fault thread.

/// Where a fault address lies, filled in by `PostcopyRsFaultOps::resolve`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PostcopyRsFaultTarget {
    /// The embedder's handle for the block (QEMU: the `RAMBlock *`); passed
    /// back to `fault` and `request_page`.
    pub block: *mut c_void,
    /// The block's view; its receivedmap must stay valid until the thread
    /// is stopped.
    pub view: PostcopyRsBlockView,
}

static_assertions::assert_eq_size!(PostcopyRsFaultTarget, [u64; 6]);
static_assertions::assert_eq_align!(PostcopyRsFaultTarget, u64);

/// The embedder's side of the fault thread.  Every callback runs on the
/// fault thread and receives `opaque`.  `resolve` and `request_page` are
/// required; the others may be NULL.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PostcopyRsFaultOps {
    /// Passed to every callback.
    pub opaque: *mut c_void,
    /// First call on the new thread (QEMU: `rcu_register_thread()`).
    pub thread_enter: Option<unsafe extern "C" fn(opaque: *mut c_void)>,
    /// Last call on the thread (QEMU: `rcu_unregister_thread()`).
    pub thread_exit: Option<unsafe extern "C" fn(opaque: *mut c_void)>,
    /// Map fault address `addr` to its block: fill `*out`, return 0; or
    /// return a negative errno if `addr` is not guest RAM.
    pub resolve: Option<
        unsafe extern "C" fn(
            opaque: *mut c_void,
            addr: u64,
            out: *mut PostcopyRsFaultTarget,
        ) -> c_int,
    >,
    /// Every page fault, before de-duplication: `tid` is the faulting
    /// thread (0 without UFFD_FEATURE_THREAD_ID).  QEMU: blocktime begin.
    pub fault:
        Option<unsafe extern "C" fn(opaque: *mut c_void, block: *mut c_void, addr: u64, tid: u32)>,
    /// Ask the source for the host page at block offset `offset` (aligned
    /// to the block's page size); `addr` is the faulting address.  Return 0,
    /// or a negative errno if the return path is broken: the thread then
    /// pauses until `postcopy_rs_fault_thread_resume()`, and retries.
    pub request_page: Option<
        unsafe extern "C" fn(
            opaque: *mut c_void,
            block: *mut c_void,
            offset: u64,
            addr: u64,
        ) -> c_int,
    >,
    /// The thread is pausing.
    pub paused: Option<unsafe extern "C" fn(opaque: *mut c_void)>,
    /// The thread resumed and retries its request.
    pub resumed: Option<unsafe extern "C" fn(opaque: *mut c_void)>,
    /// The thread is ending on error `err` (negative errno), e.g. a fault at
    /// `addr` outside guest RAM (-ERANGE).
    pub fatal: Option<unsafe extern "C" fn(opaque: *mut c_void, err: c_int, addr: u64)>,
    /// A `struct uffd_msg` read from shared userfaultfd `fd`.
    pub shared_fault:
        Option<unsafe extern "C" fn(opaque: *mut c_void, fd: c_int, msg: *mut c_void) -> c_int>,
    /// Called each time the thread wakes: return true to pause now (QEMU:
    /// the return path is gone, `!mis->to_src_file`).  Wake the thread to
    /// re-check with `postcopy_rs_fault_thread_notify()`.
    pub check_pause: Option<unsafe extern "C" fn(opaque: *mut c_void) -> bool>,
}

static_assertions::assert_eq_size!(PostcopyRsFaultOps, [u64; 11]);
static_assertions::assert_eq_align!(PostcopyRsFaultOps, u64);

/// How to start a fault thread.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PostcopyRsFaultConfig {
    /// The userfaultfd guest RAM is registered with; must stay open until
    /// the thread is stopped.
    pub uffd: c_int,
    /// Number of entries in `shared_fds`.
    pub nr_shared_fds: u32,
    /// Extra userfaultfds to poll (vhost-user), or NULL.
    pub shared_fds: *const c_int,
    /// The callbacks.
    pub ops: PostcopyRsFaultOps,
    /// The thread's name (QEMU: `MIGRATION_THREAD_DST_FAULT`), or NULL for
    /// "fault-default".
    pub name: *const c_char,
}

static_assertions::assert_eq_size!(PostcopyRsFaultConfig, [u64; 14]);
static_assertions::assert_eq_align!(PostcopyRsFaultConfig, u64);
static_assertions::assert_eq_size!(crate::fault_thread::PostcopyRsFaultThreadState, c_int);
static_assertions::assert_eq_size!(PostcopyRsLogLevel, c_int);

/// A running fault thread (opaque).
pub struct PostcopyRsFaultThread(FaultThread);

struct COps(PostcopyRsFaultOps);

// SAFETY: the contract of postcopy_rs_fault_thread_start() is that the
// callbacks and `opaque` may be used from the fault thread.
unsafe impl Send for COps {}

impl COps {
    /// Call an optional `void (*)(void *opaque)` callback.
    fn notify(&self, f: Option<unsafe extern "C" fn(opaque: *mut c_void)>) {
        if let Some(f) = f {
            // SAFETY: callback contract (PostcopyRsFaultOps).
            unsafe { f(self.0.opaque) }
        }
    }
}

impl FaultHandler for COps {
    fn thread_enter(&mut self) {
        self.notify(self.0.thread_enter);
    }

    fn thread_exit(&mut self) {
        self.notify(self.0.thread_exit);
    }

    fn resolve(&mut self, addr: u64) -> Result<Resolved> {
        let f = self.0.resolve.ok_or(Error::Null("ops.resolve"))?;
        let mut out = PostcopyRsFaultTarget {
            block: std::ptr::null_mut(),
            view: PostcopyRsBlockView {
                host: std::ptr::null_mut(),
                used_length: 0,
                page_size: 0,
                receivedmap: std::ptr::null_mut(),
                target_page_bits: 0,
                flags: 0,
            },
        };
        // SAFETY: callback contract; `out` is a live struct of the declared type.
        let r = unsafe { f(self.0.opaque, addr, &mut out) };
        if r < 0 {
            return Err(Error::Callback {
                name: "resolve",
                ret: r,
            });
        }
        // SAFETY: the contract keeps the receivedmap valid until the thread
        // is stopped, which outlives every use by the thread.
        let block: Block<'static> = unsafe { block_from_view(&out.view) }?;
        Ok(Resolved {
            handle: out.block as usize,
            block,
        })
    }

    fn fault(&mut self, handle: usize, addr: u64, tid: u32) {
        if let Some(f) = self.0.fault {
            // SAFETY: callback contract.
            unsafe { f(self.0.opaque, handle as *mut c_void, addr, tid) }
        }
    }

    fn request_page(&mut self, handle: usize, offset: u64, addr: u64) -> Result<()> {
        let f = self.0.request_page.ok_or(Error::Null("ops.request_page"))?;
        // SAFETY: callback contract.
        let r = unsafe { f(self.0.opaque, handle as *mut c_void, offset, addr) };
        if r < 0 {
            return Err(Error::Callback {
                name: "request_page",
                ret: r,
            });
        }
        Ok(())
    }

    fn should_pause(&mut self) -> bool {
        match self.0.check_pause {
            // SAFETY: callback contract.
            Some(f) => unsafe { f(self.0.opaque) },
            None => false,
        }
    }

    fn paused(&mut self) {
        self.notify(self.0.paused);
    }

    fn resumed(&mut self) {
        self.notify(self.0.resumed);
    }

    fn fatal(&mut self, err: &Error, addr: u64) {
        if let Some(f) = self.0.fatal {
            // SAFETY: callback contract.
            unsafe { f(self.0.opaque, err.to_neg_errno(), addr) }
        }
    }

    fn shared_fault(&mut self, fd: RawFd, msg: &UffdMsg) -> Result<()> {
        if let Some(f) = self.0.shared_fault {
            // QEMU's handlers take a non-const struct uffd_msg *: give them
            // a copy of their own.
            let mut copy = *msg;
            // SAFETY: callback contract; `copy` is a live uffd_msg.
            let r = unsafe { f(self.0.opaque, fd, std::ptr::from_mut(&mut copy).cast()) };
            if r < 0 {
                return Err(Error::Callback {
                    name: "shared_fault",
                    ret: r,
                });
            }
        }
        Ok(())
    }
}

/// # Safety
/// `fds` must point to `n` readable ints when `n > 0`.
unsafe fn fd_list<'a>(fds: *const c_int, n: u32) -> Result<&'a [c_int]> {
    if n == 0 {
        return Ok(&[]);
    }
    let fds = nonnull!(fds);
    // SAFETY: per the function's contract.
    Ok(unsafe { std::slice::from_raw_parts(fds.as_ptr(), n as usize) })
}

/// Start the fault thread (named `cfg->name`, default "fault-default") and return
/// once it runs; `*out` then holds its handle.  QEMU: the thread creation
/// in `postcopy_ram_incoming_setup()`.
///
/// Returns 0 or: `-EFAULT` if `cfg` or `out` is NULL, or `resolve` or
/// `request_page` is missing; `-EBADF` for a negative or closed `uffd`;
/// `-EINVAL` if `uffd` is not `O_NONBLOCK` (a fault can vanish between
/// poll() and read()); the errno of a failed eventfd or thread creation.
/// On error `*out` is NULL.  Like QEMU's threads (`qemu_thread_create()`),
/// the thread starts with every signal blocked but SIGSEGV, SIGFPE and
/// SIGILL, which a fault on the thread must be able to raise.
///
/// # Safety
/// `cfg` must be readable, `cfg->name` NULL or a C string; `cfg->ops` callbacks must be callable from the
/// fault thread with `cfg->ops.opaque` until the thread is stopped, and must
/// not call back into the fault-thread API; `cfg->uffd` and the shared fds
/// must stay open until then.
#[no_mangle]
pub unsafe extern "C" fn postcopy_rs_fault_thread_start(
    cfg: *const PostcopyRsFaultConfig,
    out: *mut *mut PostcopyRsFaultThread,
) -> c_int {
    to_c_int(catch("postcopy_rs_fault_thread_start", || {
        let out = nonnull!(out);
        // SAFETY: out is writable (contract).
        unsafe { out.as_ptr().write(std::ptr::null_mut()) };
        let cfg = nonnull!(cfg);
        // SAFETY: cfg is readable (contract).
        let cfg = unsafe { cfg.as_ptr().read() };
        if cfg.ops.resolve.is_none() {
            return Err(Error::Null("cfg->ops.resolve"));
        }
        if cfg.ops.request_page.is_none() {
            return Err(Error::Null("cfg->ops.request_page"));
        }
        // SAFETY: shared_fds holds nr_shared_fds ints (contract).
        let shared = unsafe { fd_list(cfg.shared_fds, cfg.nr_shared_fds) }?;
        let name = if cfg.name.is_null() {
            None
        } else {
            // SAFETY: a non-NULL name is a NUL-terminated string (contract).
            Some(
                unsafe { std::ffi::CStr::from_ptr(cfg.name) }
                    .to_string_lossy()
                    .into_owned(),
            )
        };
        let t = FaultThread::start(cfg.uffd, shared, name.as_deref(), Box::new(COps(cfg.ops)))?;
        // SAFETY: out is writable (contract).
        unsafe {
            out.as_ptr()
                .write(Box::into_raw(Box::new(PostcopyRsFaultThread(t))))
        };
        Ok(())
    }))
}

/// Stop the fault thread: signal its eventfd, wake it if paused, join it,
/// and free the handle.  Never hangs on pending faults or a pause.
///
/// Returns 0 if the thread was running until now, or the negative errno
/// that ended it earlier (e.g. -ERANGE after a fault outside guest RAM,
/// -ENOTRECOVERABLE after an internal error).  NULL is a no-op returning
/// -EFAULT.
///
/// # Safety
/// `t` must be a handle from `postcopy_rs_fault_thread_start()`, not yet
/// stopped, and not used again after this call.
#[no_mangle]
pub unsafe extern "C" fn postcopy_rs_fault_thread_stop(t: *mut PostcopyRsFaultThread) -> c_int {
    to_c_int(catch("postcopy_rs_fault_thread_stop", || {
        let t = nonnull!(t);
        // SAFETY: t came from Box::into_raw in start and is not used again
        // (contract).
        let t = unsafe { Box::from_raw(t.as_ptr()) };
        t.0.stop()
    }))
}

/// Post one resume: a thread paused after a failed request retries it.
/// Like a semaphore post, a resume before the pause is remembered.
/// QEMU: `qemu_sem_post(&mis->postcopy_pause_sem_fault)`.
/// Returns 0, or `-EFAULT` for NULL.
///
/// # Safety
/// `t` must be a live handle from `postcopy_rs_fault_thread_start()`.
#[no_mangle]
pub unsafe extern "C" fn postcopy_rs_fault_thread_resume(t: *mut PostcopyRsFaultThread) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { with_thread("postcopy_rs_fault_thread_resume", t, |t| t.resume()) }
}

/// Wake the thread so that it calls `ops.check_pause` again (QEMU:
/// `postcopy_fault_thread_notify()`, after closing the return path).
/// Returns 0, or `-EFAULT` for NULL.
///
/// # Safety
/// `t` must be a live handle from `postcopy_rs_fault_thread_start()`.
#[no_mangle]
pub unsafe extern "C" fn postcopy_rs_fault_thread_notify(t: *mut PostcopyRsFaultThread) -> c_int {
    // SAFETY: forwarded contract.
    unsafe { with_thread("postcopy_rs_fault_thread_notify", t, FaultThread::notify) }
}

/// Run `f` on a live thread handle: 0, or -EFAULT for NULL.
///
/// # Safety
/// `t` must be NULL or a live handle from `postcopy_rs_fault_thread_start()`.
unsafe fn with_thread(
    name: &'static str,
    t: *mut PostcopyRsFaultThread,
    f: impl FnOnce(&FaultThread),
) -> c_int {
    to_c_int(catch(name, || {
        let t = nonnull!(t);
        // SAFETY: live handle (contract); only shared access is needed.
        f(&unsafe { t.as_ref() }.0);
        Ok(())
    }))
}

/// What the thread is doing now (`PostcopyRsFaultThreadState`), or
/// `-EFAULT` for NULL.
///
/// # Safety
/// `t` must be a live handle from `postcopy_rs_fault_thread_start()`.
#[no_mangle]
pub unsafe extern "C" fn postcopy_rs_fault_thread_state(t: *const PostcopyRsFaultThread) -> c_int {
    let r = catch("postcopy_rs_fault_thread_state", || {
        let t = nonnull!(t);
        // SAFETY: live handle (contract).
        Ok(unsafe { t.as_ref() }.0.state() as c_int)
    });
    r.unwrap_or_else(|e| e.to_neg_errno())
}

/// Replace the shared userfaultfds polled besides the main one.  The
/// change takes effect when the thread next wakes (it is woken now), so
/// an fd taken out of the set must stay open until the thread is stopped.
/// Returns 0, or `-EFAULT` for a NULL `t`, or NULL `fds` with `n > 0`.
///
/// # Safety
/// `t` must be a live handle; `fds` must hold `n` ints (may be NULL if `n`
/// is 0), each open until the thread is stopped.
#[no_mangle]
pub unsafe extern "C" fn postcopy_rs_fault_thread_set_shared_fds(
    t: *mut PostcopyRsFaultThread,
    fds: *const c_int,
    n: u32,
) -> c_int {
    // SAFETY: per the function's contract.
    let fds = match catch("postcopy_rs_fault_thread_set_shared_fds", || unsafe {
        fd_list(fds, n)
    }) {
        Ok(fds) => fds,
        Err(e) => return e.to_neg_errno(),
    };
    // SAFETY: forwarded contract.
    unsafe {
        with_thread("postcopy_rs_fault_thread_set_shared_fds", t, |t| {
            t.set_shared_fds(fds)
        })
    }
}

// ---------------------------------------------------------------------------
// Mismatched page sizes between source and destination.

/// The `MIG_RP_MSG_PONG` value a destination sends before failing on
/// mismatched page sizes, carrying its page-size summary
/// (`ram_pagesize_summary()`); 0 if the summary cannot be carried (then
/// send nothing).  Any QEMU source accepts the pong; a postcopy-rs source
/// decodes it with `postcopy_rs_pagesize_pong_decode()`.
#[no_mangle]
pub extern "C" fn postcopy_rs_pagesize_pong_encode(summary: u64) -> u32 {
    pagesize::pong_encode(summary).unwrap_or(0)
}

/// If `pong` is a page-size pong, store the peer's summary in `*summary`
/// and return true; otherwise (any other pong, or NULL `summary`) false.
///
/// # Safety
/// `summary`, if not NULL, must be writable.
#[no_mangle]
pub unsafe extern "C" fn postcopy_rs_pagesize_pong_decode(pong: u32, summary: *mut u64) -> bool {
    let r = catch("postcopy_rs_pagesize_pong_decode", || {
        let out = nonnull!(summary);
        Ok(pagesize::pong_decode(pong).map(|s| {
            // SAFETY: out is writable (contract).
            unsafe { out.as_ptr().write(s) };
        }))
    });
    matches!(r, Ok(Some(())))
}

/// Write the error for mismatched page summaries, naming both sides' page
/// sizes, into `buf` (at most `len` bytes, always NUL-terminated when
/// `len > 0`, like snprintf).  Returns the message's full length, or
/// `-EFAULT` if `buf` is NULL and `len` is not 0.
///
/// # Safety
/// `buf` must be writable for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn postcopy_rs_pagesize_mismatch_message(
    source_summary: u64,
    destination_summary: u64,
    buf: *mut c_char,
    len: usize,
) -> c_int {
    let r = catch("postcopy_rs_pagesize_mismatch_message", || {
        let msg = pagesize::mismatch_message(source_summary, destination_summary);
        if len > 0 {
            let out = nonnull!(buf);
            let n = msg.len().min(len - 1);
            // SAFETY: buf is writable for len > n bytes (contract); the
            // source is a live String of at least n bytes.
            unsafe {
                std::ptr::copy_nonoverlapping(msg.as_ptr(), out.as_ptr().cast::<u8>(), n);
                out.as_ptr().add(n).write(0);
            }
        }
        Ok(c_int::try_from(msg.len()).unwrap_or(c_int::MAX))
    });
    r.unwrap_or_else(|e| e.to_neg_errno())
}
