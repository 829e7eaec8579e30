// SPDX-License-Identifier: GPL-2.0-or-later
//! Fault storm: N threads fault at once on one real userfaultfd.
//!
//! Each of N faulting threads (1 to 64) reads one byte of each of its own
//! 4 KiB pages, in a random order, from a private anonymous region
//! registered in MISSING mode.  A fault thread reads the faults and writes
//! one 16-byte request (block offset, length) per fault to a Unix stream
//! socket; a "source" thread reads the requests and places the pages.
//! Two ways, in the same process, alternating, on fresh mappings:
//! - `raw`: plain libc, no library: `poll()` on the userfaultfd and a stop
//!   eventfd, `read()` of up to 64 `uffd_msg`, one `write()` per fault; the
//!   source does the `UFFDIO_COPY` itself;
//! - `lib`: the library as a C embedder drives it:
//!   `postcopy_rs_fault_thread_start()` with C callbacks (`resolve` fills a
//!   block view, `request_page` writes the same request), and a source
//!   that places with `postcopy_rs_place_pages()`;
//! - `lib+pp`: `lib` with pre-paging on (16 pages), as
//!   `x-postcopy-prepage-pages=16` sets it.  The faults are random, so it
//!   should ask for what `lib` asks for; the difference is the planner's
//!   cost.
//!
//! It reports pages/s (pages over the wall time from the touchers' start
//! to the last one's resume) and, per rep, the ratio lib/raw of the same
//! rep, as a median with its min-max, and the CPU the fault thread and
//! the source spent per page (`CLOCK_THREAD_CPUTIME_ID`, read on those
//! threads).  The machine's core count bounds what many threads can do:
//! past it the touchers, the fault thread and the source share CPUs.
//!
//! `cargo bench --bench storm` runs it in full; without `--bench` (`cargo
//! test`, which runs it as a smoke test) or with `STORM_QUICK=1` it runs
//! once with few threads and pages and judges nothing.  `STORM_REPS` and
//! `STORM_PAGES` override the full run's repetitions and pages per run.
//! The full table also goes to `target/storm-bench.md`.
//!
//! Needs root (or `vm.unprivileged_userfaultfd=1`).
#![allow(missing_docs)]

use postcopy_rs::ffi::{
    postcopy_rs_fault_thread_set_prepage, postcopy_rs_fault_thread_start,
    postcopy_rs_fault_thread_stop, postcopy_rs_place_pages, PostcopyRsBlockView,
    PostcopyRsFaultConfig, PostcopyRsFaultOps, PostcopyRsFaultTarget, PostcopyRsFaultThread,
    POSTCOPY_RS_BLOCK_ZEROPAGE,
};
use std::fmt::Write as _;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::raw::{c_int, c_void};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};

const PS: u64 = 4096;
/// The byte every source page holds; touchers check it.
const FILL: u8 = 0x5a;
/// One request on the socket: block offset, length, both u64.
const REQ: usize = 16;
/// `uffd_msg` read per `read()`, as the library does.
const BATCH: usize = 64;
/// Pre-paging window of `lib+pp`.
const PREPAGE: u32 = 16;
/// raw, lib, lib+pp.
const VARIANTS: usize = 3;
const NAMES: [&str; VARIANTS] = ["raw", "lib", "lib+pp"];

// ---------------------------------------------------------------------------
// The userfaultfd kernel ABI, as a plain C handler writes it.

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct UffdMsg {
    event: u8,
    _r1: u8,
    _r2: u16,
    _r3: u32,
    flags: u64,
    address: u64,
    ptid: u32,
    _pad: u32,
}

#[repr(C)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

#[repr(C)]
struct UffdioCopy {
    dst: u64,
    src: u64,
    len: u64,
    mode: u64,
    copy: i64,
}

