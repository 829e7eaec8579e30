// SPDX-License-Identifier: GPL-2.0-or-later
//! Placement and the fault thread on real userfaultfd, on 4 KiB anonymous
//! memory and on 2 MiB hugetlbfs pages (reserved here, given back after;
//! skipped loudly if the kernel refuses).  Needs root (or
//! vm.unprivileged_userfaultfd=1).

mod common;

use common::*;
use postcopy_rs::error::Error;
use postcopy_rs::fault_thread::{FaultHandler, FaultThread, PostcopyRsFaultThreadState, Resolved};
use postcopy_rs::placement::{self, Block};
use postcopy_rs::stats;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const SALT: u64 = 0x5eed;
const HANDLE: usize = 0x7e57;

#[derive(Default)]
struct Events {
    requests: Mutex<HashMap<u64, u32>>,
    faults: AtomicU64,
    enters: AtomicU32,
    exits: AtomicU32,
    paused: AtomicU32,
    resumed: AtomicU32,
    fatal: Mutex<Option<(i32, u64)>>,
    fail_requests: AtomicU32,
    bad_handle: AtomicBool,
    return_path_gone: AtomicBool,
    panic_in_resolve: AtomicBool,
    /// The fault thread's SigBlk line from /proc, read on the thread.
    sigblk: Mutex<String>,
}

struct Handler {
    ev: Arc<Events>,
    block: Block<'static>,
    tx: mpsc::Sender<u64>,
}

impl FaultHandler for Handler {
    fn thread_enter(&mut self) {
        self.ev.enters.fetch_add(1, SeqCst);
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        let status =
            std::fs::read_to_string(format!("/proc/self/task/{tid}/status")).unwrap_or_default();
        *self.ev.sigblk.lock().unwrap() = status
            .lines()
            .find(|l| l.starts_with("SigBlk:"))
            .unwrap_or("")
            .to_string();
    }
    fn thread_exit(&mut self) {
        self.ev.exits.fetch_add(1, SeqCst);
    }
    fn resolve(&mut self, addr: u64) -> postcopy_rs::Result<Resolved> {
        assert!(
            !self.ev.panic_in_resolve.load(SeqCst),
            "injected panic in resolve"
        );
        if addr >= self.block.host && addr < self.block.host + self.block.len {
            Ok(Resolved {
                handle: HANDLE,
                block: self.block,
            })
        } else {
            Err(Error::OutOfRange { addr, len: 1 })
        }
    }
    fn fault(&mut self, handle: usize, _addr: u64, _tid: u32) {
        if handle != HANDLE {
            self.ev.bad_handle.store(true, SeqCst);
        }
        self.ev.faults.fetch_add(1, SeqCst);
    }
    fn request_page(&mut self, handle: usize, offset: u64, _addr: u64) -> postcopy_rs::Result<()> {
        if handle != HANDLE || offset % self.block.page_size != 0 {
            self.ev.bad_handle.store(true, SeqCst);
        }
        if self.ev.fail_requests.load(SeqCst) > 0 {
            self.ev.fail_requests.fetch_sub(1, SeqCst);
            return Err(Error::Callback {
                name: "request_page",
                ret: -libc::EIO,
            });
        }
        *self.ev.requests.lock().unwrap().entry(offset).or_default() += 1;
        let _ = self.tx.send(offset);
        Ok(())
    }
    fn should_pause(&mut self) -> bool {
        self.ev.return_path_gone.load(SeqCst)
    }
    fn paused(&mut self) {
        self.ev.paused.fetch_add(1, SeqCst);
    }
    fn resumed(&mut self) {
        self.ev.resumed.fetch_add(1, SeqCst);
    }
    fn fatal(&mut self, err: &Error, addr: u64) {
        *self.ev.fatal.lock().unwrap() = Some((err.to_neg_errno(), addr));
    }
}

