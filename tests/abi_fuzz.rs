// SPDX-License-Identifier: GPL-2.0-or-later
//! The exported C ABI under random and hostile arguments and random call
//! sequences, on real userfaultfd (issue 12, part 3).
//!
//! Each case runs a random sequence of calls through the exports' Rust
//! paths (`postcopy_rs::ffi::*`, the very functions C links to) against a
//! fresh registered region: NULLs, misaligned and out-of-range addresses,
//! lengths that overflow, impossible geometries, wrong, closed, blocking,
//! hung-up and end-of-file fds, a userfaultfd whose registration is gone,
//! fault threads started, paused, resumed, notified and stopped in any
//! order, with threads faulting on the region meanwhile.  Every call must
//! return 0 (or a count) or one of the negative errnos its documentation
//! lists, never -ENOTRECOVERABLE (a caught panic); none may take longer
//! than [`CALL_BOUND`] (a watchdog aborts the run, naming the call); and
//! the counters of `postcopy_rs_get_stats()` must agree with what the
//! calls did.
//!
//! Only the safety contracts are kept (buffers as large as the arguments
//! say, live handles): everything a C caller can get wrong without
//! undefined behaviour is fair game.
//!
//! `POSTCOPY_RS_FUZZ_CASES` (or proptest's own `PROPTEST_CASES`) sets the
//! number of cases; the default keeps the run short enough for the test
//! command.  Needs root (or `vm.unprivileged_userfaultfd=1`).

mod common;

use common::*;
use postcopy_rs::ffi::{self, PostcopyRsBlockView, PostcopyRsFaultConfig, PostcopyRsFaultOps};
use postcopy_rs::ffi::{PostcopyRsFaultTarget, PostcopyRsFaultThread, POSTCOPY_RS_BLOCK_ZEROPAGE};
use postcopy_rs::ffi::{PostcopyRsLatency, PostcopyRsLogLevel};
use postcopy_rs::ffi::{PostcopyRsPrepageStats, PostcopyRsStats};
use postcopy_rs::uffd::Userfaultfd;
use proptest::prelude::*;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::raw::{c_char, c_int, c_ulong, c_void};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// No call may take longer (stop joins a thread; nothing else waits).
const CALL_BOUND: Duration = Duration::from_secs(10);
/// Registered 4 KiB pages per case.
const NPAGES: u64 = 8;
/// Pages in the source buffer past the one a placement starts from: more
/// than any placement that can pass the range checks reads.
const SRC_PAGES: u64 = 64;
const SALT: u64 = 0xabba;

const EFAULT: i32 = -libc::EFAULT;
const EINVAL: i32 = -libc::EINVAL;
const ERANGE: i32 = -libc::ERANGE;
const EBADF: i32 = -libc::EBADF;
const ESRCH: i32 = -libc::ESRCH;
const STATS_SIZE: usize = std::mem::size_of::<PostcopyRsStats>();
const PREPAGE_STATS_SIZE: usize = std::mem::size_of::<PostcopyRsPrepageStats>();
const LATENCY_SIZE: usize = std::mem::size_of::<PostcopyRsLatency>();
/// The largest struct a getter writes.
const GETTER_MAX: usize = 256;
const _: () = assert!(
    STATS_SIZE <= GETTER_MAX && PREPAGE_STATS_SIZE <= GETTER_MAX && LATENCY_SIZE <= GETTER_MAX
);

// --- The watchdog ----------------------------------------------------------

static CURRENT: Mutex<Option<(String, Instant)>> = Mutex::new(None);

/// Run `f` (one call, described by `what`) under the watchdog: a call that
/// does not return within `CALL_BOUND` aborts the run after naming itself,
/// so that a hang fails the test instead of stalling it.
fn bounded<T>(what: impl FnOnce() -> String, f: impl FnOnce() -> T) -> T {
    static START: Once = Once::new();
    START.call_once(|| {
        std::thread::spawn(|| loop {
            std::thread::sleep(Duration::from_millis(100));
            let cur = CURRENT
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((call, at)) = &*cur {
                if at.elapsed() > CALL_BOUND {
                    use std::io::Write;
                    let _ = writeln!(
                        std::io::stderr(),
                        "abi_fuzz: {call} did not return within {CALL_BOUND:?}: aborting"
                    );
                    std::process::abort();
                }
            }
        });
    });
    *CURRENT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some((what(), Instant::now()));
    let r = f();
    *CURRENT
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
    r
}

fn stats() -> PostcopyRsStats {
    let mut s = PostcopyRsStats::default();
    // SAFETY: a live, writable PostcopyRsStats.
    let n = unsafe { ffi::postcopy_rs_get_stats(&mut s, STATS_SIZE) };
    assert_eq!(n, STATS_SIZE as i32);
    s
}

fn ffi_prepage_stats() -> PostcopyRsPrepageStats {
    let mut s = PostcopyRsPrepageStats::default();
    // SAFETY: a live, writable PostcopyRsPrepageStats.
    let n = unsafe { ffi::postcopy_rs_get_prepage_stats(&mut s, PREPAGE_STATS_SIZE) };
    assert_eq!(n, PREPAGE_STATS_SIZE as i32);
    s
}

// --- The arguments ---------------------------------------------------------

/// Which fd a call gets.
#[derive(Debug, Clone, Copy)]
enum Fd {
    /// The region's userfaultfd.
    Uffd,
    Minus1,
    /// Far above any open fd.
    Huge,
    /// An fd number closed just before the call.
    Closed,
    /// /dev/null, `O_NONBLOCK`: readable, reads end-of-file.
    DevNull,
    /// The read end of a pipe whose write end is closed: POLLHUP.
    HungUp,
    /// A userfaultfd without `O_NONBLOCK`.
    Blocking,
    /// A userfaultfd whose registered mapping has been unmapped.
    RegistrationGone,
}

#[derive(Debug, Clone, Copy)]
enum View {
    /// The region as it is, with its receivedmap.
    Canonical,
    /// The same without a receivedmap.
    NoMap,
    /// 64 pages (past the registered 8), no receivedmap.
    Bigger,
    Null,
    NullHost,
    MisalignedHost,
    /// A length that overflows the address space.
    HugeLen,
    /// A length that is not a whole number of pages.
    PartialPage,
    PageSize(u64),
    TargetBits(u32),
}

#[derive(Debug, Clone, Copy)]
enum Host {
    /// Page `i` of the region (past its end if `i >= NPAGES`).
    Page(u64),
    Misaligned(u64, u64),
    Null,
    Top,
    Below,
}