const UFFD_API: u64 = 0xaa;
const UFFD_FEATURE_THREAD_ID: u64 = 1 << 8;
const UFFD_EVENT_PAGEFAULT: u8 = 0x12;
const UFFDIO_API: libc::Ioctl = 0xc018_aa3fu32 as libc::Ioctl;
const UFFDIO_REGISTER: libc::Ioctl = 0xc020_aa00u32 as libc::Ioctl;
const UFFDIO_COPY: libc::Ioctl = 0xc028_aa03u32 as libc::Ioctl;
const UFFDIO_WAKE: libc::Ioctl = 0x8010_aa02u32 as libc::Ioctl;
const UFFDIO_REGISTER_MODE_MISSING: u64 = 1;

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// A non-blocking userfaultfd with the thread-id feature, as QEMU opens it.
fn userfaultfd() -> OwnedFd {
    // SAFETY: plain syscall with flag arguments.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
    assert!(
        fd >= 0,
        "userfaultfd: {} (this bench needs root or vm.unprivileged_userfaultfd=1)",
        std::io::Error::last_os_error()
    );
    // SAFETY: a fresh fd that nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    let mut api = UffdioApi {
        api: UFFD_API,
        features: UFFD_FEATURE_THREAD_ID,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_API takes a uffdio_api.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), UFFDIO_API, &mut api) };
    assert_eq!(r, 0, "UFFDIO_API: {}", std::io::Error::last_os_error());
    fd
}

/// Copy `len` bytes from `src` to `dst` with `UFFDIO_COPY`, retrying EAGAIN
/// from where the kernel stopped.
fn raw_copy(uffd: RawFd, dst: u64, src: u64, len: u64) {
    let mut done = 0;
    while done < len {
        let mut c = UffdioCopy {
            dst: dst + done,
            src: src + done,
            len: len - done,
            mode: 0,
            copy: 0,
        };
        // SAFETY: src is len readable bytes; the kernel checks dst.
        let r = unsafe { libc::ioctl(uffd, UFFDIO_COPY, &mut c) };
        if r == 0 {
            return;
        }
        match errno() {
            libc::EAGAIN => done += u64::try_from(c.copy).unwrap_or(0) / PS * PS,
            libc::EEXIST => {
                let mut range = [dst + done, len - done];
                // SAFETY: UFFDIO_WAKE takes a uffdio_range (two u64).
                unsafe {
                    libc::ioctl(uffd, UFFDIO_WAKE, range.as_mut_ptr());
                }
                return;
            }
            e => panic!(
                "UFFDIO_COPY at {:#x}: {}",
                dst + done,
                std::io::Error::from_raw_os_error(e)
            ),
        }
    }
}

// ---------------------------------------------------------------------------
// Memory, sockets, clocks.

/// An anonymous mapping registered with a userfaultfd; unmapped on drop.
struct Region {
    addr: u64,
    len: u64,
}

impl Region {
    fn new(uffd: RawFd, len: u64) -> Self {
        // SAFETY: a fresh anonymous mapping; nothing existing is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED, "mmap of {len} bytes");
        // QEMU does this for postcopy: faults and copies of 4 KiB pages.
        // SAFETY: advice on our own fresh mapping.
        unsafe {
            libc::madvise(p, len as usize, libc::MADV_NOHUGEPAGE);
        }
        let r = Region {
            addr: p as u64,
            len,
        };
        let mut reg = UffdioRegister {
            start: r.addr,
            len,
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ioctls: 0,
        };
        // SAFETY: UFFDIO_REGISTER takes a uffdio_register; our own mapping.
        let rc = unsafe { libc::ioctl(uffd, UFFDIO_REGISTER, &mut reg) };
        assert_eq!(
            rc,
            0,
            "UFFDIO_REGISTER: {}",
            std::io::Error::last_os_error()
        );
        r
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: our own mapping, not used after this.
        unsafe {
            libc::munmap(self.addr as *mut c_void, self.len as usize);
        }
    }
}

/// A connected pair of blocking Unix stream sockets: (fault side, source side).
fn socketpair() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "socketpair");
    // SAFETY: fresh descriptors that nothing else owns.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

