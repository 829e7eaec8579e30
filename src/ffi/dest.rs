// SPDX-License-Identifier: GPL-2.0-or-later
//! Destination-side exports: page placement and the fault thread.

use super::boundary::boundary;
use super::convert::{
    block_handle, block_ptr, host_addr, try_cstr, try_fd, try_mut, try_ref, try_slice,
};
use super::handles::{self, PostcopyRsFaultThread};
use crate::addr::{BlockHandle, HostAddr};
use crate::error::{Error, Result};
use crate::fault_thread::{FaultHandler, FaultThread, Resolved, ThreadState};
use crate::placement::{self, Block};
use crate::receivedmap::ReceivedMap;
use crate::uffd::UffdMsg;
use std::os::fd::{BorrowedFd, RawFd};
use std::os::raw::{c_char, c_int, c_ulong, c_void};
use std::ptr::NonNull;

// Placement.

/// `UFFDIO_ZEROPAGE` works on the block's memory (anonymous or shmem; not
/// hugetlbfs).  QEMU: `qemu_ram_is_uf_zeroable()`.
pub const POSTCOPY_RS_BLOCK_ZEROPAGE: u32 = 1;

/// A RAMBlock as the destination sees it, filled in by the embedder.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PostcopyRsBlockView {
    /// Host address of the block's first byte (`RAMBlock.host`), aligned
    /// to `page_size`.
    pub host: *mut c_void,
    /// Bytes of guest RAM in the block (`used_length`), a multiple of
    /// `page_size`.
    pub used_length: u64,
    /// The block's host page size (`qemu_ram_pagesize()`): the unit of
    /// placement.
    pub page_size: u64,
    /// `RAMBlock.receivedmap`, one bit per target page, updated
    /// atomically; or NULL to not track.
    pub receivedmap: *mut c_ulong,
    /// log2 of the target page size (`qemu_target_page_bits()`).
    pub target_page_bits: u32,
    /// `POSTCOPY_RS_BLOCK_*` flags.
    pub flags: u32,
}

assert_same_layout!(PostcopyRsBlockView, [u64; 5]);

/// Validate a block view from C.
///
/// # Safety
/// `v.receivedmap`, if not NULL, must point to
/// `BITS_TO_LONGS(used_length >> target_page_bits)` words that obey
/// [`ReceivedMap::from_raw`]'s rules for as long as the returned block (or
/// a clone) exists.
pub(crate) unsafe fn block_from_view(v: &PostcopyRsBlockView) -> Result<Block> {
    let host = host_addr(v.host, "view->host")?;
    let zeropage = v.flags & POSTCOPY_RS_BLOCK_ZEROPAGE != 0;
    // The geometry first: the slice below is only sound for a valid one.
    let block = Block::new(
        host,
        v.used_length,
        v.page_size,
        v.target_page_bits,
        None,
        zeropage,
    )?;
    let Some(words) = NonNull::new(v.receivedmap) else {
        return Ok(block);
    };
    let bits =
        usize::try_from(v.used_length >> v.target_page_bits).map_err(|_| Error::OutOfRange {
            addr: host.get(),
            len: v.used_length,
        })?;
    // SAFETY: per the function's contract, with the geometry (and so
    // `bits`) validated above.  QEMU also reads and clears bits with plain
    // accesses (test_bit, bitmap_clear); it does so only where no placement
    // of the same page can race, as its own C relied on.
    let map = unsafe { ReceivedMap::from_raw(words, bits) };
    Block::new(
        host,
        v.used_length,
        v.page_size,
        v.target_page_bits,
        Some(map),
        zeropage,
    )
}

/// Place one host page atomically: `block->page_size` bytes from `from` at
/// `host` with `UFFDIO_COPY`, which wakes any thread faulting on it, then
/// mark it in `block->receivedmap`.  QEMU: `postcopy_place_page()`.
///
/// A page that is already present fails with `-EEXIST`, as in QEMU's own
/// `qemu_ufd_copy_ioctl()`, and nobody is woken: its contents are not the
/// source's.  EAGAIN and partial copies are retried.
///
/// Returns 0 or:
/// - `-EFAULT` if `block`, `block->host`, `host` or `from` is NULL;
/// - `-EINVAL` if `host` is not aligned to the page size or the view's
///   geometry is impossible; `-ERANGE` if the page is outside the block;
/// - `-EEXIST` if the page is already present;
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
    boundary("postcopy_rs_place_page", || {
        // SAFETY: forwarded contract, npages = 1.
        unsafe { place_pages_impl(uffd, block, host, from, 1) }
    })
}

