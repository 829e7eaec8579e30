// SPDX-License-Identifier: GPL-2.0-or-later
//! Adaptive pre-paging in the fault thread, on real userfaultfd: 4 KiB
//! anonymous memory, and 2 MiB hugetlbfs pages where the kernel grants
//! them (skipped loudly otherwise).  Needs root (or
//! `vm.unprivileged_userfaultfd=1`).  No timing assertions: every check
//! is on what was requested, placed and woken.

mod common;

use common::*;
use postcopy_rs::addr::{BlockHandle, HostAddr};
use postcopy_rs::error::Error;
use postcopy_rs::fault_thread::{FaultHandler, FaultThread, Resolved};
use postcopy_rs::placement::Block;
use postcopy_rs::prepage::{self, RangeRequester, Settings};
use std::collections::{HashMap, HashSet};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

const SALT: u64 = 0x9a9e;
const HANDLE: usize = 0xb10c;

/// What the thread did, seen from the embedder's side.
#[derive(Default)]
struct Log {
    /// Each request in order: (first page, pages), one-page ones included.
    messages: Mutex<Vec<(u64, u64)>>,
    /// Host pages that faulted (page indices).
    faulted: Mutex<HashSet<u64>>,
    faults: AtomicU64,
    /// Range requests to fail (broken return path) before one succeeds.
    fail_ranges: AtomicU32,
    paused: AtomicU32,
    bad: AtomicBool,
}

struct Handler {
    log: Arc<Log>,
    block: Block,
    tx: mpsc::Sender<(u64, u64)>,
}

impl FaultHandler for Handler {
    fn resolve(&mut self, addr: HostAddr) -> postcopy_rs::Result<Resolved> {
        let addr = addr.get();
        if (self.block.host..self.block.host + self.block.len).contains(&addr) {
            Ok(Resolved {
                handle: BlockHandle::new(HANDLE),
                block: self.block.clone(),
            })
        } else {
            Err(Error::OutOfRange { addr, len: 1 })
        }
    }
    fn fault(&mut self, _handle: BlockHandle, addr: HostAddr, _tid: u32) {
        let addr = addr.get();
        let i = (addr - self.block.host) / self.block.page_size;
        self.log.faulted.lock().unwrap().insert(i);
        self.log.faults.fetch_add(1, SeqCst);
    }
    fn request_page(
        &mut self,
        handle: BlockHandle,
        offset: u64,
        _addr: HostAddr,
    ) -> postcopy_rs::Result<()> {
        let handle = handle.get();
        if handle != HANDLE {
            self.log.bad.store(true, SeqCst);
        }
        let i = offset / self.block.page_size;
        self.log.messages.lock().unwrap().push((i, 1));
        let _ = self.tx.send((i, 1));
        Ok(())
    }
    fn paused(&mut self) {
        self.log.paused.fetch_add(1, SeqCst);
    }
}

struct Ranges {
    log: Arc<Log>,
    host: u64,
    page_size: u64,
    tx: mpsc::Sender<(u64, u64)>,
}

impl RangeRequester for Ranges {
    fn request_range(
        &mut self,
        handle: BlockHandle,
        offset: u64,
        len: u64,
        addr: HostAddr,
    ) -> postcopy_rs::Result<u64> {
        let (handle, addr) = (handle.get(), addr.get());
        // The faulting page heads the range.
        if handle != HANDLE
            || offset % self.page_size != 0
            || len % self.page_size != 0
            || len < 2 * self.page_size
            || !(self.host + offset..self.host + offset + self.page_size).contains(&addr)
        {
            self.log.bad.store(true, SeqCst);
        }
        if self
            .log
            .fail_ranges
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(Error::Callback {
                name: "request_range",
                ret: -libc::EIO,
            });
        }
        let (i, n) = (offset / self.page_size, len / self.page_size);
        self.log.messages.lock().unwrap().push((i, n));
        let _ = self.tx.send((i, n));
        Ok(0)
    }
}