#[derive(Debug, Clone)]
enum Shared {
    None,
    /// NULL with a count.
    NullWithCount(u32),
    /// Bogus fds: -1 and one never opened.  (Not a closed one: its
    /// number could be reused, e.g. by another thread's eventfd, which the
    /// contract rules out: shared fds stay open until the stop.)
    Bogus,
}

#[derive(Debug, Clone)]
enum Op {
    Place {
        fd: Fd,
        view: View,
        host: Host,
        from_null: bool,
        npages: u64,
    },
    PlaceZero {
        fd: Fd,
        view: View,
        host: Host,
    },
    Start {
        fd: Fd,
        cfg_null: bool,
        out_null: bool,
        no_resolve: bool,
        no_request: bool,
        shared: Shared,
        named: bool,
        /// 0: resolve works; 1: it fails; 2: it returns a NULL host.
        resolve_mode: u8,
    },
    /// Stop the newest thread (NULL when there is none: stop twice).
    Stop,
    Resume,
    Notify,
    State,
    SetShared(Shared),
    /// Pre-paging on the newest thread: its maximum window (bogus ones
    /// included) and whether the range callback is NULL.
    SetPrepage {
        max: u32,
        null_cb: bool,
    },
    /// The same calls with a NULL handle.
    NullHandle(u8),
    /// The same calls with the handle stopped last (a second stop, a late
    /// notify): -ESRCH, not a use-after-free.
    StaleHandle(u8),
    /// A thread reads page `i` (and blocks until it is placed).
    Touch(u64),
    /// A thread reads pages `i..` in order, up to four (a stream to
    /// pre-page for).
    TouchRun(u64),
    /// Place every page requested so far.
    Serve,
    /// Make the next `n` page requests fail (the thread pauses).
    FailRequests(u32),
    /// The return path is gone (or back): the thread pauses when woken.
    ReturnPathGone(bool),
    Chunk {
        null: bool,
        nr_pages: u64,
        ratio: u64,
    },
    Message {
        null: bool,
        len: usize,
    },
    /// A getter (0: `postcopy_rs_get_stats()`, 1: `_get_prepage_stats()`,
    /// 2: `_get_latency()`) into a NULL or a buffer of `size` bytes.
    GetCounters {
        which: u8,
        null: bool,
        size: usize,
    },
}

fn fd() -> impl Strategy<Value = Fd> {
    prop_oneof![
        6 => Just(Fd::Uffd),
        1 => Just(Fd::Minus1),
        1 => Just(Fd::Huge),
        1 => Just(Fd::Closed),
        1 => Just(Fd::DevNull),
        1 => Just(Fd::HungUp),
        1 => Just(Fd::Blocking),
        1 => Just(Fd::RegistrationGone),
    ]
}

fn view() -> impl Strategy<Value = View> {
    prop_oneof![
        8 => Just(View::Canonical),
        2 => Just(View::NoMap),
        1 => Just(View::Bigger),
        1 => Just(View::Null),
        1 => Just(View::NullHost),
        1 => Just(View::MisalignedHost),
        1 => Just(View::HugeLen),
        1 => Just(View::PartialPage),
        1 => any::<u64>().prop_map(View::PageSize),
        // Impossible ones only: a valid other size would be a valid block.
        1 => prop_oneof![Just(1u64 << 21), Just(2048u64), Just(0u64), Just(3u64 << 12), Just(1u64 << 40)]
            .prop_map(View::PageSize),
        1 => any::<u32>().prop_map(View::TargetBits),
    ]
}

fn host() -> impl Strategy<Value = Host> {
    prop_oneof![
        8 => (0..NPAGES + 2).prop_map(Host::Page),
        1 => (0..NPAGES, 1..4096u64).prop_map(|(i, o)| Host::Misaligned(i, o)),
        1 => Just(Host::Null),
        1 => Just(Host::Top),
        1 => Just(Host::Below),
    ]
}

fn npages() -> impl Strategy<Value = u64> {
    prop_oneof![
        6 => 1..4u64,
        1 => Just(0u64),
        1 => 4..=NPAGES + 1,
        1 => Just(SRC_PAGES),
        1 => Just(u64::MAX),
        1 => Just(u64::MAX / 4096 + 1),
        1 => Just(1u64 << 52),
    ]
}

fn shared() -> impl Strategy<Value = Shared> {
    prop_oneof![
        4 => Just(Shared::None),
        1 => (1..4u32).prop_map(Shared::NullWithCount),
        1 => Just(Shared::Bogus),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (fd(), view(), host(), prop::bool::weighted(0.1), npages()).prop_map(
            |(fd, view, host, from_null, npages)| Op::Place { fd, view, host, from_null, npages }
        ),
        3 => (fd(), view(), host()).prop_map(|(fd, view, host)| Op::PlaceZero { fd, view, host }),
        4 => (
            fd(),
            prop::bool::weighted(0.05),
            prop::bool::weighted(0.05),
            prop::bool::weighted(0.05),
            prop::bool::weighted(0.05),
            shared(),
            any::<bool>(),
            prop_oneof![8 => Just(0u8), 1 => Just(1u8), 1 => Just(2u8)],
        )
            .prop_map(
                |(fd, cfg_null, out_null, no_resolve, no_request, shared, named, resolve_mode)| {
                    Op::Start { fd, cfg_null, out_null, no_resolve, no_request, shared, named, resolve_mode }
                }
            ),
        3 => Just(Op::Stop),
        2 => Just(Op::Resume),
        2 => Just(Op::Notify),
        1 => Just(Op::State),
        1 => shared().prop_map(Op::SetShared),
        2 => (
            prop_oneof![4 => 0..=20u32, 1 => 1020..=1030u32, 1 => any::<u32>()],
            prop::bool::weighted(0.1)
        )
            .prop_map(|(max, null_cb)| Op::SetPrepage { max, null_cb }),
        1 => (0..6u8).prop_map(Op::NullHandle),
        1 => (0..6u8).prop_map(Op::StaleHandle),
        4 => (0..NPAGES).prop_map(Op::Touch),
        2 => (0..NPAGES).prop_map(Op::TouchRun),
        3 => Just(Op::Serve),
        1 => (1..3u32).prop_map(Op::FailRequests),
        1 => any::<bool>().prop_map(Op::ReturnPathGone),
        1 => (any::<bool>(), prop_oneof![0..=1024u64, any::<u64>()], prop_oneof![
            (0..12u32).prop_map(|b| 1u64 << b),
            any::<u64>()
        ])
            .prop_map(|(null, nr_pages, ratio)| Op::Chunk { null, nr_pages, ratio }),
        1 => (any::<bool>(), 0..200usize).prop_map(|(null, len)| Op::Message { null, len }),
        2 => (
            0..3u8,
            prop::bool::weighted(0.3),
            prop_oneof![0..=GETTER_MAX + 16, any::<usize>()]
        )
            .prop_map(|(which, null, size)| Op::GetCounters { which, null, size }),
    ]
}