/// A "source": answers each request by placing the pattern page.
fn spawn_source(
    fd: i32,
    block: Block<'static>,
    rx: mpsc::Receiver<u64>,
) -> std::thread::JoinHandle<u32> {
    std::thread::spawn(move || {
        let mut placed = 0;
        for off in rx {
            let page = off / block.page_size;
            let buf = pattern_page(page, block.page_size, SALT);
            place(fd, &block, block.host + off, &buf, 1).expect("place_pages");
            placed += 1;
        }
        placed
    })
}

/// Unblocks faulting threads if the test hangs, so it fails instead.
struct Watchdog {
    done: mpsc::Sender<()>,
    fired: Arc<AtomicBool>,
}

impl Watchdog {
    fn new(fd: i32, block: Block<'static>, secs: u64) -> Watchdog {
        let (done, rx) = mpsc::channel::<()>();
        let fired = Arc::new(AtomicBool::new(false));
        let f = Arc::clone(&fired);
        std::thread::spawn(move || {
            if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(secs))
            {
                f.store(true, SeqCst);
                for i in 0..block.len / block.page_size {
                    let _ = placement::place_zero(fd, &block, block.host + i * block.page_size);
                }
            }
        });
        Watchdog { done, fired }
    }

    fn finish(self) {
        let _ = self.done.send(());
        assert!(
            !self.fired.load(SeqCst),
            "watchdog fired: the test hung and was unblocked"
        );
    }
}

fn start(r: &Region, ev: &Arc<Events>) -> (FaultThread, mpsc::Receiver<u64>) {
    let (tx, rx) = mpsc::channel();
    let h = Handler {
        ev: Arc::clone(ev),
        block: r.block(),
        tx,
    };
    (
        FaultThread::start(r.fd(), &[], Some("test-fault"), Box::new(h)).expect("start"),
        rx,
    )
}

fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(secs),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

// --- Scenarios, each run on 4 KiB and 2 MiB pages ------------------------

/// Many threads fault on random pages; every page must arrive intact and be
/// requested exactly once.
fn concurrent_faults(page_size: u64, npages: u64, threads: u64, touches: u64) {
    let r = Region::new(page_size, npages);
    let ev = Arc::new(Events::default());
    let (ft, rx) = start(&r, &ev);
    let src = spawn_source(r.fd(), r.block(), rx);
    let wd = Watchdog::new(r.fd(), r.block(), 60);
    let touched: Mutex<HashSet<u64>> = Mutex::new(HashSet::new());
    std::thread::scope(|s| {
        for t in 0..threads {
            let (r, touched) = (&r, &touched);
            s.spawn(move || {
                let mut rng = Rng(0x1234_5678 + t * 7919);
                for _ in 0..touches {
                    let i = rng.below(npages);
                    check_page(r, i, SALT).unwrap();
                    touched.lock().unwrap().insert(i);
                }
            });
        }
    });
    wd.finish();
    assert_eq!(ft.stop(), Ok(()));
    let placed = src.join().unwrap();
    let reqs = ev.requests.lock().unwrap();
    let dup: Vec<_> = reqs.iter().filter(|(_, &n)| n != 1).collect();
    assert!(dup.is_empty(), "pages requested more than once: {dup:?}");
    let requested: HashSet<u64> = reqs.keys().map(|o| o / page_size).collect();
    assert_eq!(
        requested,
        *touched.lock().unwrap(),
        "requested pages != touched pages"
    );
    assert_eq!(placed as usize, requested.len());
    assert!(ev.faults.load(SeqCst) >= requested.len() as u64);
    assert_eq!((ev.enters.load(SeqCst), ev.exits.load(SeqCst)), (1, 1));
    assert!(
        !ev.bad_handle.load(SeqCst),
        "wrong block handle or unaligned offset passed back"
    );
    for i in &requested {
        assert!(
            r.block().is_received(i * page_size),
            "page {i} not marked received"
        );
    }
}