/// The fault thread on `r`, pre-paging up to `max` pages; the receiver
/// gets each request.
fn start(r: &Region, log: &Arc<Log>, max: u32) -> (FaultThread, mpsc::Receiver<(u64, u64)>) {
    let (tx, rx) = mpsc::channel();
    let h = Handler {
        log: Arc::clone(log),
        block: r.block(),
        tx: tx.clone(),
    };
    let ft =
        FaultThread::start(r.fd().as_fd(), &[], Some("test-prepage"), Box::new(h)).expect("start");
    ft.set_prepage(Some(Settings {
        max_pages: max,
        requester: Box::new(Ranges {
            log: Arc::clone(log),
            host: r.base,
            page_size: r.page_size,
            tx,
        }),
    }));
    (ft, rx)
}

/// A "source" that places every page of each request, in order, once:
/// like QEMU's, it drops a request for a page it sent already (clean).
fn spawn_source(fd: Fd, b: Block, rx: mpsc::Receiver<(u64, u64)>) -> std::thread::JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut sent = HashSet::new();
        for (i, n) in rx {
            for k in (i..i + n).filter(|&k| sent.insert(k)) {
                let buf = pattern_page(k, b.page_size, SALT);
                place(&fd, &b, b.host + k * b.page_size, &buf, 1).expect("place");
            }
        }
        sent.len() as u64
    })
}

/// Places zero pages everywhere if the test hangs, so that it fails
/// instead of hanging.
fn watchdog(r: &Region, secs: u64) -> (mpsc::Sender<()>, std::thread::JoinHandle<bool>) {
    let (done, rx) = mpsc::channel::<()>();
    let (fd, b) = (r.fd(), r.block());
    let t = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(Duration::from_secs(secs)) {
            release_all(fd.as_fd(), &b);
            return true;
        }
        false
    });
    (done, t)
}

fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// What [`check_requests`] found.
struct Requests {
    /// Every request, in order.
    all: Vec<(u64, u64)>,
    /// The one-page requests for a page pre-paged earlier (a thread
    /// faulted on it).
    again: usize,
}

/// Every request's first page faulted; no page was requested twice,
/// except once more alone after a range pre-paged it; and the requests
/// cover `want`.
fn check_requests(log: &Log, want: &HashSet<u64>) -> Requests {
    let msgs = log.messages.lock().unwrap().clone();
    let faulted = log.faulted.lock().unwrap().clone();
    // Page -> whether it was only pre-paged so far (asked again: false).
    let mut seen: HashMap<u64, bool> = HashMap::new();
    let mut again = 0;
    for &(i, n) in &msgs {
        assert!(
            faulted.contains(&i),
            "request ({i}, {n}) does not start at a faulting page"
        );
        if n == 1 && seen.get(&i) == Some(&true) {
            seen.insert(i, false);
            again += 1;
            continue;
        }
        for k in i..i + n {
            assert!(
                seen.insert(k, k != i).is_none(),
                "page {k} requested twice (request ({i}, {n})): {msgs:?}"
            );
        }
    }
    let got: HashSet<u64> = seen.keys().copied().collect();
    assert!(want.is_subset(&got), "pages never requested");
    assert!(!log.bad.load(SeqCst), "a bad handle, offset or range");
    Requests { all: msgs, again }
}

/// `threads` threads each read their own `per` pages in order, pre-paging
/// up to `max`: every page arrives once and every thread finishes.  Returns
/// the requests.
fn sweep(page_size: u64, threads: u64, per: u64, max: u32) -> Requests {
    let r = Region::new(page_size, threads * per);
    let log = Arc::new(Log::default());
    let (ft, rx) = start(&r, &log, max);
    let src = spawn_source(r.fd(), r.block(), rx);
    let (done, wd) = watchdog(&r, 60);
    std::thread::scope(|s| {
        for t in 0..threads {
            let r = &r;
            s.spawn(move || {
                for i in t * per..(t + 1) * per {
                    check_page(r, i, SALT).unwrap();
                }
            });
        }
    });
    let _ = done.send(());
    assert!(
        !wd.join().unwrap(),
        "watchdog fired: a thread was never woken"
    );
    assert_eq!(ft.stop(), Ok(()));
    let placed = src.join().unwrap();
    let all: HashSet<u64> = (0..threads * per).collect();
    let reqs = check_requests(&log, &all);
    assert_eq!(placed, threads * per, "pages placed");
    reqs
}