// --- The embedder's side of the fault thread -------------------------------

/// What the callbacks see (their `opaque`).
struct Ctx {
    base: u64,
    len: u64,
    map: *mut c_ulong,
    resolve_mode: AtomicU32,
    requests: Mutex<Vec<u64>>,
    /// Pages requested by range callbacks beyond their first.
    prepaged: AtomicU64,
    fail_requests: AtomicU32,
    return_path_gone: AtomicBool,
    paused: AtomicU64,
    resumed: AtomicU64,
    enters: AtomicU64,
    exits: AtomicU64,
    fatal: Mutex<Vec<(c_int, u64)>>,
    bad_handle: AtomicBool,
}

// SAFETY: `map` points to the region's receivedmap, atomics shared with the
// library; everything else is Sync.
unsafe impl Sync for Ctx {}

/// # Safety
/// `opaque` must be the `Ctx` given to the thread, which each case keeps
/// alive until all its threads are stopped.
unsafe fn ctx<'a>(opaque: *mut c_void) -> &'a Ctx {
    // SAFETY: per the function's contract.
    unsafe { &*opaque.cast::<Ctx>() }
}

unsafe extern "C" fn cb_enter(opaque: *mut c_void) {
    // SAFETY: the thread's own opaque, a live Ctx.
    unsafe { ctx(opaque) }.enters.fetch_add(1, SeqCst);
}
unsafe extern "C" fn cb_exit(opaque: *mut c_void) {
    // SAFETY: the thread's own opaque, a live Ctx.
    unsafe { ctx(opaque) }.exits.fetch_add(1, SeqCst);
}
unsafe extern "C" fn cb_resolve(
    opaque: *mut c_void,
    addr: u64,
    out: *mut PostcopyRsFaultTarget,
) -> c_int {
    // SAFETY: the thread's own opaque, a live Ctx.
    let c = unsafe { ctx(opaque) };
    if !(c.base..c.base + c.len).contains(&addr) {
        return -libc::ENOENT;
    }
    let mode = c.resolve_mode.load(SeqCst);
    if mode == 1 {
        return -libc::EIO;
    }
    let view = PostcopyRsBlockView {
        host: if mode == 2 {
            std::ptr::null_mut()
        } else {
            c.base as *mut c_void
        },
        used_length: c.len,
        page_size: PAGE_4K,
        receivedmap: c.map,
        target_page_bits: 12,
        flags: POSTCOPY_RS_BLOCK_ZEROPAGE,
    };
    // SAFETY: `out` is the library's live target.
    unsafe {
        out.write(PostcopyRsFaultTarget {
            block: opaque,
            view,
        });
    }
    0
}
unsafe extern "C" fn cb_request(
    opaque: *mut c_void,
    block: *mut c_void,
    offset: u64,
    _addr: u64,
) -> c_int {
    // SAFETY: the thread's own opaque, a live Ctx.
    let c = unsafe { ctx(opaque) };
    // Not assert!: a panic cannot unwind out of an extern "C" fn.
    if block != opaque {
        c.bad_handle.store(true, SeqCst);
    }
    if c.fail_requests
        .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return -libc::EIO;
    }
    c.requests.lock().unwrap().push(offset);
    0
}
unsafe extern "C" fn cb_request_range(
    opaque: *mut c_void,
    block: *mut c_void,
    offset: u64,
    len: u64,
    addr: u64,
) -> i64 {
    // SAFETY: the thread's own opaque, a live Ctx.
    let c = unsafe { ctx(opaque) };
    // The faulting page first, whole pages, at least two, in the region.
    if block != opaque
        || len < 2 * PAGE_4K
        || len % PAGE_4K != 0
        || !offset.checked_add(len).is_some_and(|end| end <= c.len)
        || !(c.base + offset..c.base + offset + PAGE_4K).contains(&addr)
    {
        c.bad_handle.store(true, SeqCst);
    }
    if c.fail_requests
        .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return i64::from(-libc::EIO);
    }
    c.requests
        .lock()
        .unwrap()
        .extend((offset..offset + len).step_by(PAGE_4K as usize));
    c.prepaged.fetch_add(len / PAGE_4K - 1, SeqCst);
    0
}

unsafe extern "C" fn cb_paused(opaque: *mut c_void) {
    // SAFETY: the thread's own opaque, a live Ctx.
    unsafe { ctx(opaque) }.paused.fetch_add(1, SeqCst);
}
unsafe extern "C" fn cb_resumed(opaque: *mut c_void) {
    // SAFETY: the thread's own opaque, a live Ctx.
    unsafe { ctx(opaque) }.resumed.fetch_add(1, SeqCst);
}
unsafe extern "C" fn cb_fatal(opaque: *mut c_void, err: c_int, addr: u64) {
    // SAFETY: the thread's own opaque, a live Ctx.
    unsafe { ctx(opaque) }
        .fatal
        .lock()
        .unwrap()
        .push((err, addr));
}
unsafe extern "C" fn cb_check_pause(opaque: *mut c_void) -> bool {
    // SAFETY: the thread's own opaque, a live Ctx.
    unsafe { ctx(opaque) }.return_path_gone.load(SeqCst)
}
unsafe extern "C" fn cb_shared(_opaque: *mut c_void, _fd: c_int, _msg: *mut c_void) -> c_int {
    0
}

// --- One case ----------------------------------------------------------------

/// Fds of every kind but the region's own, made once per case.
struct Fds {
    devnull: OwnedFd,
    hung_up: OwnedFd,
    blocking: Userfaultfd,
    gone: Userfaultfd,
}

impl Fds {
    fn new() -> Fds {
        // SAFETY: opening /dev/null; owned below.
        let n = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK) };
        assert!(n >= 0);
        let mut p = [0; 2];
        // SAFETY: pipe2 fills a live array of two ints.
        assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_NONBLOCK) }, 0);
        // SAFETY: closing our own write end: the read end hangs up.
        unsafe {
            libc::close(p[1]);
        }
        let blocking = Userfaultfd::new(0).expect("userfaultfd (are we root?)");
        // SAFETY: F_GETFL/F_SETFL on our own userfaultfd.
        unsafe {
            let fl = libc::fcntl(blocking.as_raw_fd(), libc::F_GETFL);
            libc::fcntl(blocking.as_raw_fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
        }
        let gone = Userfaultfd::new(0).expect("userfaultfd");
        let p2 = map_anon(PAGE_4K, 4 * PAGE_4K);
        gone.register(p2 as u64, 4 * PAGE_4K).expect("register");
        // SAFETY: our own mapping: unmapping it ends the registration.
        unsafe {
            libc::munmap(p2, 4 * PAGE_4K as usize);
        }
        Fds {
            // SAFETY: fresh fds nothing else owns.
            devnull: unsafe { OwnedFd::from_raw_fd(n) },
            // SAFETY: as above.
            hung_up: unsafe { OwnedFd::from_raw_fd(p[0]) },
            blocking,
            gone,
        }
    }
}