/// Two placements of one page, one while a thread is blocked on it: both
/// succeed, one content wins whole, the blocked thread resumes.
fn double_placement(page_size: u64) {
    let r = Region::new(page_size, 2);
    let b = r.block();
    let before = stats::snapshot().eexist;
    let wd = Watchdog::new(r.fd(), b, 30);
    std::thread::scope(|s| {
        let reader = s.spawn(|| r.peek(r.page(0)));
        // Wait until the reader is blocked in the kernel (its fault is queued).
        let mut pfd = libc::pollfd {
            fd: r.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polling one live pollfd.
        let polled = unsafe { libc::poll(&mut pfd, 1, 10_000) };
        assert_eq!(polled, 1, "the reader never faulted");
        let placers: Vec<_> = [1u64, 2]
            .into_iter()
            .map(|salt| {
                let fd = r.fd();
                let host = r.page(0);
                s.spawn(move || {
                    let buf = pattern_page(0, page_size, salt);
                    place(fd, &b, host, &buf, 1)
                })
            })
            .collect();
        for p in placers {
            assert_eq!(p.join().unwrap(), Ok(()), "a racing placement failed");
        }
        let first = reader.join().unwrap();
        let salt = if first == pattern_word(0, 0, 1) { 1 } else { 2 };
        check_page(&r, 0, salt).expect("page content is one placement's, whole");
    });
    wd.finish();
    assert!(
        stats::snapshot().eexist > before,
        "the losing placement did not go through EEXIST"
    );
    // Placing again, without waiters, is still success and changes nothing.
    let w0 = r.peek(r.page(0));
    let buf = pattern_page(0, page_size, 99);
    assert_eq!(place(r.fd(), &b, r.page(0), &buf, 1), Ok(()));
    assert_eq!(r.peek(r.page(0)), w0);
}

/// Zero pages: UFFDIO_ZEROPAGE on anonymous memory, a zero copy on hugetlbfs.
fn zero_pages(page_size: u64) {
    let r = Region::new(page_size, 2);
    let b = r.block();
    let s0 = stats::snapshot();
    assert_eq!(placement::place_zero(r.fd(), &b, r.page(1)), Ok(()));
    assert_eq!(
        placement::place_zero(r.fd(), &b, r.page(1)),
        Ok(()),
        "second zero placement"
    );
    let s1 = stats::snapshot();
    assert_eq!(
        s1.zero_pages_placed - s0.zero_pages_placed,
        1,
        "the second found it present"
    );
    assert_eq!(s1.eexist - s0.eexist, 1);
    for w in [0, page_size / 16, page_size / 8 - 1] {
        assert_eq!(r.peek(r.page(1) + w * 8), 0);
    }
    assert!(b.is_received(page_size));
    assert!(!b.is_received(0));
}

/// Stop while faults are pending (requested, never answered): prompt.
fn stop_with_pending_faults(page_size: u64) {
    let r = Region::new(page_size, 4);
    let ev = Arc::new(Events::default());
    let (ft, _rx) = start(&r, &ev);
    let wd = Watchdog::new(r.fd(), r.block(), 30);
    std::thread::scope(|s| {
        for i in 0..4 {
            let r = &r;
            s.spawn(move || check_page(r, i, SALT).unwrap());
        }
        wait_until("4 requests", 10, || ev.requests.lock().unwrap().len() == 4);
        let t = Instant::now();
        assert_eq!(ft.stop(), Ok(()));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "stop took {:?}",
            t.elapsed()
        );
        // Now answer the faults ourselves so the touching threads finish.
        let b = r.block();
        for i in 0..4 {
            let buf = pattern_page(i, page_size, SALT);
            place(r.fd(), &b, r.page(i), &buf, 1).unwrap();
        }
    });
    wd.finish();
}

