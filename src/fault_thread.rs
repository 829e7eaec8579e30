// SPDX-License-Identifier: GPL-2.0-or-later
//! Destination side: the userfaultfd fault thread.
//!
//! Replaces `postcopy_ram_fault_thread` and its start/stop
//! (migration/postcopy-ram.c).  The thread:
//! - polls the userfaultfd, a stop eventfd and any shared (vhost-user)
//!   userfaultfds;
//! - reads up to [`BATCH`] `uffd_msg` per `read()` (QEMU reads one);
//! - maps each fault to its block and host page, tells the embedder about
//!   every fault (blocktime accounting), and requests each page from the
//!   source at most once while it is in flight, never once received (but
//!   a page that was only pre-paged is asked for again, alone, when a
//!   thread faults on it: a source may not send all of a range);
//! - notes the time of the first fault on each missing host page, for the
//!   fault-to-placement latency ([`crate::latency`]);
//! - pauses when a request fails (broken return path) until
//!   [`FaultThread::resume`] or [`FaultThread::stop`], then retries;
//! - stops on a fault outside guest RAM, or when the userfaultfd is
//!   unusable (`poll()` reports POLLERR, POLLHUP or POLLNVAL; `read()` returns
//!   end of file), after reporting it;
//! - runs with QEMU's thread signal mask: all blocked but SIGSEGV, SIGFPE
//!   and SIGILL.
//!
//! Start returns only once the thread runs (ready handshake); stop signals
//! the eventfd, wakes a paused thread and joins, so it cannot hang.

use crate::addr::{BlockHandle, HostAddr};
use crate::error::{Error, Result};
use crate::latency;
use crate::log;
use crate::placement::Block;
use crate::prepage::{self, Prepager};
use crate::stats::{self, Counter};
use crate::uffd::{UffdMsg, UFFD_EVENT_PAGEFAULT};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// `uffd_msg` records read per `read()` at most.
pub const BATCH: usize = 64;
/// The thread's name when the embedder gives none.  (QEMU 10.0 passes
/// its own, `MIGRATION_THREAD_DST_FAULT`, "mig/dst/fault"; older QEMUs
/// called it "fault-default".)
pub const DEFAULT_THREAD_NAME: &str = "fault-default";
/// A fault on a page requested longer ago than this asks again.  QEMU's
/// own thread asks on every fault; asking once per page bounds what a
/// lost request (or a page discarded after placement) can cost; QEMU's
/// source drops a request for a page it already sent (no longer dirty).
/// Generous: a 1 GiB page can take a second to arrive.
const REQUEST_AGAIN_AFTER: Duration = Duration::from_secs(2);

/// The block a fault address belongs to.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The embedder's handle for the block (a `RAMBlock *` in QEMU).
    pub handle: BlockHandle,
    /// The block's geometry and received bitmap.
    pub block: Block,
}

/// What the fault thread needs from its embedder.  All methods run on the
/// fault thread.
pub trait FaultHandler: Send {
    /// First thing on the new thread (QEMU: `rcu_register_thread`).
    fn thread_enter(&mut self) {}
    /// Last thing on the thread (QEMU: `rcu_unregister_thread`).
    fn thread_exit(&mut self) {}
    /// Map a faulting address to its block; an error means it is outside
    /// guest RAM.
    fn resolve(&mut self, addr: HostAddr) -> Result<Resolved>;
    /// Every page fault, before any de-duplication (QEMU: blocktime begin,
    /// trace).
    fn fault(&mut self, _handle: BlockHandle, _addr: HostAddr, _tid: u32) {}
    /// Ask the source for the host page at block offset `offset`.  An error
    /// means the return path is broken: the thread pauses, then retries.
    fn request_page(&mut self, handle: BlockHandle, offset: u64, addr: HostAddr) -> Result<()>;
    /// Checked each time the thread wakes: true if it must pause now
    /// because the return path is gone (QEMU: `!mis->to_src_file`).  See
    /// [`FaultThread::notify`].
    fn should_pause(&mut self) -> bool {
        false
    }
    /// The thread is about to pause.
    fn paused(&mut self) {}
    /// The thread resumed and will retry.
    fn resumed(&mut self) {}
    /// The thread is stopping because of `err` (at `addr` if a fault).
    fn fatal(&mut self, _err: &Error, _addr: Option<HostAddr>) {}
    /// A message on a shared userfaultfd.
    fn shared_fault(&mut self, _fd: RawFd, _msg: &UffdMsg) -> Result<()> {
        Ok(())
    }
}

/// What the thread is doing (the C ABI's `PostcopyRsFaultThreadState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadState {
    /// Serving faults.
    Running = 0,
    /// Waiting for resume (or stop) after a failed request.
    Paused = 1,
    /// Gone: stopped, or ended by a fatal error.
    Exited = 2,
}

#[derive(Debug)]
struct Control {
    state: ThreadState,
    /// Resumes posted and not yet consumed: QEMU's pause semaphore.
    resumes: u32,
}

struct Shared {
    quit: AtomicBool,
    event: OwnedFd,
    control: Mutex<Control>,
    cond: Condvar,
    shared_fds: Mutex<Option<Vec<SharedFd>>>,
    /// New pre-paging settings, picked up on wake-up.
    prepage: Mutex<Option<PrepageChange>>,
}