/// A sequential sweep makes far fewer requests than pages.
fn sequential(page_size: u64, threads: u64, per: u64, max: u32) {
    let s0 = prepage::snapshot();
    let reqs = sweep(page_size, threads, per, max);
    let (msgs, again) = (&reqs.all, reqs.again);
    // A window of `max` reached after log2(max) doublings per stream; the
    // pages asked for again are faults that caught up with their range.
    let bound = threads * (per / u64::from(max) + 2 + u64::from(max.ilog2()));
    let first = msgs.len() - again;
    assert!(
        (first as u64) <= bound,
        "{first} requests (and {again} again) for {} pages (bound {bound}): {msgs:?}",
        threads * per
    );
    assert!(msgs.iter().any(|&(_, n)| n == u64::from(max)));
    let s1 = prepage::snapshot();
    assert_eq!(s1.pages - s0.pages, threads * per - first as u64);
    assert_eq!(
        s1.requests - s0.requests,
        msgs.iter().filter(|&&(_, n)| n > 1).count() as u64
    );
    assert!(s1.max_window >= u64::from(max));
}

/// Threads touching random pages: no stream forms, so the requests are
/// one page each, or nearly.
fn random(page_size: u64, npages: u64, threads: u64, touches: u64) {
    let r = Region::new(page_size, npages);
    let log = Arc::new(Log::default());
    let (ft, rx) = start(&r, &log, 16);
    let src = spawn_source(r.fd(), r.block(), rx);
    let (done, wd) = watchdog(&r, 60);
    let touched = Mutex::new(HashSet::new());
    std::thread::scope(|s| {
        for t in 0..threads {
            let (r, touched) = (&r, &touched);
            s.spawn(move || {
                let mut rng = Rng(0x1234_5678 + t);
                for _ in 0..touches {
                    let i = rng.below(npages);
                    check_page(r, i, SALT).unwrap();
                    touched.lock().unwrap().insert(i);
                }
            });
        }
    });
    let _ = done.send(());
    assert!(
        !wd.join().unwrap(),
        "watchdog fired: a thread was never woken"
    );
    assert_eq!(ft.stop(), Ok(()));
    src.join().unwrap();
    let msgs = check_requests(&log, &touched.into_inner().unwrap()).all;
    let prepaged: u64 = msgs.iter().map(|&(_, n)| n - 1).sum();
    let longest = msgs.iter().map(|&(_, n)| n).max().unwrap_or(0);
    // Two random faults on neighbouring pages make a stream of two: rare,
    // and a window that never gets far.
    assert!(
        prepaged * 20 <= msgs.len() as u64 && longest <= 4,
        "random faults pre-paged {prepaged} pages in {} requests (longest {longest})",
        msgs.len()
    );
}

/// A fault on a pre-paged page still in flight asks for it again, alone
/// (a source may leave pages of a range unsent), and the faulting page,
/// first in its request, wakes its thread before the rest of the range
/// arrives.
fn in_flight_hit(page_size: u64) {
    let r = Region::new(page_size, 8);
    let b = r.block();
    let log = Arc::new(Log::default());
    let s0 = prepage::snapshot();
    let (ft, rx) = start(&r, &log, 4);
    let (done, wd) = watchdog(&r, 60);
    let place_page = |i: u64| {
        let buf = pattern_page(i, page_size, SALT);
        place(r.fd(), &b, r.page(i), &buf, 1).unwrap();
    };
    std::thread::scope(|s| {
        // Page 0: a stream of window 1.
        let a = s.spawn(|| check_page(&r, 0, SALT));
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)), Ok((0, 1)));
        place_page(0);
        a.join().unwrap().unwrap();
        // Page 1 continues it: window 2, pages 1 and 2 in one request.
        let b1 = s.spawn(|| check_page(&r, 1, SALT));
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)), Ok((1, 2)));
        // A fault on page 2, pre-paged and in flight: asked for again.
        let c = s.spawn(|| check_page(&r, 2, SALT));
        assert_eq!(rx.recv_timeout(Duration::from_secs(20)), Ok((2, 1)));
        // Only the faulting page arrives: its thread wakes.
        place_page(1);
        b1.join().unwrap().unwrap();
        place_page(2);
        c.join().unwrap().unwrap();
    });
    let _ = done.send(());
    assert!(!wd.join().unwrap(), "watchdog fired");
    assert_eq!(ft.stop(), Ok(()));
    assert!(rx.try_recv().is_err(), "page 2 was requested a third time");
    assert_eq!(*log.messages.lock().unwrap(), vec![(0, 1), (1, 2), (2, 1)]);
    let s1 = prepage::snapshot();
    assert_eq!(s1.hits_in_flight - s0.hits_in_flight, 1);
}