/// Requests fail (broken return path): the thread pauses; each resume makes
/// it retry; after three failures the page arrives.  Then stop while paused.
fn pause_resume_and_stop_while_paused(page_size: u64) {
    let r = Region::new(page_size, 4);
    let ev = Arc::new(Events::default());
    ev.fail_requests.store(3, SeqCst);
    let (ft, rx) = start(&r, &ev);
    let src = spawn_source(r.fd(), r.block(), rx);
    let wd = Watchdog::new(r.fd(), r.block(), 30);
    std::thread::scope(|s| {
        let r = &r;
        let toucher = s.spawn(move || check_page(r, 1, SALT));
        for n in 1..=3 {
            wait_until("the thread to pause", 10, || {
                ft.state() == PostcopyRsFaultThreadState::Paused && ev.paused.load(SeqCst) == n
            });
            ft.resume();
        }
        toucher.join().unwrap().expect("content after recovery");
    });
    assert_eq!((ev.paused.load(SeqCst), ev.resumed.load(SeqCst)), (3, 3));
    assert_eq!(ev.requests.lock().unwrap().get(&page_size), Some(&1));

    // A resume posted early is remembered, like QEMU's semaphore.
    ev.fail_requests.store(1, SeqCst);
    ft.resume();
    check_page(&r, 2, SALT).expect("page 2 after an early resume");
    assert_eq!(ev.paused.load(SeqCst), 4);

    // Stop while paused: prompt, and the thread is gone.
    ev.fail_requests.store(u32::MAX, SeqCst);
    std::thread::scope(|s| {
        let r = &r;
        let toucher = s.spawn(move || check_page(r, 3, SALT));
        wait_until("the thread to pause again", 10, || {
            ft.state() == PostcopyRsFaultThreadState::Paused
        });
        let t = Instant::now();
        assert_eq!(ft.stop(), Ok(()));
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "stop while paused took {:?}",
            t.elapsed()
        );
        let b = r.block();
        let buf = pattern_page(3, page_size, SALT);
        place(r.fd(), &b, r.page(3), &buf, 1).unwrap();
        toucher.join().unwrap().unwrap();
    });
    wd.finish();
    src.join().unwrap();
    assert_eq!(ev.exits.load(SeqCst), 1);
}

/// The return path goes away with no fault pending: a notify makes the
/// thread pause at once (QEMU's `!mis->to_src_file` check); it serves
/// faults again after the path is back and a resume is posted.
fn proactive_pause_on_notify(page_size: u64) {
    let r = Region::new(page_size, 2);
    let ev = Arc::new(Events::default());
    let (ft, rx) = start(&r, &ev);
    let src = spawn_source(r.fd(), r.block(), rx);
    let wd = Watchdog::new(r.fd(), r.block(), 30);
    ev.return_path_gone.store(true, SeqCst);
    ft.notify();
    wait_until("the thread to pause on notify", 10, || {
        ft.state() == PostcopyRsFaultThreadState::Paused
    });
    assert_eq!(ev.paused.load(SeqCst), 1);
    assert!(ev.requests.lock().unwrap().is_empty());
    ev.return_path_gone.store(false, SeqCst);
    ft.resume();
    check_page(&r, 1, SALT).expect("fault served after the resume");
    assert_eq!((ev.paused.load(SeqCst), ev.resumed.load(SeqCst)), (1, 1));
    wd.finish();
    assert_eq!(ft.stop(), Ok(()));
    src.join().unwrap();
}

/// stop() right after a notify(), many times: the stop's eventfd write
/// must never be drained unseen (the thread would sleep in poll() for
/// ever).  A stress test: the window (between the thread's drain and its
/// `quit` check) is too narrow to hit on demand, so this guards against
/// gross regressions rather than proving the ordering.
fn stop_races_notify(page_size: u64) {
    let r = Region::new(page_size, 1);
    for i in 0..300 {
        let ev = Arc::new(Events::default());
        let (ft, _rx) = start(&r, &ev);
        ft.notify();
        if i % 2 == 0 {
            std::thread::yield_now();
        }
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || tx.send(ft.stop()).unwrap());
        let res = rx
            .recv_timeout(Duration::from_secs(5))
            .expect("stop() hung after a notify()");
        assert_eq!(res, Ok(()));
    }
}