/// Place `npages` contiguous host pages with one `UFFDIO_COPY` where the
/// kernel allows it.  Same rules and return values as
/// `postcopy_rs_place_page()`; `from` must be readable for
/// `npages * block->page_size` bytes, and `npages` must be at least 1.
/// On an error part way, the pages before the failing one are placed and
/// marked received.
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
    boundary("postcopy_rs_place_pages", || {
        // SAFETY: forwarded contract.
        unsafe { place_pages_impl(uffd, block, host, from, npages) }
    })
}

/// # Safety
/// As `postcopy_rs_place_pages()`.
unsafe fn place_pages_impl(
    uffd: c_int,
    block: *const PostcopyRsBlockView,
    host: *mut c_void,
    from: *const c_void,
    npages: u64,
) -> Result<()> {
    // SAFETY: NULL or a readable view (contract).
    let view = unsafe { try_ref(block, "block") }?;
    let host = host_addr(host, "host")?;
    if from.is_null() {
        return Err(Error::Null("from"));
    }
    // SAFETY: its receivedmap obeys the view's rules during the call,
    // and the block is dropped before it returns.
    let b = unsafe { block_from_view(view) }?;
    // Bad arguments are named before a bad fd.
    b.offset_of(host.get(), npages)?;
    // SAFETY: open for the call (contract).
    let uffd = unsafe { try_fd(uffd, "placement (bad userfaultfd)") }?;
    // No overflow: offset_of checked the pages fit in the block.
    let len = usize::try_from(npages * b.page_size).map_err(|_| Error::OutOfRange {
        addr: host.get(),
        len: npages,
    })?;
    // SAFETY: from is readable for npages pages (contract), and only
    // read (by the kernel) during the call.
    let from = unsafe { try_slice(from.cast::<u8>(), len, "from") }?;
    placement::place_pages(uffd, &b, host, from, npages)
}

/// Place one zero host page at `host` and mark it received: `UFFDIO_ZEROPAGE`
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
    boundary("postcopy_rs_place_page_zero", || {
        // SAFETY: NULL or a readable view (contract).
        let view = unsafe { try_ref(block, "block") }?;
        let host = host_addr(host, "host")?;
        // SAFETY: as in place_pages_impl.
        let b = unsafe { block_from_view(view) }?;
        // Bad arguments are named before a bad fd.
        b.offset_of(host.get(), 1)?;
        // SAFETY: open for the call (contract).
        let uffd = unsafe { try_fd(uffd, "placement (bad userfaultfd)") }?;
        placement::place_zero(uffd, &b, host)
    })
}

// The fault thread.

/// Where a fault address lies, filled in by `PostcopyRsFaultOps.resolve`.
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

assert_same_layout!(PostcopyRsFaultTarget, [u64; 6]);

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
    /// Map fault address `va` to its block: fill `*out`, return 0; or
    /// return a negative errno if `va` is not guest RAM.
    pub resolve: Option<
        unsafe extern "C" fn(
            opaque: *mut c_void,
            va: u64,
            out: *mut PostcopyRsFaultTarget,
        ) -> c_int,
    >,
    /// Every page fault, before de-duplication: `tid` is the faulting
    /// thread (0 without `UFFD_FEATURE_THREAD_ID`).  QEMU: blocktime begin.
    pub fault:
        Option<unsafe extern "C" fn(opaque: *mut c_void, block: *mut c_void, addr: u64, tid: u32)>,
    /// Ask the source for the host page at block offset `off` (aligned
    /// to the block's page size); `addr` is the faulting address.  Return 0,
    /// or a negative errno if the return path is broken: the thread then
    /// pauses until `postcopy_rs_fault_thread_resume()`, and retries.
    pub request_page: Option<
        unsafe extern "C" fn(opaque: *mut c_void, block: *mut c_void, off: u64, addr: u64) -> c_int,
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

assert_same_layout!(PostcopyRsFaultOps, [u64; 11]);

/// How to start a fault thread.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct PostcopyRsFaultConfig {
    /// The userfaultfd guest RAM is registered with.  The thread works on
    /// its own duplicate, closed when it is stopped.
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

assert_same_layout!(PostcopyRsFaultConfig, [u64; 14]);