/// Pre-paging settings to apply (None: turn it off).
struct PrepageChange(Option<prepage::Settings>);

/// A shared (vhost-user) userfaultfd: the thread's own duplicate, polled
/// and read, and the embedder's number for it, which the embedder's
/// handler looks it up by.
#[derive(Debug)]
struct SharedFd {
    id: RawFd,
    fd: OwnedFd,
}

/// A setting stored for the thread and not yet taken by it.
fn take_pending<T>(slot: &Mutex<Option<T>>) -> Option<T> {
    slot.lock().unwrap_or_else(PoisonError::into_inner).take()
}

/// The thread's own duplicates of the embedder's shared fds, so that none
/// can be closed under it.
fn dup_shared(fds: &[BorrowedFd<'_>]) -> Result<Vec<SharedFd>> {
    fds.iter()
        .map(|fd| {
            Ok(SharedFd {
                id: fd.as_raw_fd(),
                fd: fd
                    .try_clone_to_owned()
                    .map_err(|_| Error::last_os("dup of a shared userfaultfd"))?,
            })
        })
        .collect()
}

impl Shared {
    /// A running thread's shared state, with a fresh stop eventfd;
    /// `shared_fds` is the set the thread picks up on its first loop.
    fn new(shared_fds: Option<Vec<SharedFd>>) -> Result<Self> {
        // SAFETY: plain syscall; the fd it returns is owned below.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if efd < 0 {
            return Err(Error::last_os("eventfd"));
        }
        Ok(Shared {
            quit: AtomicBool::new(false),
            // SAFETY: a fresh fd from eventfd() that nothing else owns.
            event: unsafe { OwnedFd::from_raw_fd(efd) },
            control: Mutex::new(Control {
                state: ThreadState::Running,
                resumes: 0,
            }),
            cond: Condvar::new(),
            shared_fds: Mutex::new(shared_fds),
            prepage: Mutex::new(None),
        })
    }

    fn kick(&self) {
        let one: u64 = 1;
        // SAFETY: writing 8 bytes from a live u64 to our own eventfd.
        let r = unsafe { libc::write(self.event.as_raw_fd(), std::ptr::from_ref(&one).cast(), 8) };
        if r != 8 {
            // Only fails if the counter would overflow: it is then readable anyway.
            log::debug!("fault thread eventfd write returned {r}");
        }
    }

    fn drain(&self) {
        let mut v: u64 = 0;
        // SAFETY: reading 8 bytes into a live u64 from our non-blocking eventfd.
        unsafe {
            libc::read(self.event.as_raw_fd(), std::ptr::from_mut(&mut v).cast(), 8);
        }
    }

    fn set_state(&self, s: ThreadState) {
        self.control
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .state = s;
    }

    /// Wait for a resume or stop.  Returns false when stopping.
    fn wait_resume(&self) -> bool {
        let mut c = self.control.lock().unwrap_or_else(PoisonError::into_inner);
        c.state = ThreadState::Paused;
        while c.resumes == 0 && !self.quit.load(Ordering::Acquire) {
            c = self.cond.wait(c).unwrap_or_else(PoisonError::into_inner);
        }
        if self.quit.load(Ordering::Acquire) {
            return false;
        }
        c.resumes -= 1;
        c.state = ThreadState::Running;
        true
    }
}

/// A running fault thread.  Dropping it stops it.
pub struct FaultThread {
    shared: Arc<Shared>,
    join: Option<JoinHandle<Result<()>>>,
}

impl FaultThread {
    /// Start the thread on `uffd`, named `name` (default
    /// [`DEFAULT_THREAD_NAME`]), and return once it is running.  The thread
    /// works on its own duplicates of `uffd` and `shared_fds`.
    pub fn start(
        uffd: BorrowedFd<'_>,
        shared_fds: &[BorrowedFd<'_>],
        name: Option<&str>,
        handler: Box<dyn FaultHandler>,
    ) -> Result<Self> {
        let uffd = uffd
            .try_clone_to_owned()
            .map_err(|_| Error::last_os("dup of the userfaultfd"))?;
        let shared_fds = dup_shared(shared_fds)?;
        // A fault can vanish between poll() and read() (a placement woke
        // its thread): a blocking read would then hang the thread.
        // SAFETY: F_GETFL only reads the descriptor's flags.
        let flags = unsafe { libc::fcntl(uffd.as_raw_fd(), libc::F_GETFL) };
        if flags < 0 {
            return Err(Error::last_os("fcntl(F_GETFL) on the userfaultfd"));
        }
        if flags & libc::O_NONBLOCK == 0 {
            return Err(Error::Invalid("the userfaultfd must be opened O_NONBLOCK"));
        }
        let shared = Arc::new(Shared::new(Some(shared_fds))?);
        let (ready_tx, ready_rx) = mpsc::channel();
        let sh = Arc::clone(&shared);
        // Like qemu_thread_create(): the new thread starts with every
        // signal blocked, so QEMU's handlers never run on it, except the
        // synchronous SIGSEGV, SIGFPE and SIGILL: one of those raised while
        // blocked kills the process without running any handler.
        // SAFETY: zeroed sigset_t values are valid to pass to sigfillset /
        // pthread_sigmask, which fully initialise them.
        let (mut set, mut old): (libc::sigset_t, libc::sigset_t) =
            unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        // SAFETY: both sets are live; this only changes this thread's mask,
        // restored right after the spawn.
        unsafe {
            libc::sigfillset(&mut set);
            for sig in [libc::SIGSEGV, libc::SIGFPE, libc::SIGILL] {
                libc::sigdelset(&mut set, sig);
            }
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, &mut old);
        }
        let spawned = std::thread::Builder::new()
            .name(name.unwrap_or(DEFAULT_THREAD_NAME).into())
            .spawn(move || thread_main(sh, uffd, handler, ready_tx));
        // SAFETY: restores the mask saved above.
        unsafe {
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        }
        let join = spawned.map_err(|e| Error::Os {
            op: "spawning the fault thread",
            errno: e.raw_os_error().unwrap_or(libc::EAGAIN),
        })?;
        match ready_rx.recv() {
            Ok(()) => Ok(FaultThread {
                shared,
                join: Some(join),
            }),
            // The thread died before it was ready: report why.
            Err(_) => Err(join
                .join()
                .unwrap_or(Err(Error::Panic))
                .err()
                .unwrap_or(Error::Panic)),
        }
    }