struct Case {
    r: Region,
    /// The received bitmap as C owns it: what the block views point to.
    cmap: Box<[AtomicU64]>,
    fds: Fds,
    src: Vec<u64>,
    ctx: Box<Ctx>,
    /// Live fault threads and the fd each was started on.
    threads: Vec<(*mut PostcopyRsFaultThread, Fd)>,
    /// The handle stopped last, if any: never to be dereferenced.
    stopped: Option<*mut PostcopyRsFaultThread>,
    touchers: Vec<std::thread::JoinHandle<()>>,
    /// Pages present, as far as the calls that succeeded say.
    present: [bool; NPAGES as usize],
    /// Requests already served.
    served: usize,
    /// Fault-thread counters at the start.
    s0: PostcopyRsStats,
    p0: PostcopyRsPrepageStats,
}

/// A call's result: `Ok(())` if it is 0 or in `allowed`.
fn check(call: &str, ret: c_int, allowed: &[c_int]) -> Result<(), TestCaseError> {
    prop_assert!(
        ret != -libc::ENOTRECOVERABLE,
        "{call}: a panic reached the boundary"
    );
    prop_assert!(
        ret == 0 || allowed.contains(&ret),
        "{call}: returned {ret} ({}), not 0 nor one of {allowed:?}",
        std::io::Error::from_raw_os_error(-ret)
    );
    Ok(())
}

/// Errnos a placement may return: its own checks, then the ioctl's.
const PLACE_ERRNOS: &[c_int] = &[
    EFAULT,
    EINVAL,
    ERANGE,
    EBADF,
    -libc::ENOTTY, // not a userfaultfd
    -libc::ENOENT, // range not registered with this userfaultfd
    -libc::ESRCH,  // its process is gone
    -libc::EEXIST, // a page already present (account() checks it is)
];

/// Errnos a stopped thread may report: how it ended.
const STOP_ERRNOS: &[c_int] = &[EFAULT, EBADF, ERANGE, EINVAL, -libc::EIO];

impl Case {
    fn new() -> Case {
        let r = Region::new(PAGE_4K, NPAGES);
        let cmap: Box<[AtomicU64]> = (0..(r.len / PAGE_4K).div_ceil(64))
            .map(|_| AtomicU64::new(0))
            .collect();
        let src: Vec<u64> = (0..SRC_PAGES + NPAGES + 2)
            .flat_map(|i| pattern_page(i, PAGE_4K, SALT))
            .collect();
        let ctx = Box::new(Ctx {
            base: r.base,
            len: r.len,
            map: cmap.as_ptr().cast_mut().cast(),
            resolve_mode: AtomicU32::new(0),
            requests: Mutex::new(Vec::new()),
            prepaged: AtomicU64::new(0),
            fail_requests: AtomicU32::new(0),
            return_path_gone: AtomicBool::new(false),
            paused: AtomicU64::new(0),
            resumed: AtomicU64::new(0),
            enters: AtomicU64::new(0),
            exits: AtomicU64::new(0),
            fatal: Mutex::new(Vec::new()),
            bad_handle: AtomicBool::new(false),
        });
        Case {
            r,
            cmap,
            fds: Fds::new(),
            src,
            ctx,
            threads: Vec::new(),
            stopped: None,
            touchers: Vec::new(),
            present: [false; NPAGES as usize],
            served: 0,
            s0: stats(),
            p0: ffi_prepage_stats(),
        }
    }