/// The thread runs with every signal blocked but SIGSEGV, SIGFPE and
/// SIGILL, as qemu_thread_create() makes QEMU's threads (a synchronous
/// fault with those blocked kills the process without running QEMU's
/// handler); and a blocking userfaultfd is refused.
fn thread_signals_and_blocking_fd(page_size: u64) {
    let r = Region::new(page_size, 1);
    let ev = Arc::new(Events::default());
    let (ft, _rx) = start(&r, &ev);
    assert_eq!(ft.stop(), Ok(()));
    let sigblk = ev.sigblk.lock().unwrap().clone();
    let mask = u64::from_str_radix(sigblk.trim_start_matches("SigBlk:").trim(), 16)
        .unwrap_or_else(|_| panic!("bad SigBlk line {sigblk:?}"));
    for sig in [
        libc::SIGHUP,
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGUSR1,
        libc::SIGCHLD,
    ] {
        assert!(
            mask >> (sig - 1) & 1 == 1,
            "signal {sig} not blocked on the fault thread: {sigblk}"
        );
    }
    for sig in [libc::SIGSEGV, libc::SIGFPE, libc::SIGILL] {
        assert!(
            mask >> (sig - 1) & 1 == 0,
            "synchronous signal {sig} blocked on the fault thread: {sigblk}"
        );
    }

    // SAFETY: F_GETFL/F_SETFL on our own userfaultfd.
    unsafe {
        let fl = libc::fcntl(r.fd(), libc::F_GETFL);
        libc::fcntl(r.fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
    }
    let (tx, _rx) = mpsc::channel();
    let h = Handler {
        ev: Arc::new(Events::default()),
        block: r.block(),
        tx,
    };
    let e = FaultThread::start(r.fd(), &[], None, Box::new(h)).err();
    assert!(
        matches!(e, Some(Error::Invalid(_))),
        "blocking uffd accepted: {e:?}"
    );
}

/// A panic on the thread is reported, and thread_exit still runs (QEMU
/// must unregister the thread from RCU).
fn panic_on_the_thread(page_size: u64) {
    let r = Region::new(page_size, 1);
    let ev = Arc::new(Events::default());
    ev.panic_in_resolve.store(true, SeqCst);
    let (ft, _rx) = start(&r, &ev);
    std::thread::scope(|s| {
        let r = &r;
        s.spawn(move || r.peek(r.page(0)));
        wait_until("the thread to exit", 10, || {
            ft.state() == PostcopyRsFaultThreadState::Exited
        });
        assert_eq!(
            ev.exits.load(SeqCst),
            1,
            "thread_exit not called after a panic"
        );
        assert_eq!(*ev.fatal.lock().unwrap(), Some((-libc::ENOTRECOVERABLE, 0)));
        placement::place_zero(r.fd(), &r.block(), r.page(0)).unwrap();
    });
    assert_eq!(ft.stop(), Err(Error::Panic));
}

/// A fault outside guest RAM: reported, and the thread stops by itself.
fn fault_outside_guest_ram(page_size: u64) {
    let guest = Region::new(page_size, 2);
    let ev = Arc::new(Events::default());
    let (ft, _rx) = start(&guest, &ev);
    // Register a second mapping with the same uffd, unknown to `resolve`.
    let len = page_size;
    let p = map_anon(page_size, len);
    guest.uffd.register(p as u64, len).unwrap();
    let outside = Block::new(p as u64, len, page_size, 12, None, page_size == PAGE_4K).unwrap();
    std::thread::scope(|s| {
        let addr = p as u64;
        s.spawn(move || {
            // SAFETY: inside our registered mapping; blocks until placed below.
            unsafe { std::ptr::read_volatile(addr as *const u64) }
        });
        wait_until("the thread to exit", 10, || {
            ft.state() == PostcopyRsFaultThreadState::Exited
        });
        assert_eq!(*ev.fatal.lock().unwrap(), Some((-libc::ERANGE, p as u64)));
        assert_eq!(ev.exits.load(SeqCst), 1);
        placement::place_zero(guest.fd(), &outside, p as u64).unwrap();
    });
    assert!(matches!(ft.stop(), Err(Error::OutOfRange { .. })));
    // SAFETY: our mapping.
    unsafe { libc::munmap(p, len as usize) };
}

/// The main fd hangs up (POLLHUP): the thread reports it and ends, as for
/// POLLERR, instead of spinning on a poll() that returns at once.  A real
/// userfaultfd never reports POLLHUP (fs/userfaultfd.c: only EPOLLERR or
/// EPOLLIN; one whose process has exited just stays quiet), so the main
/// fd here is the read end of a pipe whose write end is closed.
fn hangup_on_the_main_fd_ends_the_thread(page_size: u64) {
    let r = Region::new(page_size, 1);
    let mut p = [0; 2];
    // SAFETY: pipe2 fills a live array of two ints.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_NONBLOCK) }, 0);
    let ev = Arc::new(Events::default());
    let (tx, _rx) = mpsc::channel();
    let h = Handler {
        ev: Arc::clone(&ev),
        block: r.block(),
        tx,
    };
    let ft = FaultThread::start(p[0], &[], None, Box::new(h)).expect("start");
    // SAFETY: closing our own write end: the read end now reports POLLHUP.
    unsafe { libc::close(p[1]) };
    let t = Instant::now();
    while ft.state() != PostcopyRsFaultThreadState::Exited && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let state = ft.state();
    let fatal = *ev.fatal.lock().unwrap();
    let res = ft.stop();
    // SAFETY: our own read end, unused after the thread stopped.
    unsafe { libc::close(p[0]) };
    assert_eq!(
        state,
        PostcopyRsFaultThreadState::Exited,
        "the thread ignored POLLHUP on its main fd"
    );
    assert_eq!(fatal, Some((-libc::EBADF, 0)), "POLLHUP not reported");
    assert!(res.is_err(), "stop() after POLLHUP returned {res:?}");
    assert_eq!(ev.exits.load(SeqCst), 1);
}

/// A main fd that is not a userfaultfd and reads as end-of-file (here
/// /dev/null, always readable, read() returns 0): the thread reports it
/// and ends, instead of spinning on poll() and read() for ever.  (A
/// userfaultfd read returns whole messages or an error, never 0.)
fn end_of_file_on_the_main_fd_ends_the_thread(page_size: u64) {
    let r = Region::new(page_size, 1);
    // SAFETY: opening /dev/null; closed below.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_NONBLOCK) };
    assert!(fd >= 0);
    let ev = Arc::new(Events::default());
    let (tx, _rx) = mpsc::channel();
    let h = Handler {
        ev: Arc::clone(&ev),
        block: r.block(),
        tx,
    };
    let ft = FaultThread::start(fd, &[], None, Box::new(h)).expect("start");
    let t = Instant::now();
    while ft.state() != PostcopyRsFaultThreadState::Exited && t.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(2));
    }
    let state = ft.state();
    let res = ft.stop();
    // SAFETY: our own fd, unused after the thread stopped.
    unsafe { libc::close(fd) };
    assert_eq!(
        state,
        PostcopyRsFaultThreadState::Exited,
        "the thread kept reading end-of-file"
    );
    assert_eq!(*ev.fatal.lock().unwrap(), Some((-libc::EBADF, 0)));
    assert!(res.is_err(), "stop() returned {res:?}");
}