    /// Post one resume: a paused thread retries its request (QEMU's
    /// `qemu_sem_post(&mis->postcopy_pause_sem_fault)`).
    pub fn resume(&self) {
        let mut c = self
            .shared
            .control
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        c.resumes = c.resumes.saturating_add(1);
        // The waiter re-checks `resumes` under the lock: no lost wake-up.
        drop(c);
        self.shared.cond.notify_all();
    }

    /// Wake the thread so that it re-checks
    /// [`FaultHandler::should_pause`] (QEMU: `postcopy_fault_thread_notify`).
    pub fn notify(&self) {
        self.shared.kick();
    }

    /// Replace the set of shared userfaultfds polled besides the main one.
    pub fn set_shared_fds(&self, fds: &[BorrowedFd<'_>]) -> Result<()> {
        let fds = dup_shared(fds)?;
        *self
            .shared
            .shared_fds
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(fds);
        self.shared.kick();
        Ok(())
    }

    /// Turn adaptive pre-paging on with `settings`, or off with None (see
    /// [`crate::prepage`]).  It applies from the thread's next wake-up,
    /// which this causes.
    pub fn set_prepage(&self, settings: Option<prepage::Settings>) {
        *self
            .shared
            .prepage
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(PrepageChange(settings));
        self.shared.kick();
    }

    /// What the thread is doing now.
    pub fn state(&self) -> ThreadState {
        self.shared
            .control
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .state
    }

    /// Stop the thread and join it.  Returns how it ended: Ok after a clean
    /// stop, or the error that ended it earlier.
    pub fn stop(mut self) -> Result<()> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<()> {
        let Some(join) = self.join.take() else {
            return Ok(());
        };
        self.shared.quit.store(true, Ordering::Release);
        self.shared.kick();
        {
            let _c = self
                .shared
                .control
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            self.shared.cond.notify_all();
        }
        join.join().unwrap_or(Err(Error::Panic))
    }
}

impl Drop for FaultThread {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

fn thread_main(
    shared: Arc<Shared>,
    uffd: OwnedFd,
    mut handler: Box<dyn FaultHandler>,
    ready: mpsc::Sender<()>,
) -> Result<()> {
    let res = catch_unwind(AssertUnwindSafe(|| {
        handler.thread_enter();
        let _ = ready.send(());
        Loop {
            shared: &shared,
            uffd: uffd.as_fd(),
            handler: handler.as_mut(),
            inflight: Vec::new(),
            request_again_after: REQUEST_AGAIN_AFTER,
            clock: Clock::new(),
            shared_fds: Vec::new(),
            time_faults: true,
            read_at: 0,
            ranges: Vec::new(),
            prepage: Prepager::default(),
        }
        .run()
    }));
    let res = res.unwrap_or_else(|p| {
        let msg = p
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| p.downcast_ref::<String>().map(String::as_str))
            .unwrap_or("?");
        log::error!("postcopy fault thread: internal error: {msg}");
        // The embedder's own callback cannot have panicked (it is C); tell
        // it, guarded all the same.
        let _ = catch_unwind(AssertUnwindSafe(|| handler.fatal(&Error::Panic, None)));
        Err(Error::Panic)
    });
    if let Err(e) = &res {
        log::error!("postcopy fault thread: {e}");
    }
    // On every path, panic included: QEMU must unregister the thread from
    // RCU, or synchronize_rcu() would wait on a dead thread.
    let _ = catch_unwind(AssertUnwindSafe(|| handler.thread_exit()));
    shared.set_state(ThreadState::Exited);
    res
}

struct Loop<'a> {
    shared: &'a Shared,
    uffd: BorrowedFd<'a>,
    handler: &'a mut dyn FaultHandler,
    /// Host pages requested and not yet seen received, per block.
    inflight: Vec<InFlight>,
    /// See [`REQUEST_AGAIN_AFTER`]; a field so that tests can shorten it.
    request_again_after: Duration,
    clock: Clock,
    shared_fds: Vec<SharedFd>,
    /// Note first faults for the latency histogram (off in the unit tests
    /// below, whose pages are never placed).
    time_faults: bool,
    /// When the last `read()` returned (ns, [`latency::now_ns`]): the time
    /// of every fault it read.
    read_at: u64,
    /// `(host, len)` of the blocks with first faults noted, to drop the
    /// unresolved ones when the thread ends.
    ranges: Vec<(u64, u64)>,
    prepage: Prepager,
}