    fn raw_fd(&self, fd: Fd) -> RawFd {
        match fd {
            Fd::Uffd => self.r.uffd.as_raw_fd(),
            Fd::Minus1 => -1,
            Fd::Huge => 1 << 20,
            Fd::Closed => {
                // SAFETY: open and close our own fd; its number is what we want.
                unsafe {
                    let n = libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY);
                    libc::close(n);
                    n
                }
            }
            Fd::DevNull => self.fds.devnull.as_raw_fd(),
            Fd::HungUp => self.fds.hung_up.as_raw_fd(),
            Fd::Blocking => self.fds.blocking.as_raw_fd(),
            Fd::RegistrationGone => self.fds.gone.as_raw_fd(),
        }
    }

    fn view(&self, v: View) -> PostcopyRsBlockView {
        let mut view = PostcopyRsBlockView {
            host: self.r.base as *mut c_void,
            used_length: self.r.len,
            page_size: PAGE_4K,
            receivedmap: self.cmap.as_ptr().cast_mut().cast(),
            target_page_bits: 12,
            flags: POSTCOPY_RS_BLOCK_ZEROPAGE,
        };
        // Only the region's own length may come with its receivedmap (the
        // map's size is part of the contract).
        match v {
            View::Canonical | View::Null => {}
            View::NoMap => view.receivedmap = std::ptr::null_mut(),
            View::Bigger => {
                view.receivedmap = std::ptr::null_mut();
                view.used_length = SRC_PAGES * PAGE_4K;
            }
            View::NullHost => view.host = std::ptr::null_mut(),
            View::MisalignedHost => view.host = (self.r.base + 8) as *mut c_void,
            View::HugeLen => {
                view.receivedmap = std::ptr::null_mut();
                view.used_length = !(PAGE_4K - 1);
            }
            View::PartialPage => {
                view.receivedmap = std::ptr::null_mut();
                view.used_length = self.r.len + 512;
            }
            View::PageSize(p) => {
                view.receivedmap = std::ptr::null_mut();
                view.page_size = p;
            }
            View::TargetBits(b) => {
                view.receivedmap = std::ptr::null_mut();
                view.target_page_bits = b;
            }
        }
        view
    }

    fn host(&self, h: Host) -> *mut c_void {
        (match h {
            Host::Page(i) => self.r.page(i),
            Host::Misaligned(i, o) => self.r.page(i) + o,
            Host::Null => 0,
            Host::Top => !(PAGE_4K - 1),
            Host::Below => self.r.base - PAGE_4K,
        }) as *mut c_void
    }

    /// After a placement call: the placement counters and the receivedmap
    /// moved exactly as the call says, and the model follows.
    #[allow(clippy::too_many_arguments)]
    fn account(
        &mut self,
        call: &str,
        ret: c_int,
        fd: Fd,
        view: View,
        host: Host,
        npages: u64,
        zero: bool,
        before: (PostcopyRsStats, Vec<u64>),
    ) -> Result<(), TestCaseError> {
        let after = stats();
        let map: Vec<u64> = self.cmap.iter().map(|w| w.load(SeqCst)).collect();
        let placed = (after.pages_placed - before.0.pages_placed)
            + (after.zero_pages_placed - before.0.zero_pages_placed);
        // EEXIST: the pages up to the first present one are placed (none
        // for a zero page), that one and the rest are left alone.
        let upto = if ret == -libc::EEXIST {
            let Host::Page(i) = host else {
                return Err(TestCaseError::fail(format!("{call}: EEXIST on a bad host")));
            };
            let range = i as usize..(i + npages).min(NPAGES) as usize;
            let first = self.present[range].iter().position(|p| *p);
            prop_assert!(first.is_some(), "{}: EEXIST, but no page was present", call);
            prop_assert_eq!(after.eexist - before.0.eexist, 1, "{}", call);
            first.map(|k| k as u64)
        } else {
            None
        };
        if ret != 0 && !matches!(upto, Some(k) if k > 0) {
            prop_assert_eq!(placed, 0, "{}: failed and placed pages", call);
            prop_assert_eq!(after.bytes_placed, before.0.bytes_placed, "{}", call);
            prop_assert_eq!(
                &map,
                &before.1,
                "{}: failed and changed the receivedmap",
                call
            );
            return Ok(());
        }
        // Only the region's own geometry can succeed.
        let Host::Page(i) = host else {
            return Err(TestCaseError::fail(format!(
                "{call}: succeeded on a bad host"
            )));
        };
        // A target page of 512 bytes to 4 KiB is a valid geometry too.  Any
        // userfaultfd of this process can place into a range registered
        // with another one (the kernel only checks that the range is
        // registered), though it wakes only its own waiters.
        prop_assert!(
            matches!(fd, Fd::Uffd | Fd::Blocking | Fd::RegistrationGone)
                && matches!(
                    view,
                    View::Canonical | View::NoMap | View::Bigger | View::TargetBits(9..=12)
                ),
            "{}: succeeded with a bad fd or view",
            call
        );
        prop_assert!(i + npages <= NPAGES, "{}: succeeded out of range", call);
        let npages = upto.unwrap_or(npages);
        let range = i as usize..(i + npages) as usize;
        let newly = self.present[range.clone()].iter().filter(|p| !**p).count() as u64;
        let (copied, zeroed) = (
            after.pages_placed - before.0.pages_placed,
            after.zero_pages_placed - before.0.zero_pages_placed,
        );
        prop_assert_eq!(
            (copied, zeroed),
            if zero { (0, newly) } else { (newly, 0) },
            "{}: counters disagree with the pages placed",
            call
        );
        prop_assert_eq!(
            after.bytes_placed - before.0.bytes_placed,
            newly * PAGE_4K,
            "{}",
            call
        );
        prop_assert!(
            after.eexist - before.0.eexist <= after.place_ioctls - before.0.place_ioctls,
            "{}: more EEXIST than ioctls",
            call
        );
        for p in range.clone() {
            let bit = map[p / 64] >> (p % 64) & 1 == 1;
            let was = before.1[p / 64] >> (p % 64) & 1 == 1;
            let want = was || matches!(view, View::Canonical);
            prop_assert_eq!(bit, want, "{}: receivedmap bit of page {}", call, p);
        }
        for p in range {
            if !self.present[p] && !zero {
                check_page(&self.r, p as u64, SALT).map_err(TestCaseError::fail)?;
            }
            self.present[p] = true;
        }
        Ok(())
    }

    fn snapshot(&self) -> (PostcopyRsStats, Vec<u64>) {
        (stats(), self.cmap.iter().map(|w| w.load(SeqCst)).collect())
    }

    fn newest(&self) -> *mut PostcopyRsFaultThread {
        self.threads
            .last()
            .map_or(std::ptr::null_mut(), |&(t, _)| t)
    }

    fn shared_fds(&self, s: &Shared) -> (Vec<c_int>, *const c_int, u32) {
        match s {
            Shared::None => (Vec::new(), std::ptr::null(), 0),
            Shared::NullWithCount(n) => (Vec::new(), std::ptr::null(), *n),
            Shared::Bogus => {
                let v = vec![-1, 1 << 20];
                let p = v.as_ptr();
                (v, p, 2)
            }
        }
    }

    #[allow(
        clippy::cognitive_complexity,
        reason = "one arm per exported call: the table of what each may return reads best whole"
    )]
    fn run(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let call = format!("{op:?}");
        let what = || call.clone();
        match *op {
            Op::Place {
                fd,
                view,
                host,
                from_null,
                npages,
            } => {
                let (rfd, v, h) = (self.raw_fd(fd), self.view(view), self.host(host));
                let vp: *const PostcopyRsBlockView = if matches!(view, View::Null) {
                    std::ptr::null()
                } else {
                    &v
                };
                // Page i's pattern for page i: a copy's content is checked.
                let first = match host {
                    Host::Page(i) | Host::Misaligned(i, _) => i as usize,
                    _ => 0,
                };
                let from: *const c_void = if from_null {
                    std::ptr::null()
                } else {
                    self.src[first * (PAGE_4K as usize / 8)..].as_ptr().cast()
                };
                let before = self.snapshot();
                // SAFETY: `from` holds SRC_PAGES pages, more than any
                // placement that passes the range checks reads; the view's
                // receivedmap, when set, covers its length.
                let ret = bounded(what, || unsafe {
                    if npages == 1 && !from_null {
                        ffi::postcopy_rs_place_page(rfd, vp, h, from)
                    } else {
                        ffi::postcopy_rs_place_pages(rfd, vp, h, from, npages)
                    }
                });
                check(&call, ret, PLACE_ERRNOS)?;
                let c = if ret == 0 {
                    &COVERAGE.placed
                } else {
                    &COVERAGE.refused
                };
                c.fetch_add(1, SeqCst);
                self.account(&call, ret, fd, view, host, npages, false, before)
            }
            Op::PlaceZero { fd, view, host } => {
                let (rfd, v, h) = (self.raw_fd(fd), self.view(view), self.host(host));
                let vp: *const PostcopyRsBlockView = if matches!(view, View::Null) {
                    std::ptr::null()
                } else {
                    &v
                };
                let before = self.snapshot();
                // SAFETY: as for Place, without a source.
                let ret = bounded(what, || unsafe {
                    ffi::postcopy_rs_place_page_zero(rfd, vp, h)
                });
                check(&call, ret, PLACE_ERRNOS)?;
                self.account(&call, ret, fd, view, host, 1, true, before)
            }
            Op::Start {
                fd,
                cfg_null,
                out_null,
                no_resolve,
                no_request,
                ref shared,
                named,
                resolve_mode,
            } => {
                self.ctx.resolve_mode.store(u32::from(resolve_mode), SeqCst);
                let (_keep, sp, sn) = self.shared_fds(shared);
                let cfg = PostcopyRsFaultConfig {
                    uffd: self.raw_fd(fd),
                    nr_shared_fds: sn,
                    shared_fds: sp,
                    ops: PostcopyRsFaultOps {
                        opaque: std::ptr::from_ref::<Ctx>(&self.ctx).cast_mut().cast(),
                        thread_enter: Some(cb_enter),
                        thread_exit: Some(cb_exit),
                        resolve: (!no_resolve).then_some(
                            cb_resolve
                                as unsafe extern "C" fn(
                                    *mut libc::c_void,
                                    u64,
                                    *mut postcopy_rs::ffi::PostcopyRsFaultTarget,
                                ) -> i32,
                        ),
                        fault: None,
                        request_page: (!no_request).then_some(
                            cb_request
                                as unsafe extern "C" fn(
                                    *mut libc::c_void,
                                    *mut libc::c_void,
                                    u64,
                                    u64,
                                ) -> i32,
                        ),
                        paused: Some(cb_paused),
                        resumed: Some(cb_resumed),
                        fatal: Some(cb_fatal),
                        shared_fault: Some(cb_shared),
                        check_pause: Some(cb_check_pause),
                    },
                    name: if named {
                        c"fuzz-fault".as_ptr()
                    } else {
                        std::ptr::null()
                    },
                };
                let mut out: *mut PostcopyRsFaultThread = std::ptr::NonNull::dangling().as_ptr();
                let cp: *const PostcopyRsFaultConfig =
                    if cfg_null { std::ptr::null() } else { &cfg };
                let op_: *mut *mut PostcopyRsFaultThread = if out_null {
                    std::ptr::null_mut()
                } else {
                    &mut out
                };
                // SAFETY: cfg and out are live or NULL; the callbacks and
                // their Ctx outlive every thread (stopped before the case
                // ends); the fds stay open until then.
                let ret = bounded(what, || unsafe {
                    ffi::postcopy_rs_fault_thread_start(cp, op_)
                });
                check(&call, ret, &[EFAULT, EBADF, EINVAL])?;
                if !out_null {
                    prop_assert_eq!(ret == 0, !out.is_null(), "{}: *out vs result", &call);
                }
                if ret == 0 {
                    prop_assert!(
                        !cfg_null && !out_null && !no_resolve && !no_request,
                        "{}: started",
                        &call
                    );
                    prop_assert!(
                        !matches!(fd, Fd::Minus1 | Fd::Huge | Fd::Closed | Fd::Blocking),
                        "{}: started on a bad fd",
                        &call
                    );
                    // Bogus shared fds are -EBADF: the thread keeps duplicates.
                    prop_assert!(matches!(shared, Shared::None), "{}", &call);
                    self.threads.push((out, fd));
                    COVERAGE.started.fetch_add(1, SeqCst);
                }
                Ok(())
            }
            Op::Stop => match self.threads.pop() {
                Some((t, fd)) => {
                    self.stopped = Some(t);
                    stop_thread(&call, t, fd).map(|_| ())
                }
                None => {
                    let ret = bounded(what, || {
                        ffi::postcopy_rs_fault_thread_stop(std::ptr::null_mut())
                    });
                    prop_assert_eq!(ret, EFAULT, "stop(NULL)");
                    Ok(())
                }
            },
            Op::Resume | Op::Notify | Op::State => {
                let t = self.newest();
                let ret = bounded(what, || match op {
                    Op::Resume => ffi::postcopy_rs_fault_thread_resume(t),
                    Op::Notify => ffi::postcopy_rs_fault_thread_notify(t),
                    _ => ffi::postcopy_rs_fault_thread_state(t),
                });
                if t.is_null() {
                    prop_assert_eq!(ret, EFAULT, "{} on NULL", &call);
                } else if matches!(op, Op::State) {
                    prop_assert!((0..=2).contains(&ret), "state {}", ret);
                } else {
                    prop_assert_eq!(ret, 0, "{}", &call);
                }
                Ok(())
            }
            Op::SetShared(ref s) => {
                let t = self.newest();
                let (_keep, sp, sn) = self.shared_fds(s);
                // SAFETY: a live handle or NULL; sp holds sn ints or is NULL.
                let ret = bounded(what, || unsafe {
                    ffi::postcopy_rs_fault_thread_set_shared_fds(t, sp, sn)
                });
                let want = if t.is_null() || (sp.is_null() && sn > 0) {
                    EFAULT
                } else if matches!(s, Shared::Bogus) {
                    EBADF
                } else {
                    0
                };
                prop_assert_eq!(ret, want, "{}", &call);
                Ok(())
            }
            Op::SetPrepage { max, null_cb } => {
                let t = self.newest();
                let cb = if null_cb {
                    None
                } else {
                    Some(
                        cb_request_range
                            as unsafe extern "C" fn(*mut c_void, *mut c_void, u64, u64, u64) -> i64,
                    )
                };
                // SAFETY: a live handle or NULL; the callback works with
                // the thread's Ctx, which outlives it.
                let ret = bounded(what, || unsafe {
                    ffi::postcopy_rs_fault_thread_set_prepage(t, max, cb)
                });
                let want = if t.is_null() {
                    EFAULT
                } else if max > ffi::POSTCOPY_RS_PREPAGE_MAX_PAGES {
                    EINVAL
                } else {
                    0
                };
                prop_assert_eq!(ret, want, "{}", &call);
                Ok(())
            }
            Op::NullHandle(k) => {
                let ret = bounded(what, || handle_call(k, std::ptr::null_mut()));
                prop_assert_eq!(ret, EFAULT, "{}", &call);
                Ok(())
            }
            Op::StaleHandle(k) => {
                // A newer thread may have been given the same address, as
                // malloc would: then the handle is live again.
                let Some(t) = self
                    .stopped
                    .filter(|t| self.threads.iter().all(|(l, _)| l != t))
                else {
                    return Ok(());
                };
                let ret = bounded(what, || handle_call(k, t));
                prop_assert_eq!(ret, ESRCH, "{}", &call);
                Ok(())
            }
            Op::Touch(i) => {
                let addr = self.r.page(i);
                self.touchers.push(std::thread::spawn(move || {
                    // SAFETY: inside the case's registered mapping, which
                    // outlives the toucher (joined before it is unmapped).
                    unsafe {
                        std::ptr::read_volatile(addr as *const u64);
                    }
                }));
                Ok(())
            }
            Op::TouchRun(i) => {
                let addrs: Vec<u64> = (i..(i + 4).min(NPAGES)).map(|p| self.r.page(p)).collect();
                self.touchers.push(std::thread::spawn(move || {
                    for addr in addrs {
                        // SAFETY: as for Touch.
                        unsafe {
                            std::ptr::read_volatile(addr as *const u64);
                        }
                    }
                }));
                Ok(())
            }
            Op::Serve => {
                let reqs: Vec<u64> = self.ctx.requests.lock().unwrap()[self.served..].to_vec();
                self.served += reqs.len();
                for off in reqs {
                    prop_assert!(
                        off % PAGE_4K == 0 && off < self.r.len,
                        "request for offset {:#x}",
                        off
                    );
                    let place = Op::Place {
                        fd: Fd::Uffd,
                        view: View::Canonical,
                        host: Host::Page(off / PAGE_4K),
                        from_null: false,
                        npages: 1,
                    };
                    self.run(&place)?;
                    prop_assert!(
                        self.present[(off / PAGE_4K) as usize],
                        "requested page not placed"
                    );
                    COVERAGE.served.fetch_add(1, SeqCst);
                }
                Ok(())
            }
            Op::FailRequests(n) => {
                self.ctx.fail_requests.store(n, SeqCst);
                Ok(())
            }
            Op::ReturnPathGone(b) => {
                self.ctx.return_path_gone.store(b, SeqCst);
                Ok(())
            }
            Op::Chunk {
                null,
                nr_pages,
                ratio,
            } => {
                let mut map: [c_ulong; 16] = [0x8421_0000_0001_0001; 16];
                let orig = map;
                let (p, n) = if null {
                    (std::ptr::null_mut(), nr_pages)
                } else {
                    (map.as_mut_ptr(), nr_pages % 1025)
                };
                // SAFETY: map holds 1024 bits, n <= 1024 when not NULL.
                let ret = bounded(what, || unsafe {
                    ffi::postcopy_chunk_hostpages(p, n, ratio)
                });
                prop_assert!(ret != i64::from(-libc::ENOTRECOVERABLE), "{}: panic", &call);
                prop_assert!(
                    ret >= 0 || [EFAULT, EINVAL].map(i64::from).contains(&ret),
                    "{}: {}",
                    &call,
                    ret
                );
                if ret < 0 {
                    prop_assert_eq!(map, orig, "{}: failed and changed the bitmap", &call);
                } else if !null {
                    let set =
                        |m: &[c_ulong]| m.iter().map(|w| u64::from(w.count_ones())).sum::<u64>();
                    prop_assert_eq!(set(&map) - set(&orig), ret as u64, "{}: count", &call);
                    for b in n as usize..1024 {
                        prop_assert_eq!(
                            map[b / 64] >> (b % 64) & 1,
                            orig[b / 64] >> (b % 64) & 1,
                            "{}: bit {} past nr_pages",
                            &call,
                            b
                        );
                    }
                }
                Ok(())
            }
            Op::Message { null, len } => {
                let mut buf = [0x55u8; 200];
                let p = if null {
                    std::ptr::null_mut()
                } else {
                    buf.as_mut_ptr().cast()
                };
                // SAFETY: buf holds 200 bytes, len < 200; or NULL.
                let ret = bounded(what, || unsafe {
                    ffi::postcopy_rs_pagesize_mismatch_message(1 << 12, 1 << 21, p, len)
                });
                if null && len > 0 {
                    prop_assert_eq!(ret, EFAULT, "{}", &call);
                } else {
                    prop_assert!(ret > 0, "{}: {}", &call, ret);
                    if len > 0 {
                        let end = (ret as usize).min(len - 1);
                        prop_assert_eq!(buf[end], 0, "{}: not NUL-terminated", &call);
                        prop_assert!(buf[len..].iter().all(|&b| b == 0x55), "{}: overran", &call);
                    }
                }
                Ok(())
            }
            Op::GetCounters { which, null, size } => {
                // A struct and guard bytes after it: whatever `size` says,
                // the library writes its own struct's size at most.
                let mut buf = [0x55u8; GETTER_MAX + 64];
                let p = if null {
                    std::ptr::null_mut()
                } else {
                    buf.as_mut_ptr()
                };
                // SAFETY: NULL, or buf, writable for min(size, its length)
                // bytes, which is all the library may write.
                let (ret, own) = bounded(what, || unsafe {
                    match which {
                        0 => (ffi::postcopy_rs_get_stats(p.cast(), size), STATS_SIZE),
                        1 => (
                            ffi::postcopy_rs_get_prepage_stats(p.cast(), size),
                            PREPAGE_STATS_SIZE,
                        ),
                        _ => (ffi::postcopy_rs_get_latency(p.cast(), size), LATENCY_SIZE),
                    }
                });
                if null {
                    prop_assert_eq!(ret, EFAULT, "{}", &call);
                } else {
                    let n = size.min(own);
                    prop_assert_eq!(ret as usize, n, "{}", &call);
                    prop_assert!(buf[n..].iter().all(|&b| b == 0x55), "{}: overran", &call);
                }
                Ok(())
            }
        }
    }

    /// End the case: place every page (freeing the touchers), stop every
    /// thread, and check the fault-thread counters against the callbacks.
    fn finish(&mut self) -> Result<(), TestCaseError> {
        self.cleanup(true)
    }

    fn cleanup(&mut self, check_all: bool) -> Result<(), TestCaseError> {
        // A page placed through another userfaultfd woke nobody here.
        release_all(self.r.uffd.as_fd(), &self.r.block());
        for t in self.touchers.drain(..) {
            bounded(|| "joining a toucher".into(), || t.join().unwrap());
        }
        let mut results = Vec::new();
        while let Some((t, fd)) = self.threads.pop() {
            results.push(stop_thread("final stop", t, fd));
        }
        if !check_all {
            return Ok(());
        }
        for r in results {
            if r? < 0 {
                COVERAGE.ended_by_itself.fetch_add(1, SeqCst);
            }
        }
        COVERAGE
            .paused
            .fetch_add(self.ctx.paused.load(SeqCst), SeqCst);
        let s = stats();
        let c = &self.ctx;
        prop_assert_eq!(
            c.enters.load(SeqCst),
            c.exits.load(SeqCst),
            "thread_enter/exit"
        );
        prop_assert!(
            !c.bad_handle.load(SeqCst),
            "request_page got another block handle"
        );
        // One request per message; a range adds its pages after the first.
        let prepaged = c.prepaged.load(SeqCst);
        prop_assert_eq!(
            s.pages_requested - self.s0.pages_requested,
            c.requests.lock().unwrap().len() as u64 - prepaged,
            "pages_requested vs requests made"
        );
        prop_assert_eq!(
            ffi_prepage_stats().pages - self.p0.pages,
            prepaged,
            "pre-paged pages vs range requests made"
        );
        COVERAGE.prepaged.fetch_add(prepaged, SeqCst);
        prop_assert_eq!(
            s.fault_thread_pauses - self.s0.fault_thread_pauses,
            c.paused.load(SeqCst),
            "fault_thread_pauses vs paused callbacks"
        );
        prop_assert!(c.resumed.load(SeqCst) <= c.paused.load(SeqCst));
        prop_assert!(
            s.faults_read - self.s0.faults_read >= s.fault_reads - self.s0.fault_reads,
            "fewer faults read than reads"
        );
        for (f, v) in [
            (s.faults_read, self.s0.faults_read),
            (s.pages_placed, self.s0.pages_placed),
            (s.requests_deduped, self.s0.requests_deduped),
        ] {
            prop_assert!(f >= v, "a counter went down");
        }
        Ok(())
    }
}