fn eventfd() -> OwnedFd {
    // SAFETY: plain syscall.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
    assert!(fd >= 0, "eventfd");
    // SAFETY: a fresh fd that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Write one request; false if the socket is broken.
fn send_req(sock: RawFd, off: u64, len: u64) -> bool {
    let mut b = [0u8; REQ];
    b[..8].copy_from_slice(&off.to_ne_bytes());
    b[8..].copy_from_slice(&len.to_ne_bytes());
    let mut done = 0;
    while done < REQ {
        // SAFETY: writing from a live buffer.
        let n = unsafe { libc::write(sock, b[done..].as_ptr().cast(), REQ - done) };
        if n <= 0 {
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            return false;
        }
        done += n as usize;
    }
    true
}

/// CPU time of the calling thread, ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a live timespec.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The source: read requests until end of file and place each with
/// `place(offset, len)`.  Returns its CPU time.
fn source_loop(sock: RawFd, mut place: impl FnMut(u64, u64)) -> u64 {
    let t0 = thread_cpu_ns();
    let mut buf = [0u8; REQ * BATCH];
    let mut have = 0;
    loop {
        // SAFETY: reading into the free tail of a live buffer.
        let n = unsafe { libc::read(sock, buf[have..].as_mut_ptr().cast(), buf.len() - have) };
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        if n <= 0 {
            return thread_cpu_ns() - t0;
        }
        have += n as usize;
        let whole = have / REQ * REQ;
        for r in buf[..whole].chunks_exact(REQ) {
            let off = u64::from_ne_bytes(r[..8].try_into().unwrap());
            let len = u64::from_ne_bytes(r[8..].try_into().unwrap());
            place(off, len);
        }
        buf.copy_within(whole..have, 0);
        have -= whole;
    }
}

// ---------------------------------------------------------------------------
// The faulting threads.

/// Each of `threads` threads reads one byte of each page of its own
/// contiguous share of `region`, in a random order.  Returns the wall time
/// from their common start to the last one's end.
fn touch(region: &Region, threads: usize, seed: u64) -> Duration {
    let pages = (region.len / PS) as usize;
    let per = pages / threads;
    let barrier = Barrier::new(threads + 1);
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                let base = region.addr;
                s.spawn(move || {
                    let mut order: Vec<u64> = ((t * per) as u64..((t + 1) * per) as u64).collect();
                    let mut x = seed ^ (t as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                    for i in (1..order.len()).rev() {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        order.swap(i, (x % (i as u64 + 1)) as usize);
                    }
                    barrier.wait();
                    for i in order {
                        let p = (base + i * PS) as *const u8;
                        // SAFETY: inside the registered mapping; the read
                        // blocks until the page is placed.
                        let v = unsafe { std::ptr::read_volatile(p) };
                        assert_eq!(v, FILL, "page {i} has the wrong content");
                    }
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        for h in hs {
            h.join().expect("toucher panicked");
        }
        t0.elapsed()
    })
}

/// One run's figures.
#[derive(Clone, Copy, Default)]
struct Run {
    pages_per_s: f64,
    /// CPU per page, ns: the fault thread's, the source's.
    fault_ns: f64,
    source_ns: f64,
}

// ---------------------------------------------------------------------------
// raw: plain libc.

fn run_raw(uffd: RawFd, threads: usize, pages: usize, src: u64, seed: u64) -> Run {
    let region = Region::new(uffd, pages as u64 * PS);
    let (fault_sock, source_sock) = socketpair();
    let stop = eventfd();
    let base = region.addr;
    let (wall, fault_cpu, source_cpu) = std::thread::scope(|s| {
        let (fs, ss, ev) = (
            fault_sock.as_raw_fd(),
            source_sock.as_raw_fd(),
            stop.as_raw_fd(),
        );
        let source =
            s.spawn(move || source_loop(ss, |off, len| raw_copy(uffd, base + off, src, len)));
        let fault = s.spawn(move || {
            raw_fault_loop(uffd, ev, |addr| {
                let off = (addr & !(PS - 1)) - base;
                assert!(send_req(fs, off, PS), "request socket broken");
            })
        });
        let wall = touch(&region, threads, seed);
        let one = 1u64;
        // SAFETY: 8 bytes from a live u64 to our eventfd.
        unsafe {
            libc::write(ev, std::ptr::from_ref(&one).cast(), 8);
        }
        let fault_cpu = fault.join().expect("raw fault thread");
        // SAFETY: the fault side is done: end of file for the source.
        unsafe {
            libc::shutdown(fs, libc::SHUT_WR);
        }
        (wall, fault_cpu, source.join().expect("raw source"))
    });
    let n = region.len / PS;
    Run {
        pages_per_s: n as f64 / wall.as_secs_f64(),
        fault_ns: fault_cpu as f64 / n as f64,
        source_ns: source_cpu as f64 / n as f64,
    }
}

// ---------------------------------------------------------------------------
// lib: the C ABI.

/// A block view shared with the source thread.
struct SharedView(PostcopyRsBlockView);

// SAFETY: the view's pointers (the region and the receivedmap) outlive
// every thread that uses it, and the library only touches the map
// atomically.
unsafe impl Sync for SharedView {}

/// The embedder's state, the `opaque` of the callbacks.
struct Embedder {
    view: PostcopyRsBlockView,
    sock: RawFd,
    /// Place each page at once on the fault thread (the userfaultfd and a
    /// source page), instead of sending a request.
    place_now: Option<(RawFd, u64)>,
    /// The fault thread's CPU clock at `thread_enter`, then its CPU time
    /// at `thread_exit`.
    cpu: AtomicU64,
}

/// # Safety
/// `opaque` is a live `Embedder`.
unsafe fn embedder<'a>(opaque: *mut c_void) -> &'a Embedder {
    // SAFETY: per the function's contract.
    unsafe { &*opaque.cast::<Embedder>() }
}

unsafe extern "C" fn cb_enter(opaque: *mut c_void) {
    // SAFETY: the opaque given at start.
    unsafe { embedder(opaque) }
        .cpu
        .store(thread_cpu_ns(), Ordering::Relaxed);
}

unsafe extern "C" fn cb_exit(opaque: *mut c_void) {
    // SAFETY: the opaque given at start.
    let e = unsafe { embedder(opaque) };
    let t0 = e.cpu.load(Ordering::Relaxed);
    e.cpu.store(thread_cpu_ns() - t0, Ordering::Relaxed);
}

unsafe extern "C" fn cb_resolve(
    opaque: *mut c_void,
    addr: u64,
    out: *mut PostcopyRsFaultTarget,
) -> c_int {
    // SAFETY: the opaque given at start.
    let e = unsafe { embedder(opaque) };
    let host = e.view.host as u64;
    if addr < host || addr - host >= e.view.used_length {
        return -libc::ERANGE;
    }
    // SAFETY: the library passes a writable target.
    unsafe {
        (*out).block = opaque;
        (*out).view = e.view;
    }
    0
}

unsafe extern "C" fn cb_request(opaque: *mut c_void, _b: *mut c_void, off: u64, _a: u64) -> c_int {
    // SAFETY: the opaque given at start.
    let e = unsafe { embedder(opaque) };
    if let Some((uffd, src)) = e.place_now {
        let host = (e.view.host as u64 + off) as *mut c_void;
        // SAFETY: the view's memory is live; src holds a page.
        return unsafe { postcopy_rs_place_pages(uffd, &e.view, host, src as *const c_void, 1) };
    }
    if send_req(e.sock, off, PS) {
        0
    } else {
        -libc::EPIPE
    }
}

unsafe extern "C" fn cb_range(
    opaque: *mut c_void,
    _b: *mut c_void,
    off: u64,
    len: u64,
    _a: u64,
) -> i64 {
    // SAFETY: the opaque given at start.
    let e = unsafe { embedder(opaque) };
    if let Some((uffd, src)) = e.place_now {
        // The pages after the first are missing (the planner saw them so).
        let host = (e.view.host as u64 + off) as *mut c_void;
        // SAFETY: the view's memory is live; src holds PREPAGE pages.
        let r =
            unsafe { postcopy_rs_place_pages(uffd, &e.view, host, src as *const c_void, len / PS) };
        return i64::from(r);
    }
    if send_req(e.sock, off, len) {
        0
    } else {
        -i64::from(libc::EPIPE)
    }
}

/// The fault thread's configuration, with `emb` as `opaque`.
fn lib_config(uffd: RawFd, emb: &Embedder) -> PostcopyRsFaultConfig {
    PostcopyRsFaultConfig {
        uffd,
        nr_shared_fds: 0,
        shared_fds: std::ptr::null(),
        ops: PostcopyRsFaultOps {
            opaque: std::ptr::from_ref(emb).cast_mut().cast(),
            thread_enter: Some(cb_enter),
            thread_exit: Some(cb_exit),
            resolve: Some(cb_resolve),
            fault: None,
            request_page: Some(cb_request),
            paused: None,
            resumed: None,
            fatal: None,
            shared_fault: None,
            check_pause: None,
        },
        name: std::ptr::null(),
    }
}

fn run_lib(uffd: RawFd, threads: usize, pages: usize, src: u64, seed: u64, pp: bool) -> Run {
    let region = Region::new(uffd, pages as u64 * PS);
    // The receivedmap, one bit per page, touched only atomically.
    let map: Vec<AtomicU64> = (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
    let (fault_sock, source_sock) = socketpair();
    let view = PostcopyRsBlockView {
        host: region.addr as *mut c_void,
        used_length: region.len,
        page_size: PS,
        receivedmap: map.as_ptr().cast_mut().cast(),
        target_page_bits: 12,
        flags: POSTCOPY_RS_BLOCK_ZEROPAGE,
    };
    let emb = Embedder {
        view,
        sock: fault_sock.as_raw_fd(),
        place_now: None,
        cpu: AtomicU64::new(0),
    };
    let cfg = lib_config(uffd, &emb);
    let ss = source_sock.as_raw_fd();
    let shared = SharedView(view);
    let (wall, source_cpu) = std::thread::scope(|s| {
        let shared = &shared;
        let map = &map;
        let source = s.spawn(move || {
            source_loop(ss, |off, len| {
                // A page pre-paged and then asked for alone comes twice:
                // the second is dropped, as QEMU's source drops a request
                // for a page it sent.
                for p in (off..off + len).step_by(PS as usize) {
                    let i = (p / PS) as usize;
                    if map[i / 64].load(Ordering::Relaxed) & (1 << (i % 64)) != 0 {
                        continue;
                    }
                    let v = &shared.0;
                    // SAFETY: the view's memory is live, src holds a page.
                    let r = unsafe {
                        postcopy_rs_place_pages(
                            uffd,
                            v,
                            (v.host as u64 + p) as *mut c_void,
                            src as *const c_void,
                            1,
                        )
                    };
                    assert_eq!(r, 0, "postcopy_rs_place_pages at offset {p:#x}");
                }
            })
        });
        let mut ft: *mut PostcopyRsFaultThread = std::ptr::null_mut();
        // SAFETY: cfg and its callbacks, and emb, live until the stop below.
        let r = unsafe { postcopy_rs_fault_thread_start(&cfg, &mut ft) };
        assert_eq!(r, 0, "postcopy_rs_fault_thread_start");
        if pp {
            // SAFETY: cb_range may be called with emb until the stop.
            let rc = unsafe { postcopy_rs_fault_thread_set_prepage(ft, PREPAGE, Some(cb_range)) };
            assert_eq!(rc, 0, "postcopy_rs_fault_thread_set_prepage");
        }
        let wall = touch(&region, threads, seed);
        assert_eq!(postcopy_rs_fault_thread_stop(ft), 0, "fault thread stop");
        // SAFETY: the fault thread is gone: end of file for the source.
        unsafe {
            libc::shutdown(emb.sock, libc::SHUT_WR);
        }
        (wall, source.join().expect("lib source"))
    });
    let n = region.len / PS;
    Run {
        pages_per_s: n as f64 / wall.as_secs_f64(),
        fault_ns: emb.cpu.load(Ordering::Relaxed) as f64 / n as f64,
        source_ns: source_cpu as f64 / n as f64,
    }
}

// ---------------------------------------------------------------------------
// The fault thread's own CPU per fault, without the kernel's fault path:
// fault messages for every page of a region, in a random order, wait in a
// pipe read as the userfaultfd, and each fault's page is placed at once, on
// the fault thread (a real UFFDIO_COPY into the registered region, which
// nothing touches).  The thread's CPU time over the faults is the
// read()s, the copies, and (lib) the library's per-fault and placement
// work.

/// A non-blocking pipe holding a fault message for each page of `region`,
/// in a random order: (read end, write end).
fn fault_pipe(region: &Region, seed: u64) -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors.
    let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) };
    assert_eq!(r, 0, "pipe2");
    // SAFETY: fresh descriptors that nothing else owns.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let pages = region.len / PS;
    let bytes = pages as usize * std::mem::size_of::<UffdMsg>();
    // SAFETY: F_SETPIPE_SZ only resizes our own pipe.
    let size = unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, bytes as c_int) };
    assert!(
        size >= bytes as c_int,
        "F_SETPIPE_SZ {bytes}: {}",
        std::io::Error::last_os_error()
    );
    let mut order: Vec<u64> = (0..pages).collect();
    let mut x = seed | 1;
    for i in (1..order.len()).rev() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        order.swap(i, (x % (i as u64 + 1)) as usize);
    }
    let msgs: Vec<UffdMsg> = order
        .iter()
        .map(|&i| UffdMsg {
            event: UFFD_EVENT_PAGEFAULT,
            address: region.addr + i * PS + 8,
            ptid: 1000 + (i % 8) as u32,
            ..UffdMsg::default()
        })
        .collect();
    // SAFETY: writing a live array of plain structs to our own pipe.
    let n = unsafe { libc::write(wr.as_raw_fd(), msgs.as_ptr().cast(), bytes) };
    assert_eq!(n, bytes as isize, "filling the fault pipe");
    (rd, wr)
}