/// A failed range request pauses the thread; after the resume the same
/// range is asked again and every page arrives.
fn failed_range_pauses(page_size: u64) {
    let r = Region::new(page_size, 64);
    let log = Arc::new(Log::default());
    let (ft, rx) = start(&r, &log, 8);
    let src = spawn_source(r.fd(), r.block(), rx);
    let (done, wd) = watchdog(&r, 60);
    log.fail_ranges.store(1, SeqCst);
    std::thread::scope(|s| {
        let t = s.spawn(|| (0..64).try_for_each(|i| check_page(&r, i, SALT)));
        wait_until("the pause", || log.paused.load(SeqCst) == 1);
        ft.resume();
        t.join().unwrap().unwrap();
    });
    let _ = done.send(());
    assert!(!wd.join().unwrap(), "watchdog fired");
    assert_eq!(ft.stop(), Ok(()));
    src.join().unwrap();
    let msgs = log.messages.lock().unwrap().clone();
    assert!(msgs.iter().any(|&(_, n)| n > 1), "{msgs:?}");
    // The pause dropped the in-flight table: a page may be asked twice,
    // but every request still starts at a faulting page.
    let faulted = log.faulted.lock().unwrap().clone();
    assert!(msgs.iter().all(|(i, _)| faulted.contains(i)));
}

/// Turned off, the thread requests exactly one page per missing page.
fn off_is_one_page_each(page_size: u64) {
    let r = Region::new(page_size, 32);
    let log = Arc::new(Log::default());
    let (ft, rx) = start(&r, &log, 8);
    ft.set_prepage(None);
    let src = spawn_source(r.fd(), r.block(), rx);
    let (done, wd) = watchdog(&r, 60);
    (0..32).try_for_each(|i| check_page(&r, i, SALT)).unwrap();
    let _ = done.send(());
    assert!(!wd.join().unwrap(), "watchdog fired");
    assert_eq!(ft.stop(), Ok(()));
    src.join().unwrap();
    let msgs = check_requests(&log, &(0..32).collect()).all;
    assert_eq!(msgs, (0..32).map(|i| (i, 1)).collect::<Vec<_>>());
}

#[test]
fn anon_sequential_1_thread() {
    let _g = serial();
    sequential(PAGE_4K, 1, 1024, 16);
}

#[test]
fn anon_sequential_4_threads() {
    let _g = serial();
    sequential(PAGE_4K, 4, 512, 32);
}

#[test]
fn anon_random_4_threads() {
    let _g = serial();
    random(PAGE_4K, 1 << 16, 4, 300);
}

#[test]
fn anon_in_flight_hit() {
    let _g = serial();
    in_flight_hit(PAGE_4K);
}

#[test]
fn anon_failed_range_pauses() {
    let _g = serial();
    failed_range_pauses(PAGE_4K);
}

#[test]
fn anon_off_is_one_page_each() {
    let _g = serial();
    off_is_one_page_each(PAGE_4K);
}

/// On 2 MiB pages `MAX_PREPAGE_BYTES` allows one page ahead: with
/// pre-paging on, a sequential sweep asks for two pages per request, and
/// needs about half as many requests as pages.
#[test]
fn hugetlb_sequential_prepages_one_page_ahead() {
    with_hugepages("hugetlb_sequential_prepages_one_page_ahead", 64, || {
        let reqs = sweep(PAGE_2M, 2, 32, 8);
        assert!(reqs.all.iter().all(|&(_, n)| n <= 2), "{:?}", reqs.all);
        assert!(reqs.all.iter().any(|&(_, n)| n == 2), "{:?}", reqs.all);
        // Per thread: the first fault alone, then runs of two.
        let first = reqs.all.len() - reqs.again;
        assert!(
            first <= 2 * (32 / 2 + 1),
            "{first} requests: {:?}",
            reqs.all
        );
    });
}