impl Drop for Loop<'_> {
    /// However the thread ends (a panic too): the faults still waiting
    /// will not be placed for it.
    fn drop(&mut self) {
        latency::abandon(&self.ranges);
    }
}

enum Next {
    Go,
    Quit,
}

/// The fault thread's time, in milliseconds since it started, read once
/// per `read()` batch: a fault's request time is that of the batch that
/// brought it, as its latency start is.
struct Clock {
    epoch: Instant,
    now: Option<u32>,
}

impl Clock {
    fn new() -> Self {
        Clock {
            epoch: Instant::now(),
            now: None,
        }
    }

    /// Now, as of the latest [`Clock::tick`]: 31 bits of milliseconds
    /// from 1 (wrapping after 24 days: ages are taken modulo that), never
    /// 0, which a stamp keeps for "none".
    fn now(&mut self) -> u32 {
        let epoch = self.epoch;
        *self.now.get_or_insert_with(|| {
            let t = (epoch.elapsed().as_millis() as u32).wrapping_add(1) & STAMP_MASK;
            t.max(1)
        })
    }

    /// Read the time again at the next [`Clock::now`].
    fn tick(&mut self) {
        self.now = None;
    }
}

/// The requests in flight on one block: one stamp per host page, so that
/// noting, looking up and dropping a request is an index, with no
/// allocation and no hashing per fault.  A stamp is 0 (none), or the
/// request's [`Clock`] time in its upper 31 bits with bit 0 set when a
/// thread faulted on the page (not pre-paged only).  The fault thread is
/// its only user, so it needs no atomics.  Allocated zeroed, so its memory
/// is only touched where faults are (4 bytes per host page at most).
struct InFlight {
    handle: BlockHandle,
    host: u64,
    len: u64,
    page_shift: u32,
    stamps: Vec<u32>,
}

const FAULTED: u32 = 1;
const STAMP_MASK: u32 = u32::MAX >> 1;

impl InFlight {
    fn new(handle: BlockHandle, block: &Block) -> Self {
        let pages = (block.len >> block.page_size.trailing_zeros()) as usize;
        InFlight {
            handle,
            host: block.host,
            len: block.len,
            page_shift: block.page_size.trailing_zeros(),
            stamps: vec![0; pages],
        }
    }

    fn is(&self, handle: BlockHandle, block: &Block) -> bool {
        self.handle == handle
            && self.host == block.host
            && self.len == block.len
            && 1u64 << self.page_shift == block.page_size
    }

    /// The index of host page `page` (in the block).
    fn index(&self, page: u64) -> usize {
        ((page - self.host) >> self.page_shift) as usize
    }

    /// Page `i`'s request, if one is in flight at `now`: younger than
    /// `again_ms`.  Some(true) if a thread faulted on it.
    fn live(&self, i: usize, now: u32, again_ms: u32) -> Option<bool> {
        let st = self.stamps[i];
        if st == 0 {
            return None;
        }
        let age = now.wrapping_sub(st >> 1) & STAMP_MASK;
        (age < again_ms).then_some(st & FAULTED != 0)
    }

    /// Whether a request for the page at host address `p` is in flight.
    fn live_page(&self, p: u64, now: u32, again_ms: u32) -> bool {
        p >= self.host
            && p - self.host < self.len
            && self.live(self.index(p), now, again_ms).is_some()
    }

    /// Note a request for page `i` at `now` (a [`Clock`] time: not 0).
    fn note(&mut self, i: usize, now: u32, faulted: bool) {
        self.stamps[i] = (now & STAMP_MASK) << 1 | u32::from(faulted);
    }

    fn forget(&mut self, i: usize) {
        self.stamps[i] = 0;
    }

    /// Forget every request (the thread resumed after a pause).
    fn clear(&mut self) {
        self.stamps = vec![0; self.stamps.len()];
    }
}