/// Wait until the pipe is empty (the fault thread read every message).
fn drained(rd: RawFd) {
    loop {
        let mut left: c_int = 0;
        // SAFETY: FIONREAD writes one int.
        let r = unsafe { libc::ioctl(rd, libc::FIONREAD, &mut left) };
        assert_eq!(r, 0, "FIONREAD");
        if left == 0 {
            return;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// The plain libc fault loop both raw variants run: poll `fd` (a
/// userfaultfd, or a pipe of fault messages) and the `stop` eventfd, read
/// up to BATCH messages at a time, hand each page fault's address to
/// `on_fault`.  Returns this thread's CPU time in ns once `stop` fires.
fn raw_fault_loop(fd: RawFd, stop: RawFd, mut on_fault: impl FnMut(u64)) -> u64 {
    let t0 = thread_cpu_ns();
    let mut msgs = [UffdMsg::default(); BATCH];
    let sz = std::mem::size_of::<UffdMsg>();
    loop {
        let mut pfd = [
            libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: two live pollfds.
        if unsafe { libc::poll(pfd.as_mut_ptr(), 2, -1) } < 0 {
            continue;
        }
        if pfd[1].revents != 0 {
            return thread_cpu_ns() - t0;
        }
        // SAFETY: reading whole messages into a live array.
        let n = unsafe { libc::read(fd, msgs.as_mut_ptr().cast(), BATCH * sz) };
        if n <= 0 {
            continue;
        }
        for m in &msgs[..n as usize / sz] {
            if m.event == UFFD_EVENT_PAGEFAULT {
                on_fault(m.address);
            }
        }
    }
}

/// The fault thread's CPU per fault, ns, for variant `v` (0 raw, 1 lib,
/// 2 lib+pp) over `pages` faults.
fn thread_cpu_per_fault(uffd: RawFd, v: usize, pages: usize, src: u64, seed: u64) -> f64 {
    let region = Region::new(uffd, pages as u64 * PS);
    let (rd, _wr) = fault_pipe(&region, seed);
    let cpu = if v == 0 {
        let stop = eventfd();
        let (pipe, ev) = (rd.as_raw_fd(), stop.as_raw_fd());
        std::thread::scope(|s| {
            let t = s.spawn(move || {
                raw_fault_loop(pipe, ev, |addr| raw_copy(uffd, addr & !(PS - 1), src, PS))
            });
            drained(pipe);
            let one = 1u64;
            // SAFETY: 8 bytes from a live u64 to our eventfd.
            unsafe {
                libc::write(ev, std::ptr::from_ref(&one).cast(), 8);
            }
            t.join().expect("raw pipe thread")
        })
    } else {
        let map: Vec<AtomicU64> = (0..pages.div_ceil(64)).map(|_| AtomicU64::new(0)).collect();
        let emb = Embedder {
            view: PostcopyRsBlockView {
                host: region.addr as *mut c_void,
                used_length: region.len,
                page_size: PS,
                receivedmap: map.as_ptr().cast_mut().cast(),
                target_page_bits: 12,
                flags: POSTCOPY_RS_BLOCK_ZEROPAGE,
            },
            sock: -1,
            place_now: Some((uffd, src)),
            cpu: AtomicU64::new(0),
        };
        let cfg = lib_config(rd.as_raw_fd(), &emb);
        let mut ft: *mut PostcopyRsFaultThread = std::ptr::null_mut();
        // SAFETY: cfg and its callbacks, and emb, live until the stop below.
        let r = unsafe { postcopy_rs_fault_thread_start(&cfg, &mut ft) };
        assert_eq!(r, 0, "postcopy_rs_fault_thread_start");
        if v == 2 {
            // SAFETY: cb_range may be called with emb until the stop.
            let rc = unsafe { postcopy_rs_fault_thread_set_prepage(ft, PREPAGE, Some(cb_range)) };
            assert_eq!(rc, 0, "postcopy_rs_fault_thread_set_prepage");
        }
        drained(rd.as_raw_fd());
        assert_eq!(postcopy_rs_fault_thread_stop(ft), 0, "fault thread stop");
        emb.cpu.load(Ordering::Relaxed)
    };
    // Every page was placed, once.
    for i in 0..pages as u64 {
        // SAFETY: inside the region, present now.
        let b = unsafe { std::ptr::read_volatile((region.addr + i * PS) as *const u8) };
        assert_eq!(b, FILL, "page {i} not placed");
    }
    cpu as f64 / pages as f64
}

// ---------------------------------------------------------------------------
// The report.

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &x| {
            (a.min(x), b.max(x))
        })
}

fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok()?.parse().ok()
}

fn main() {
    let quick = !std::env::args().any(|a| a == "--bench")
        || std::env::var("STORM_QUICK").is_ok_and(|v| v == "1");
    let (counts, pages, reps): (&[usize], usize, usize) = if quick {
        (&[1, 4], 256, 1)
    } else {
        (
            &[1, 2, 4, 8, 16, 32, 64],
            env_usize("STORM_PAGES").unwrap_or(16384),
            env_usize("STORM_REPS").unwrap_or(11),
        )
    };
    let uffd = userfaultfd();
    let fd = uffd.as_raw_fd();
    // One page of FILL to copy from (and PREPAGE of them, for ranges).
    let src: Vec<u8> = vec![FILL; (PREPAGE as usize) * PS as usize];
    let src = src.as_ptr() as u64;
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let started = Instant::now();

    let mut out = String::new();
    writeln!(
        out,
        "## Fault storm (real userfaultfd)\n\nKernel {}, {cpus} CPUs.  N threads each read \
         their own 4 KiB pages in a random order ({pages} pages in all per run) from one \
         region on one userfaultfd; a fault thread writes one request per fault to a Unix \
         socket, a source thread places the pages.  *raw*: plain libc (poll + read of up to \
         {BATCH} uffd_msg + write; UFFDIO_COPY).  *lib*: the library through its C ABI \
         (fault thread, `postcopy_rs_place_pages`).  *lib+pp*: lib with pre-paging at \
         {PREPAGE} pages.  {reps} rotating reps per N; pages/s are medians; ratios are \
         lib/raw of the same rep, median [min-max] (above 1: the library is faster).  CPU: \
         the fault thread's and the source's, ns per page (median).\n",
        kernel.trim()
    )
    .unwrap();
    out.push_str(
        "| N | raw pages/s | lib pages/s | lib/raw | lib+pp pages/s | lib+pp/raw | fault CPU ns/page raw / lib / lib+pp | source CPU ns/page raw / lib |\n",
    );
    out.push_str("|---:|---:|---:|---|---:|---|---|---|\n");
    let per = |v: usize, threads: usize, seed: u64| -> Run {
        let pages = pages / threads * threads;
        match v {
            0 => run_raw(fd, threads, pages, src, seed),
            1 => run_lib(fd, threads, pages, src, seed, false),
            _ => run_lib(fd, threads, pages, src, seed, true),
        }
    };
    for &threads in counts {
        // Warm-up: one of each, not counted.
        if !quick {
            for v in 0..VARIANTS {
                per(v, threads, 1);
            }
        }
        let mut runs: [Vec<Run>; VARIANTS] = Default::default();
        for rep in 0..reps {
            for k in 0..VARIANTS {
                let v = (rep + k) % VARIANTS;
                runs[v].push(per(v, threads, 0x5eed + rep as u64));
            }
        }
        let col = |v: usize, f: fn(&Run) -> f64| -> Vec<f64> { runs[v].iter().map(f).collect() };
        let rate = |v: usize| median(&col(v, |r| r.pages_per_s));
        let ratio = |v: usize| -> String {
            let r: Vec<f64> = (0..reps)
                .map(|i| runs[v][i].pages_per_s / runs[0][i].pages_per_s)
                .collect();
            let (lo, hi) = min_max(&r);
            format!("{:.2}x [{lo:.2}-{hi:.2}]", median(&r))
        };
        let fcpu = |v: usize| median(&col(v, |r| r.fault_ns));
        let scpu = |v: usize| median(&col(v, |r| r.source_ns));
        let row = format!(
            "| {threads} | {:.0} | {:.0} | {} | {:.0} | {} | {:.0} / {:.0} / {:.0} | {:.0} / {:.0} |\n",
            rate(0),
            rate(1),
            ratio(1),
            rate(2),
            ratio(2),
            fcpu(0),
            fcpu(1),
            fcpu(2),
            scpu(0),
            scpu(1),
        );
        eprint!("{row}");
        out.push_str(&row);
    }
    let (cpu_pages, cpu_reps) = if quick {
        (256, 1)
    } else {
        (8192, env_usize("STORM_CPU_REPS").unwrap_or(15))
    };
    writeln!(
        out,
        "\n## The fault thread's CPU per fault\n\n{cpu_pages} fault messages for the pages \
         of a registered region, in a random order, wait in a pipe the fault thread reads as \
         its userfaultfd; each fault's page is placed at once on the fault thread (raw: \
         UFFDIO_COPY; lib: `postcopy_rs_place_pages` from `request_page`).  No thread \
         faults, so this is the fault thread's own work without the kernel's fault and wake \
         path.  Thread CPU time per fault, ns, median of {cpu_reps} rotating reps; lib-raw is \
         per rep, median [min-max].\n\n\
         | raw | lib | lib+pp | lib-raw | lib+pp-raw |\n|---:|---:|---:|---|---|"
    )
    .unwrap();
    let mut cpu: [Vec<f64>; VARIANTS] = Default::default();
    for rep in 0..cpu_reps + usize::from(!quick) {
        for k in 0..VARIANTS {
            let v = (rep + k) % VARIANTS;
            let ns = thread_cpu_per_fault(fd, v, cpu_pages, src, 0x5eed + rep as u64);
            // The first round warms up.
            if quick || rep > 0 {
                cpu[v].push(ns);
            }
        }
    }
    let diff = |v: usize| -> String {
        let d: Vec<f64> = (0..cpu[0].len()).map(|i| cpu[v][i] - cpu[0][i]).collect();
        let (lo, hi) = min_max(&d);
        format!("{:.0} [{lo:.0} to {hi:.0}]", median(&d))
    };
    let row = format!(
        "| {:.0} | {:.0} | {:.0} | {} | {} |\n",
        median(&cpu[0]),
        median(&cpu[1]),
        median(&cpu[2]),
        diff(1),
        diff(2)
    );
    eprint!("{row}");
    out.push_str(&row);
    writeln!(
        out,
        "\n{} variants: {}.  Whole bench: {:.0} s.",
        VARIANTS,
        NAMES.join(", "),
        started.elapsed().as_secs_f64()
    )
    .unwrap();
    print!("{out}");
    if quick {
        eprintln!("(quick run: values not judged; `cargo bench --bench storm` for the figures)");
    } else {
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("target dir")
            .join("storm-bench.md");
        std::fs::write(&path, &out).expect("write storm-bench.md");
        eprintln!("wrote {}", path.display());
    }
}