/// A userfaultfd made blocking behind the thread's back reports POLLERR
/// (the kernel's way of refusing it): reported, and the thread ends.
fn pollerr_on_the_userfaultfd_ends_the_thread(page_size: u64) {
    let r = Region::new(page_size, 1);
    let ev = Arc::new(Events::default());
    let (ft, _rx) = start(&r, &ev);
    // SAFETY: F_GETFL/F_SETFL on our own userfaultfd.
    unsafe {
        let fl = libc::fcntl(r.fd(), libc::F_GETFL);
        libc::fcntl(r.fd(), libc::F_SETFL, fl & !libc::O_NONBLOCK);
    }
    // The thread sleeps in poll(): wake it so that it polls again.
    ft.notify();
    wait_until("the thread to end on POLLERR", 5, || {
        ft.state() == PostcopyRsFaultThreadState::Exited
    });
    assert_eq!(*ev.fatal.lock().unwrap(), Some((-libc::EBADF, 0)));
    assert!(ft.stop().is_err());
    assert_eq!(ev.exits.load(SeqCst), 1);
}

/// A multi-page copy over a page that is already there: the kernel stops at
/// it (partial copy, EAGAIN), the retry hits EEXIST, the rest is placed.
fn place_pages_over_present_page(page_size: u64) {
    let r = Region::new(page_size, 4);
    let b = r.block();
    let s0 = stats::snapshot();
    let one = pattern_page(2, page_size, 7);
    place(r.fd(), &b, r.page(2), &one, 1).unwrap();
    let all: Vec<u64> = (0..4)
        .flat_map(|i| pattern_page(i, page_size, SALT))
        .collect();
    place(r.fd(), &b, r.page(0), &all, 4).unwrap();
    for i in [0, 1, 3] {
        check_page(&r, i, SALT).unwrap();
    }
    check_page(&r, 2, 7).expect("the present page is never overwritten");
    let s1 = stats::snapshot();
    assert!(
        s1.eexist > s0.eexist && s1.eagain_retries > s0.eagain_retries,
        "{s0:?} -> {s1:?}"
    );
    // Five placements asked for, four pages really placed: the present one
    // is not counted again.
    assert_eq!(s1.pages_placed - s0.pages_placed, 4, "{s0:?} -> {s1:?}");
    assert_eq!(s1.eexist - s0.eexist, 1, "{s0:?} -> {s1:?}");
    assert_eq!(s1.bytes_placed - s0.bytes_placed, 4 * page_size);
    for i in 0..4 {
        assert!(b.is_received(i * page_size));
    }
}