/// What the thread is doing (`postcopy_rs_fault_thread_state()`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PostcopyRsFaultThreadState {
    /// Serving faults.
    Running = 0,
    /// Waiting for resume (or stop) after a failed request.
    Paused = 1,
    /// Gone: stopped, or ended by a fatal error.
    Exited = 2,
}

assert_same_layout!(PostcopyRsFaultThreadState, c_int);

impl From<ThreadState> for PostcopyRsFaultThreadState {
    fn from(s: ThreadState) -> Self {
        match s {
            ThreadState::Running => Self::Running,
            ThreadState::Paused => Self::Paused,
            ThreadState::Exited => Self::Exited,
        }
    }
}

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

    fn resolve(&mut self, addr: HostAddr) -> Result<Resolved> {
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
        let r = unsafe { f(self.0.opaque, addr.get(), &mut out) };
        if r < 0 {
            return Err(Error::Callback {
                name: "resolve",
                ret: r,
            });
        }
        // SAFETY: the contract keeps the receivedmap valid until the thread
        // is stopped; the thread drops every Block before it ends.
        let block = unsafe { block_from_view(&out.view) }?;
        Ok(Resolved {
            handle: block_handle(out.block),
            block,
        })
    }

    fn fault(&mut self, handle: BlockHandle, addr: HostAddr, tid: u32) {
        if let Some(f) = self.0.fault {
            // SAFETY: callback contract.
            unsafe { f(self.0.opaque, block_ptr(handle), addr.get(), tid) }
        }
    }

    fn request_page(&mut self, handle: BlockHandle, offset: u64, addr: HostAddr) -> Result<()> {
        let f = self.0.request_page.ok_or(Error::Null("ops.request_page"))?;
        // SAFETY: callback contract.
        let r = unsafe { f(self.0.opaque, block_ptr(handle), offset, addr.get()) };
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

    fn fatal(&mut self, err: &Error, addr: Option<HostAddr>) {
        if let Some(f) = self.0.fatal {
            // 0: the error is not about a fault.
            let addr = addr.map_or(0, HostAddr::get);
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

/// Borrowed fds from a C array of `n`.
///
/// # Safety
/// `fds` must point to `n` readable ints when `n > 0`, each an open fd
/// for `'a`.
unsafe fn fd_list<'a>(fds: *const c_int, n: u32) -> Result<Vec<BorrowedFd<'a>>> {
    // SAFETY: per the function's contract.
    let raw = unsafe { try_slice(fds, n as usize, "shared_fds") }?;
    raw.iter()
        // SAFETY: each is open for 'a (contract).
        .map(|&fd| unsafe { try_fd(fd, "a shared userfaultfd") })
        .collect()
}

/// Start the fault thread (named `cfg->name`, default "fault-default") and
/// return once it runs; `*out` then holds its handle.  QEMU: the thread creation
/// in `postcopy_ram_incoming_setup()`.
///
/// Returns 0 or: `-EFAULT` if `cfg` or `out` is NULL, or `resolve` or
/// `request_page` is missing; `-EBADF` for a negative or closed `uffd` or
/// shared fd; `-EINVAL` if `uffd` is not `O_NONBLOCK` (a fault can vanish
/// between `poll()` and `read()`); the errno of a failed eventfd or thread
/// creation.  On error `*out` is NULL.  Like QEMU's threads
/// (`qemu_thread_create()`), the thread starts with every signal blocked
/// but SIGSEGV, SIGFPE and SIGILL, which a fault on the thread must be able
/// to raise.
///
/// # Safety
/// `cfg` must be readable, `cfg->name` NULL or a C string, `cfg->shared_fds`
/// NULL or `nr_shared_fds` readable ints; the `cfg->ops` callbacks must be
/// callable from the fault thread with `cfg->ops.opaque` until the thread
/// is stopped, and must not call back into the fault-thread API.  (The
/// thread keeps duplicates of the fds: the caller may close its own.)
#[no_mangle]
pub unsafe extern "C" fn postcopy_rs_fault_thread_start(
    cfg: *const PostcopyRsFaultConfig,
    out: *mut *mut PostcopyRsFaultThread,
) -> c_int {
    boundary("postcopy_rs_fault_thread_start", || {
        // SAFETY: NULL or writable (contract).
        let out = unsafe { try_mut(out, "out") }?;
        *out = std::ptr::null_mut();
        // SAFETY: NULL or readable (contract).
        let cfg = unsafe { try_ref(cfg, "cfg") }?;
        if cfg.ops.resolve.is_none() {
            return Err(Error::Null("cfg->ops.resolve"));
        }
        if cfg.ops.request_page.is_none() {
            return Err(Error::Null("cfg->ops.request_page"));
        }
        // SAFETY: open for the call (the thread takes its own duplicates).
        let uffd = unsafe { try_fd(cfg.uffd, "fault thread start (bad userfaultfd)") }?;
        // SAFETY: shared_fds holds nr_shared_fds open fds (contract).
        let shared = unsafe { fd_list(cfg.shared_fds, cfg.nr_shared_fds) }?;
        // SAFETY: NULL or a C string (contract).
        let name = unsafe { try_cstr(cfg.name) }.map(|n| n.to_string_lossy().into_owned());
        let t = FaultThread::start(uffd, &shared, name.as_deref(), Box::new(COps(cfg.ops)))?;
        *out = handles::register(PostcopyRsFaultThread(t, cfg.ops.opaque));
        Ok(())
    })
}

/// Stop the fault thread: signal its eventfd, wake it if paused, join it,
/// and free the handle.  Never hangs on pending faults or a pause.
///
/// Returns 0 if the thread was running until now, or the negative errno
/// that ended it earlier (e.g. -ERANGE after a fault outside guest RAM,
/// -ENOTRECOVERABLE after an internal error).  NULL is `-EFAULT` and a
/// handle already stopped (or never started) `-ESRCH`, both touching
/// nothing: a second stop is an error, not a use-after-free.
#[no_mangle]
pub extern "C" fn postcopy_rs_fault_thread_stop(t: *mut PostcopyRsFaultThread) -> c_int {
    boundary("postcopy_rs_fault_thread_stop", || {
        handles::take(t)?.0.stop()
    })
}

/// Post one resume: a thread paused after a failed request retries it.
/// Like a semaphore post, a resume before the pause is remembered.
/// QEMU: `qemu_sem_post(&mis->postcopy_pause_sem_fault)`.
/// Returns 0, `-EFAULT` for NULL or `-ESRCH` for a handle not live.
#[no_mangle]
pub extern "C" fn postcopy_rs_fault_thread_resume(t: *mut PostcopyRsFaultThread) -> c_int {
    boundary("postcopy_rs_fault_thread_resume", || {
        handles::with_live(t, |t| {
            t.0.resume();
            Ok(())
        })
    })
}

/// Wake the thread so that it calls `ops.check_pause` again (QEMU:
/// `postcopy_fault_thread_notify()`, after closing the return path).
/// Returns 0, `-EFAULT` for NULL or `-ESRCH` for a handle not live.
#[no_mangle]
pub extern "C" fn postcopy_rs_fault_thread_notify(t: *mut PostcopyRsFaultThread) -> c_int {
    boundary("postcopy_rs_fault_thread_notify", || {
        handles::with_live(t, |t| {
            t.0.notify();
            Ok(())
        })
    })
}

/// What the thread is doing now (`PostcopyRsFaultThreadState`), `-EFAULT`
/// for NULL or `-ESRCH` for a handle not live.
#[no_mangle]
pub extern "C" fn postcopy_rs_fault_thread_state(t: *const PostcopyRsFaultThread) -> c_int {
    boundary("postcopy_rs_fault_thread_state", || {
        handles::with_live(t, |t| {
            Ok(PostcopyRsFaultThreadState::from(t.0.state()) as c_int)
        })
    })
}

/// Replace the shared userfaultfds polled besides the main one.  The
/// change takes effect when the thread next wakes (it is woken now).  The
/// thread polls duplicates of them; `shared_fault` receives the numbers
/// given here.  Returns 0, or `-EFAULT` for a NULL `t`, or NULL `fds` with
/// `n > 0`, `-ESRCH` for a handle not live, or `-EBADF` for a negative or
/// closed fd (the set is then unchanged).
///
/// # Safety
/// `fds` must hold `n` ints (may be NULL if `n` is 0).
#[no_mangle]
pub unsafe extern "C" fn postcopy_rs_fault_thread_set_shared_fds(
    t: *mut PostcopyRsFaultThread,
    fds: *const c_int,
    n: u32,
) -> c_int {
    boundary("postcopy_rs_fault_thread_set_shared_fds", || {
        handles::with_live(t, |t| {
            // SAFETY: fds holds n ints (contract).
            let fds = unsafe { fd_list(fds, n) }?;
            t.0.set_shared_fds(&fds)
        })
    })
}