/// Stop a live thread and check how it ended.  One started on an fd that
/// hangs up or reads end-of-file must have ended by itself, with -EBADF,
/// rather than spin (unless it paused first: the return path check comes
/// first, and a paused thread waits, it does not spin).
/// Call `k`'s fault-thread export on a handle that is NULL or not live:
/// nothing may dereference it.
fn handle_call(k: u8, t: *mut PostcopyRsFaultThread) -> c_int {
    match k {
        0 => ffi::postcopy_rs_fault_thread_resume(t),
        1 => ffi::postcopy_rs_fault_thread_notify(t),
        2 => ffi::postcopy_rs_fault_thread_state(t),
        // SAFETY: no fds (NULL, 0).
        3 => unsafe { ffi::postcopy_rs_fault_thread_set_shared_fds(t, std::ptr::null(), 0) },
        // SAFETY: a NULL or stale handle: the callback is never called.
        4 => unsafe { ffi::postcopy_rs_fault_thread_set_prepage(t, 8, Some(cb_request_range)) },
        _ => ffi::postcopy_rs_fault_thread_stop(t),
    }
}

fn stop_thread(call: &str, t: *mut PostcopyRsFaultThread, fd: Fd) -> Result<c_int, TestCaseError> {
    let must_end = matches!(fd, Fd::HungUp | Fd::DevNull);
    let mut state = 0;
    if must_end {
        let at = Instant::now();
        while at.elapsed() < Duration::from_secs(5) {
            state = ffi::postcopy_rs_fault_thread_state(t);
            if state != 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let ret = bounded(
        || format!("{call}: stop"),
        || ffi::postcopy_rs_fault_thread_stop(t),
    );
    check(call, ret, STOP_ERRNOS)?;
    if must_end {
        prop_assert!(state != 0, "{}: a thread on {:?} kept running", call, fd);
        if state == 2 {
            prop_assert_eq!(ret, EBADF, "{}: a thread on {:?}", call, fd);
        }
    }
    Ok(ret)
}

impl Drop for Case {
    fn drop(&mut self) {
        // A failed case still frees its touchers and stops its threads
        // before the region goes away.
        let _ = self.cleanup(false);
    }
}

fn cases() -> u32 {
    ["POSTCOPY_RS_FUZZ_CASES", "PROPTEST_CASES"]
        .iter()
        .find_map(|v| std::env::var(v).ok()?.parse().ok())
        .unwrap_or(2048)
}

/// What the cases reached, so that a harness that stopped reaching the
/// library (every call failing early, no thread ever serving a fault)
/// fails instead of passing quietly.
struct Coverage {
    placed: AtomicU64,
    refused: AtomicU64,
    started: AtomicU64,
    served: AtomicU64,
    paused: AtomicU64,
    ended_by_itself: AtomicU64,
    prepaged: AtomicU64,
}

static COVERAGE: Coverage = Coverage {
    placed: AtomicU64::new(0),
    refused: AtomicU64::new(0),
    started: AtomicU64::new(0),
    served: AtomicU64::new(0),
    paused: AtomicU64::new(0),
    ended_by_itself: AtomicU64::new(0),
    prepaged: AtomicU64::new(0),
};

/// Messages the library logged, and whether one was empty or NULL.
static LOGGED: AtomicU64 = AtomicU64::new(0);
static BAD_LOG: AtomicBool = AtomicBool::new(false);

/// The log sink: counts (thousands of refused calls would each print a
/// line on stderr otherwise).
unsafe extern "C" fn count_log(_level: PostcopyRsLogLevel, msg: *const c_char) {
    // SAFETY: the library passes a NUL-terminated string, or we flag it.
    if msg.is_null() || unsafe { *msg } == 0 {
        BAD_LOG.store(true, SeqCst);
    }
    LOGGED.fetch_add(1, SeqCst);
}

/// Random call sequences; see the module documentation.
#[test]
fn c_abi_call_sequences() {
    // SAFETY: count_log is callable from any thread for the process's life
    // and does not call back into the library.
    unsafe {
        ffi::postcopy_rs_set_log_fn(Some(count_log), 3);
    }
    let cases = cases();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases,
        max_shrink_iters: 2000,
        // Where a failure is saved and replayed first next time, as the
        // proptest! macro does.
        source_file: Some(file!()),
        ..ProptestConfig::default()
    });
    let t = Instant::now();
    let res = runner.run(&prop::collection::vec(op(), 1..40), |ops| {
        let mut case = Case::new();
        for op in &ops {
            case.run(op)?;
        }
        case.finish()
    });
    if let Err(e) = res {
        panic!("{e}");
    }
    let c = &COVERAGE;
    let got = [
        ("successful placements", c.placed.load(SeqCst)),
        ("refused placements", c.refused.load(SeqCst)),
        ("fault threads started", c.started.load(SeqCst)),
        ("faults served through a thread", c.served.load(SeqCst)),
        ("pauses", c.paused.load(SeqCst)),
        (
            "threads that ended by themselves",
            c.ended_by_itself.load(SeqCst),
        ),
    ];
    // Reported, not required: a range needs a thread with pre-paging on
    // and two faults in a row served in time, which random sequences
    // rarely line up.  tests/prepage_real.rs covers it deterministically.
    eprintln!(
        "abi_fuzz: {cases} cases in {:?}: {got:?}; {} pages pre-paged; {} messages logged",
        t.elapsed(),
        c.prepaged.load(SeqCst),
        LOGGED.load(SeqCst)
    );
    assert!(!BAD_LOG.load(SeqCst), "an empty or NULL log message");
    if cases >= 100 {
        for (what, n) in got {
            assert!(
                n > 0,
                "{cases} cases and no {what}: the harness misses the library"
            );
        }
    }
}