/// Bad input to placement: clear errors, nothing placed.
fn placement_errors(page_size: u64) {
    let r = Region::new(page_size, 2);
    let b = r.block();
    let buf = pattern_page(0, page_size, SALT);
    assert!(matches!(
        place(r.fd(), &b, r.page(0) + 4096 / 2, &buf, 1),
        Err(Error::Misaligned { .. })
    ));
    assert!(matches!(
        place(r.fd(), &b, r.page(2), &buf, 1),
        Err(Error::OutOfRange { .. })
    ));
    assert!(matches!(
        place(r.fd(), &b, r.page(0), &buf, 0),
        Err(Error::Invalid(_))
    ));
    assert!(matches!(
        place(-1, &b, r.page(0), &buf, 1),
        Err(Error::Ioctl {
            op: "UFFDIO_COPY",
            errno: libc::EBADF,
            ..
        })
    ));
    assert!(
        !b.is_received(0),
        "a failed placement marked the page received"
    );
}

// --- 4 KiB anonymous ------------------------------------------------------

#[test]
fn anon_concurrent_faults_8_threads() {
    let _g = serial();
    concurrent_faults(PAGE_4K, 512, 8, 400);
}

#[test]
fn anon_concurrent_faults_16_threads_hot_pages() {
    let _g = serial();
    concurrent_faults(PAGE_4K, 32, 16, 64);
}

#[test]
fn anon_double_placement() {
    let _g = serial();
    double_placement(PAGE_4K);
}

#[test]
fn anon_zero_pages() {
    let _g = serial();
    zero_pages(PAGE_4K);
}

#[test]
fn anon_stop_with_pending_faults() {
    let _g = serial();
    stop_with_pending_faults(PAGE_4K);
}

#[test]
fn anon_pause_resume_and_stop_while_paused() {
    let _g = serial();
    pause_resume_and_stop_while_paused(PAGE_4K);
}

#[test]
fn anon_proactive_pause_on_notify() {
    let _g = serial();
    proactive_pause_on_notify(PAGE_4K);
}

#[test]
fn anon_stop_races_notify() {
    let _g = serial();
    stop_races_notify(PAGE_4K);
}

#[test]
fn anon_thread_signals_and_blocking_fd() {
    let _g = serial();
    thread_signals_and_blocking_fd(PAGE_4K);
}

#[test]
fn anon_panic_on_the_thread() {
    let _g = serial();
    panic_on_the_thread(PAGE_4K);
}

#[test]
fn anon_fault_outside_guest_ram() {
    let _g = serial();
    fault_outside_guest_ram(PAGE_4K);
}