impl Loop<'_> {
    fn run(&mut self) -> Result<()> {
        let mut buf = [UffdMsg::default(); BATCH];
        let mut pfds: Vec<libc::pollfd> = Vec::new();
        // Settings change only with a write to the eventfd after them, so
        // their mutexes are taken only when it woke us (and at start, for
        // the first set of shared fds), not on every fault.  The shared
        // fds change only here, before pfds is built from them: the fds
        // polled are then the ones read below.
        let mut kicked = true;
        loop {
            if kicked {
                if let Some(fds) = take_pending(&self.shared.shared_fds) {
                    self.shared_fds = fds;
                }
            }
            pfds.clear();
            for fd in [self.uffd.as_raw_fd(), self.shared.event.as_raw_fd()]
                .into_iter()
                .chain(self.shared_fds.iter().map(|s| s.fd.as_raw_fd()))
            {
                pfds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
            }
            // SAFETY: pfds is a live, correctly sized array of pollfd.
            let r = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
            if r < 0 {
                let e = Error::last_os("poll on the userfaultfd");
                if e.errno() == libc::EINTR {
                    continue;
                }
                self.handler.fatal(&e, None);
                return Err(e);
            }
            // Drain before looking at `quit`: stop() sets `quit` and then
            // writes the eventfd, so a write drained here is either seen
            // with its `quit` below or is still pending for the next poll.
            kicked = pfds[1].revents != 0;
            if kicked {
                self.shared.drain();
                self.take_prepage_settings();
            }
            if self.shared.quit.load(Ordering::Acquire) {
                return Ok(());
            }
            if self.handler.should_pause() && !self.pause()? {
                return Ok(());
            }
            // POLLHUP too: poll() reports it at once, every time, so
            // ignoring it would spin.  (A userfaultfd reports POLLERR when
            // unusable; POLLHUP comes from an fd that is not one.)
            let bad = pfds[0].revents & (libc::POLLERR | libc::POLLNVAL | libc::POLLHUP);
            if bad != 0 {
                return Err(self.unusable(
                    "poll on the userfaultfd (POLLERR/POLLHUP/POLLNVAL)",
                    &format!("poll on the userfaultfd returned revents {bad:#x}"),
                ));
            }
            if pfds[0].revents & libc::POLLIN != 0 {
                if let Next::Quit = self.read_batch(&mut buf)? {
                    return Ok(());
                }
            }
            for p in &pfds[2..] {
                if p.revents & (libc::POLLERR | libc::POLLNVAL | libc::POLLHUP) != 0 {
                    // As QEMU does: report it and stop polling that fd.
                    log::error!(
                        "postcopy fault thread: error on shared userfaultfd {}; ignoring it",
                        self.shared_id(p.fd)
                    );
                    self.shared_fds.retain(|s| s.fd.as_raw_fd() != p.fd);
                } else if p.revents & libc::POLLIN != 0 {
                    self.read_shared(p.fd);
                }
            }
        }
    }

    /// The userfaultfd cannot be served (`op` failed as `detail` says):
    /// log it, tell the embedder, and give the error that ends the thread.
    fn unusable(&mut self, op: &'static str, detail: &str) -> Error {
        log::error!("postcopy fault thread: {detail}; stopping");
        let e = Error::Os {
            op,
            errno: libc::EBADF,
        };
        self.handler.fatal(&e, None);
        e
    }

    /// Pause until resumed (true) or stopped (false).
    fn pause(&mut self) -> Result<bool> {
        stats::add(Counter::FaultThreadPauses, 1);
        self.handler.paused();
        if !self.shared.wait_resume() {
            return Ok(false);
        }
        self.handler.resumed();
        // Requests sent before the break may be lost with the old channel:
        // let later faults ask again.
        self.inflight.iter_mut().for_each(InFlight::clear);
        self.clock.tick();
        self.prepage.reset();
        Ok(true)
    }

    fn read_batch(&mut self, buf: &mut [UffdMsg; BATCH]) -> Result<Next> {
        let sz = std::mem::size_of::<UffdMsg>();
        // SAFETY: buf is BATCH writable uffd_msg; the kernel writes whole
        // messages only.
        let n = unsafe { libc::read(self.uffd.as_raw_fd(), buf.as_mut_ptr().cast(), BATCH * sz) };
        if n < 0 {
            let e = Error::last_os("read of the userfaultfd");
            return match e.errno() {
                libc::EAGAIN | libc::EINTR => Ok(Next::Go),
                _ => {
                    self.handler.fatal(&e, None);
                    Err(e)
                }
            };
        }
        let count = n as usize / sz;
        if count == 0 || n as usize % sz != 0 {
            // A userfaultfd returns whole messages or an error, never end
            // of file: this fd is not one, and poll() would report it
            // readable again at once (a spin).
            return Err(self.unusable(
                "read of the userfaultfd (end of file or a partial message)",
                &format!("read of the userfaultfd returned {n} bytes, not whole messages"),
            ));
        }
        if self.time_faults && latency::enabled() {
            self.read_at = latency::now_ns();
        }
        self.clock.tick();
        stats::add(Counter::FaultReads, 1);
        stats::add(Counter::FaultsRead, count as u64);
        for msg in &buf[..count] {
            if let Next::Quit = self.handle(msg)? {
                return Ok(Next::Quit);
            }
        }
        Ok(Next::Go)
    }

    /// The embedder's number for the shared fd we poll as `polled`.
    fn shared_id(&self, polled: RawFd) -> RawFd {
        self.shared_fds
            .iter()
            .find(|s| s.fd.as_raw_fd() == polled)
            .map_or(polled, |s| s.id)
    }

    fn read_shared(&mut self, polled: RawFd) {
        let fd = self.shared_id(polled);
        let mut msg = UffdMsg::default();
        let sz = std::mem::size_of::<UffdMsg>();
        // SAFETY: reading one uffd_msg into a live, correctly sized struct.
        let n = unsafe { libc::read(polled, std::ptr::from_mut(&mut msg).cast(), sz) };
        if n != sz as isize {
            let e = std::io::Error::last_os_error();
            if n < 0 && matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
                return;
            }
            // Anything else would make poll() report it again at once.
            log::error!("postcopy fault thread: shared userfaultfd {fd}: read returned {n} ({e}); ignoring it");
            self.shared_fds.retain(|s| s.fd.as_raw_fd() != polled);
            return;
        }
        if msg.event != UFFD_EVENT_PAGEFAULT {
            stats::add(Counter::EventsIgnored, 1);
            log::warning!(
                "postcopy fault thread: ignoring event {:#x} on shared userfaultfd {fd}",
                msg.event
            );
            return;
        }
        if let Err(e) = self.handler.shared_fault(fd, &msg) {
            log::error!("postcopy fault thread: shared userfaultfd {fd}: {e}");
        }
    }

    fn handle(&mut self, msg: &UffdMsg) -> Result<Next> {
        if msg.event != UFFD_EVENT_PAGEFAULT {
            stats::add(Counter::EventsIgnored, 1);
            log::warning!(
                "postcopy fault thread: ignoring userfaultfd event {:#x}",
                msg.event
            );
            return Ok(Next::Go);
        }
        let addr = msg.pf_address;
        let r = match self.handler.resolve(HostAddr::new(addr)) {
            Ok(r) => r,
            Err(e) => {
                let e = match e {
                    Error::Callback { .. } => {
                        log::error!("postcopy fault thread: fault at {addr:#x} is not in guest RAM; stopping");
                        Error::OutOfRange { addr, len: 1 }
                    }
                    e => {
                        log::error!("postcopy fault thread: the block of fault {addr:#x} is unusable: {e}; stopping");
                        e
                    }
                };
                self.handler.fatal(&e, Some(HostAddr::new(addr)));
                return Err(e);
            }
        };
        let block = r.block;
        let page = addr & !(block.page_size - 1);
        let offset = match block.offset_of(page, 1) {
            Ok(o) => o,
            Err(e) => {
                self.handler.fatal(&e, Some(HostAddr::new(addr)));
                return Err(e);
            }
        };
        self.handler
            .fault(r.handle, HostAddr::new(addr), msg.pf_ptid);
        let b = self.block_state(r.handle, &block);
        let i = self.inflight[b].index(page);
        if block.is_received(offset) || self.first_fault_was_placed(&block, page, offset) {
            self.inflight[b].forget(i);
            stats::add(Counter::RequestsDeduped, 1);
            return Ok(Next::Go);
        }
        let (now, again) = (self.clock.now(), self.again_ms());
        // A page that was only pre-paged, and that a thread now waits for,
        // is asked for again, alone: a source may leave pages of a range
        // unsent (QEMU 10.2's ram_save_queue_pages() with postcopy-preempt
        // counts a page that its background stream is sending as one of
        // the range's and does not move past it), and the waiting thread
        // never faults again to retry.
        let demand = match self.inflight[b].live(i, now, again) {
            Some(faulted) => {
                self.prepage.fault_in_flight(r.handle, page);
                if faulted {
                    stats::add(Counter::RequestsDeduped, 1);
                    return Ok(Next::Go);
                }
                true
            }
            None => false,
        };
        let npages = if demand {
            1
        } else {
            let st = &self.inflight[b];
            self.prepage.plan(r.handle, &block, page, msg.pf_ptid, |p| {
                st.live_page(p, now, again)
            })
        };
        let asked = loop {
            // The faulting page first: alone, or at the head of the range.
            let sent = if npages > 1 {
                self.prepage.request(
                    r.handle,
                    offset,
                    npages,
                    block.page_size,
                    HostAddr::new(addr),
                )
            } else {
                self.handler
                    .request_page(r.handle, offset, HostAddr::new(addr))
                    .map(|()| 1)
            };
            match sent {
                Ok(n) => break n,
                Err(e) => {
                    log::warning!("postcopy fault thread: page request failed ({e}); pausing until the return path is back");
                    if !self.pause()? {
                        return Ok(Next::Quit);
                    }
                }
            }
        };
        stats::add(Counter::PagesRequested, 1);
        if !demand {
            self.prepage
                .requested(r.handle, page, block.page_size, asked);
        }
        // After a pause the clock moved on: note the time of the request
        // that went out.
        let sent_at = self.clock.now();
        let st = &mut self.inflight[b];
        for k in 0..asked as usize {
            st.note(i + k, sent_at, k == 0);
        }
        Ok(Next::Go)
    }

    /// [`Loop::request_again_after`] in [`Clock`] milliseconds.
    fn again_ms(&self) -> u32 {
        u32::try_from(self.request_again_after.as_millis()).unwrap_or(u32::MAX >> 1)
    }

    /// The index of the in-flight state of block `handle`, made on its
    /// first fault.  A handle seen again with another geometry is a new
    /// block: its state starts empty.
    fn block_state(&mut self, handle: BlockHandle, block: &Block) -> usize {
        if let Some(b) = self.inflight.iter().position(|s| s.is(handle, block)) {
            return b;
        }
        let st = InFlight::new(handle, block);
        if self.time_faults {
            let range = (block.host, block.len);
            if !self.ranges.contains(&range) {
                self.ranges.push(range);
            }
        }
        match self.inflight.iter().position(|s| s.handle == handle) {
            Some(b) => {
                self.inflight[b] = st;
                b
            }
            None => {
                self.inflight.push(st);
                self.inflight.len() - 1
            }
        }
    }

    /// Note the first fault on `page` (not received when checked) for the
    /// latency; true if the page turns out received after all, placed
    /// between the check and the note, which then gives no sample.
    fn first_fault_was_placed(&self, block: &Block, page: u64, offset: u64) -> bool {
        if !self.time_faults || !latency::begin(page, self.read_at) {
            return false;
        }
        if block.is_received(offset) {
            latency::cancel(page);
            return true;
        }
        false
    }

    /// Apply pre-paging settings set since the last wake-up.
    fn take_prepage_settings(&mut self) {
        if let Some(PrepageChange(settings)) = take_pending(&self.shared.prepage) {
            self.prepage.configure(settings);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Resolves every address to one block with no receivedmap; every
    /// request succeeds.
    struct NoMap {
        block: Block,
        requests: u64,
    }

    impl FaultHandler for NoMap {
        fn resolve(&mut self, _addr: HostAddr) -> Result<Resolved> {
            Ok(Resolved {
                handle: BlockHandle::new(1),
                block: self.block.clone(),
            })
        }
        fn request_page(
            &mut self,
            _handle: BlockHandle,
            _offset: u64,
            _addr: HostAddr,
        ) -> Result<()> {
            self.requests += 1;
            Ok(())
        }
    }

    fn shared() -> Shared {
        Shared::new(None).expect("eventfd")
    }

    fn fault(addr: u64) -> UffdMsg {
        UffdMsg {
            event: UFFD_EVENT_PAGEFAULT,
            pf_address: addr,
            ..UffdMsg::default()
        }
    }

    const HOST: u64 = 1 << 40;
    const PAGES: u64 = 1 << 20;

    fn no_map() -> NoMap {
        // Never touched: the loop only does arithmetic on the addresses.
        let block = Block::new(HostAddr::new(HOST), PAGES * 4096, 4096, 12, None, true).unwrap();
        NoMap { block, requests: 0 }
    }

    fn new_loop<'a>(shared: &'a Shared, h: &'a mut NoMap) -> Loop<'a> {
        Loop {
            shared,
            // Never read: handle() only does arithmetic on the addresses.
            uffd: shared.event.as_fd(),
            handler: h,
            inflight: Vec::new(),
            request_again_after: REQUEST_AGAIN_AFTER,
            clock: Clock::new(),
            shared_fds: Vec::new(),
            time_faults: false,
            read_at: 0,
            ranges: Vec::new(),
            prepage: Prepager::default(),
        }
    }

    /// Requests in flight, counted from the stamps (for the tests).
    fn live(l: &mut Loop<'_>) -> usize {
        let (now, again) = (l.clock.now(), l.again_ms());
        l.inflight
            .iter()
            .map(|st| {
                (0..st.stamps.len())
                    .filter(|&i| st.live(i, now, again).is_some())
                    .count()
            })
            .sum()
    }

    /// With no receivedmap nothing is ever seen received: the state must
    /// still stay bounded, the block's fixed array of stamps made once on
    /// its first fault, with nothing allocated per fault.
    #[test]
    fn inflight_state_stays_bounded_without_a_receivedmap() {
        let sh = shared();
        let mut h = no_map();
        let mut l = new_loop(&sh, &mut h);
        let n = (1 << 16) + 2_000;
        let mut array = None;
        for i in 0..n {
            assert!(matches!(l.handle(&fault(HOST + i * 4096)), Ok(Next::Go)));
            let st = &l.inflight[0];
            let now = (st.stamps.as_ptr(), st.stamps.capacity());
            assert_eq!(*array.get_or_insert(now), now, "stamps reallocated");
        }
        assert_eq!(l.inflight.len(), 1);
        assert_eq!(l.inflight[0].stamps.len() as u64, PAGES);
        assert_eq!(live(&mut l), n as usize);
        // A fault on a page still in flight is not requested again.
        assert!(matches!(
            l.handle(&fault(HOST + (n - 1) * 4096)),
            Ok(Next::Go)
        ));
        drop(l);
        assert_eq!(h.requests, n);
    }

    /// A fault on a pre-paged page still in flight asks for it again,
    /// alone, once; a second fault on it is de-duplicated.
    #[test]
    fn a_prepaged_page_faulted_on_is_asked_for_again() {
        struct Ranges(std::sync::Arc<std::sync::Mutex<Vec<(u64, u64)>>>);
        impl prepage::RangeRequester for Ranges {
            fn request_range(
                &mut self,
                _: BlockHandle,
                offset: u64,
                len: u64,
                _: HostAddr,
            ) -> Result<u64> {
                self.0.lock().unwrap().push((offset, len));
                Ok(0)
            }
        }
        let ranges = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sh = shared();
        let mut h = no_map();
        let mut l = new_loop(&sh, &mut h);
        l.prepage.configure(Some(prepage::Settings {
            max_pages: 16,
            requester: Box::new(Ranges(std::sync::Arc::clone(&ranges))),
        }));
        // Page 0 alone, then pages 1 and 2 in one range (the window grew).
        for i in [0, 1] {
            assert!(matches!(l.handle(&fault(HOST + i * 4096)), Ok(Next::Go)));
        }
        assert_eq!(*ranges.lock().unwrap(), vec![(4096, 2 * 4096)]);
        // A thread waits on page 2: asked for alone; then de-duplicated.
        for _ in 0..2 {
            assert!(matches!(l.handle(&fault(HOST + 2 * 4096)), Ok(Next::Go)));
        }
        // A fault on page 1, the range's head (requested as a fault), is
        // de-duplicated.
        assert!(matches!(l.handle(&fault(HOST + 4096)), Ok(Next::Go)));
        drop(l);
        assert_eq!(h.requests, 2, "page 0, then page 2 on its own");
        assert_eq!(ranges.lock().unwrap().len(), 1);
    }

    /// Requests older than the re-request timeout are forgotten, and a
    /// fault on such a page asks again, once.
    #[test]
    fn old_requests_are_forgotten() {
        let sh = shared();
        let mut h = no_map();
        let mut l = new_loop(&sh, &mut h);
        // Long enough that a loaded machine cannot age the first 1000
        // before the checks below.
        l.request_again_after = Duration::from_millis(500);
        for i in 0..1000 {
            assert!(matches!(l.handle(&fault(HOST + i * 4096)), Ok(Next::Go)));
        }
        assert_eq!(live(&mut l), 1000);
        // Still in flight: not asked again.
        assert!(matches!(l.handle(&fault(HOST)), Ok(Next::Go)));
        std::thread::sleep(Duration::from_millis(600));
        // As a new read() batch: the clock moves on.
        l.clock.tick();
        assert_eq!(live(&mut l), 0);
        // Page 0 is asked again (it was forgotten), then in flight again.
        for _ in 0..2 {
            assert!(matches!(l.handle(&fault(HOST)), Ok(Next::Go)));
        }
        assert_eq!(live(&mut l), 1);
        drop(l);
        assert_eq!(h.requests, 1001);
    }

    /// The stamps' ages are taken modulo their 31 bits of milliseconds,
    /// across the clock's wrap.
    #[test]
    fn stamps_age_across_the_wrap() {
        let block = Block::new(HostAddr::new(HOST), 4 * 4096, 4096, 12, None, true).unwrap();
        let mut st = InFlight::new(BlockHandle::new(1), &block);
        let top = STAMP_MASK;
        st.note(0, top - 100, true);
        st.note(1, 1, false);
        assert_eq!(st.live(0, top, 2000), Some(true));
        assert_eq!(st.live(0, 1800, 2000), Some(true));
        assert_eq!(st.live(0, 1900, 2000), None);
        assert_eq!(st.live(1, 1, 2000), Some(false));
        assert_eq!(st.live(1, 2001, 2000), None);
        assert_eq!(st.live(2, 1, 2000), None);
        st.forget(0);
        assert_eq!(st.live(0, top, 2000), None);
        assert!(st.live_page(HOST + 4096, 5, 2000));
        assert!(!st.live_page(HOST + 4 * 4096, 5, 2000));
        assert!(!st.live_page(HOST - 4096, 5, 2000));
    }

    /// A pipe's (read, write) ends, both non-blocking.
    fn pipe() -> (OwnedFd, OwnedFd) {
        let mut fds = [0; 2];
        // SAFETY: fds has room for the two descriptors pipe2() returns.
        let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
        assert_eq!(r, 0, "pipe2");
        // SAFETY: fresh descriptors that nothing else owns.
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
    }

    /// Shared fds given after start are polled from the wake-up that
    /// gives them (the thread looks for new settings only when woken).
    /// A pipe stands for the shared userfaultfd: the thread reads whole
    /// messages from it, as from a userfaultfd.
    #[test]
    fn shared_fds_set_after_start_are_polled() {
        struct Seen(std::sync::Arc<Mutex<Vec<(RawFd, u64)>>>);
        impl FaultHandler for Seen {
            fn resolve(&mut self, addr: HostAddr) -> Result<Resolved> {
                Err(Error::OutOfRange {
                    addr: addr.get(),
                    len: 1,
                })
            }
            fn request_page(&mut self, _: BlockHandle, _: u64, _: HostAddr) -> Result<()> {
                Ok(())
            }
            fn shared_fault(&mut self, fd: RawFd, msg: &UffdMsg) -> Result<()> {
                self.0.lock().unwrap().push((fd, msg.pf_address));
                Ok(())
            }
        }
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let (uffd, _uffd_w) = pipe();
        let (r, w) = pipe();
        let t =
            FaultThread::start(uffd.as_fd(), &[], None, Box::new(Seen(Arc::clone(&seen)))).unwrap();
        // Woken by nothing but the change itself.
        t.set_shared_fds(&[r.as_fd()]).unwrap();
        let msg = fault(0x5000);
        // SAFETY: writing one live uffd_msg to our own pipe.
        let n = unsafe {
            libc::write(
                w.as_raw_fd(),
                std::ptr::from_ref(&msg).cast(),
                std::mem::size_of::<UffdMsg>(),
            )
        };
        assert_eq!(n, std::mem::size_of::<UffdMsg>() as isize);
        let deadline = Instant::now() + Duration::from_secs(10);
        while seen.lock().unwrap().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(*seen.lock().unwrap(), vec![(r.as_raw_fd(), 0x5000)]);
        assert_eq!(t.state(), ThreadState::Running);
        t.stop().unwrap();
    }
}