#[test]
fn anon_hangup_on_the_main_fd_ends_the_thread() {
    let _g = serial();
    hangup_on_the_main_fd_ends_the_thread(PAGE_4K);
}

#[test]
fn anon_end_of_file_on_the_main_fd_ends_the_thread() {
    let _g = serial();
    end_of_file_on_the_main_fd_ends_the_thread(PAGE_4K);
}

#[test]
fn anon_pollerr_on_the_userfaultfd_ends_the_thread() {
    let _g = serial();
    pollerr_on_the_userfaultfd_ends_the_thread(PAGE_4K);
}

#[test]
fn anon_place_pages_over_present_page() {
    let _g = serial();
    place_pages_over_present_page(PAGE_4K);
}

#[test]
fn anon_placement_errors() {
    let _g = serial();
    placement_errors(PAGE_4K);
}

// --- 2 MiB hugetlbfs --------------------------------------------------------

/// Run `f` with `n` 2 MiB hugepages reserved, or skip loudly.
fn with_hugepages(what: &str, n: u64, f: impl FnOnce()) {
    let _g = serial();
    if let Some(_h) = HugePages::reserve(2048, n, what) {
        f();
    }
}

/// A skip shows under a plain `cargo test`, whose harness hides what
/// passing tests print: run one hugetlbfs test of this binary as cargo
/// does (no `--nocapture`), made to skip, and look for the line in what
/// the binary wrote to stderr, and in the record the test command prints.
#[test]
fn skipped_tests_are_reported_outside_the_capture() {
    let record = std::env::temp_dir().join(format!("pcrs-skipped-{}.txt", std::process::id()));
    let _ = std::fs::remove_file(&record);
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["hugetlb_zero_pages", "--exact", "--test-threads=1"])
        .env("POSTCOPY_RS_SKIP_HUGEPAGES", "1")
        .env("POSTCOPY_RS_SKIPPED_FILE", &record)
        .env_remove("RUST_TEST_NOCAPTURE")
        .output()
        .expect("running this test binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let recorded = std::fs::read_to_string(&record).unwrap_or_default();
    let _ = std::fs::remove_file(&record);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("1 passed"),
        "the test did not run: {stdout}"
    );
    let line = "SKIPPED: hugetlb_zero_pages: POSTCOPY_RS_SKIP_HUGEPAGES=1";
    assert!(
        stderr.contains(line),
        "the skip is invisible under a plain cargo test; stderr: {stderr:?}"
    );
    assert!(recorded.contains(line), "not recorded: {recorded:?}");
}

#[test]
fn hugetlb_concurrent_faults_8_threads() {
    with_hugepages("hugetlb_concurrent_faults_8_threads", 16, || {
        concurrent_faults(PAGE_2M, 16, 8, 40)
    });
}

#[test]
fn hugetlb_double_placement() {
    with_hugepages("hugetlb_double_placement", 2, || double_placement(PAGE_2M));
}

#[test]
fn hugetlb_zero_pages() {
    with_hugepages("hugetlb_zero_pages", 2, || zero_pages(PAGE_2M));
}

#[test]
fn hugetlb_stop_with_pending_faults() {
    with_hugepages("hugetlb_stop_with_pending_faults", 4, || {
        stop_with_pending_faults(PAGE_2M)
    });
}

#[test]
fn hugetlb_pause_resume_and_stop_while_paused() {
    with_hugepages("hugetlb_pause_resume_and_stop_while_paused", 4, || {
        pause_resume_and_stop_while_paused(PAGE_2M)
    });
}

#[test]
fn hugetlb_fault_outside_guest_ram() {
    with_hugepages("hugetlb_fault_outside_guest_ram", 3, || {
        fault_outside_guest_ram(PAGE_2M)
    });
}

#[test]
fn hugetlb_place_pages_over_present_page() {
    with_hugepages("hugetlb_place_pages_over_present_page", 4, || {
        place_pages_over_present_page(PAGE_2M)
    });
}

#[test]
fn hugetlb_placement_errors() {
    with_hugepages("hugetlb_placement_errors", 2, || placement_errors(PAGE_2M));
}
