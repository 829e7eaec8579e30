// SPDX-License-Identifier: GPL-2.0-or-later
//! Destination-side fault service latency on a real userfaultfd.
//!
//! For 1, 2 and 8 faulting threads, on 4 KiB anonymous pages and 2 MiB
//! hugetlbfs pages, it times each fault from the thread's first touch of a
//! missing page to its resume, and reports p50, p99 and faults/s for:
//! - `floor`: no library: one plain thread blocks in `poll()` + `read()` of one
//!   `uffd_msg` and does the `UFFDIO_COPY` itself;
//! - `ours`: the library's `FaultThread`, whose `request_page` hands the
//!   offset over a channel to a "source" thread that places the page with
//!   `placement::place_pages`, as QEMU's incoming migration does;
//! - `hop`, for reference: the floor loop, but the copy is done by a source
//!   thread it sends the address to over the same kind of channel: ours'
//!   thread structure without the library, so ours/hop is the library's
//!   own share of the gap to the floor;
//! - `untimed`: ours with the fault-latency histogram off, so that
//!   ours/untimed is what timing every fault costs.
//!
//! The four run in rotation, in the same process, on fresh mappings, and
//! each `ours` figure is given as a ratio to the floor of its case.
//!
//! A second table times placing 64 KiB runs (16 pages of 4 KiB) over 64 MiB
//! with one `place_pages(.., 16)` against sixteen `place_pages(.., 1)`.
//!
//! The tables go to stdout and to `target/fault-bench.md`, which
//! `scripts/cargo-bench-report.py` appends to its report.  Without `--bench`
//! (e.g. `cargo test --benches`) it only runs a quick smoke pass.
//!
//! Needs root (hugepages are reserved through
//! /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages, and restored).
#![allow(missing_docs)]

use postcopy_rs::addr::{BlockHandle, HostAddr};
use postcopy_rs::fault_thread::{FaultHandler, FaultThread, Resolved};
use postcopy_rs::latency;
use postcopy_rs::placement::{place_pages, Block};
use postcopy_rs::receivedmap::ReceivedMap;
use postcopy_rs::uffd::{
    self, UffdMsg, UffdioCopy, Userfaultfd, UFFDIO_COPY, UFFD_EVENT_PAGEFAULT,
    UFFD_FEATURE_THREAD_ID,
};
use postcopy_rs::{Error, Result};
use std::fmt::Write as _;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Barrier};
use std::time::{Duration, Instant};

const KIB4: u64 = 4096;
/// floor, hop, ours, ours untimed.
const VARIANTS: usize = 4;
const MIB2: u64 = 2 << 20;
const HUGEPAGES_SYSFS: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages";
const FREE_HUGEPAGES_SYSFS: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";
/// The byte every source page is filled with; touchers check it.
const FILL: u8 = 0x5a;

/// How much to run.
#[derive(Clone, Copy)]
struct Plan {
    /// Alternating floor/ours repetitions per case.
    reps: usize,
    /// Faults per repetition, per page size.
    faults_4k: usize,
    faults_2m: usize,
    /// Repetitions of each batching variant.
    batch_reps: usize,
    /// Bytes of registered memory for the batching test.
    batch_bytes: u64,
}

const FULL: Plan = Plan {
    reps: 12,
    faults_4k: 8192,
    faults_2m: 256,
    batch_reps: 7,
    batch_bytes: 64 << 20,
};

const SMOKE: Plan = Plan {
    reps: 1,
    faults_4k: 64,
    faults_2m: 8,
    batch_reps: 1,
    batch_bytes: 1 << 20,
};

// ---------------------------------------------------------------------------
// Memory.

/// An anonymous mapping, unmapped on drop.
struct Mapping {
    addr: u64,
    len: u64,
}

impl Mapping {
    fn new(len: u64, huge: bool) -> std::io::Result<Self> {
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        if huge {
            flags |= libc::MAP_HUGETLB | libc::MAP_HUGE_2MB;
        }
        // SAFETY: a fresh anonymous mapping; nothing existing is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        if !huge {
            // QEMU does this for postcopy: faults and copies of 4 KiB pages.
            // SAFETY: advice on our own fresh mapping.
            unsafe {
                libc::madvise(p, len as usize, libc::MADV_NOHUGEPAGE);
            }
        }
        Ok(Mapping {
            addr: p as u64,
            len,
        })
    }

    fn ptr(&self) -> *mut u8 {
        self.addr as *mut u8
    }

    fn bytes(&self) -> &[u8] {
        // SAFETY: our own live mapping of `len` bytes, only read through
        // this slice while it is borrowed.
        unsafe { std::slice::from_raw_parts(self.ptr(), self.len as usize) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: our own mapping, not used after this.
        unsafe {
            libc::munmap(self.ptr().cast(), self.len as usize);
        }
    }
}

/// A source buffer of `len` bytes of FILL (ordinary memory, pre-faulted).
fn source(len: u64) -> Mapping {
    let m = Mapping::new(len, false).expect("mmap source buffer");
    // SAFETY: the mapping is `len` writable bytes.
    unsafe {
        std::ptr::write_bytes(m.ptr(), FILL, len as usize);
    }
    m
}

/// Raises `nr_hugepages` for the bench and restores the old value on drop.
struct HugepageReservation {
    old: Option<u64>,
}

fn read_sysfs(path: &str) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

impl HugepageReservation {
    /// Make sure `want` free 2 MiB pages exist.  Err: why not.
    fn new(want: u64) -> std::result::Result<Self, String> {
        let old =
            read_sysfs(HUGEPAGES_SYSFS).ok_or_else(|| format!("cannot read {HUGEPAGES_SYSFS}"))?;
        let free = read_sysfs(FREE_HUGEPAGES_SYSFS).unwrap_or(0);
        if free >= want {
            return Ok(HugepageReservation { old: None });
        }
        let target = old + (want - free);
        let guard = HugepageReservation { old: Some(old) };
        std::fs::write(HUGEPAGES_SYSFS, format!("{target}\n"))
            .map_err(|e| format!("cannot write {target} to {HUGEPAGES_SYSFS}: {e}"))?;
        let got = read_sysfs(FREE_HUGEPAGES_SYSFS).unwrap_or(0);
        if got < want {
            return Err(format!(
                "the kernel gave {got} free 2 MiB pages of the {want} asked for"
            ));
        }
        Ok(guard)
    }
}

impl Drop for HugepageReservation {
    fn drop(&mut self) {
        if let Some(old) = self.old {
            if let Err(e) = std::fs::write(HUGEPAGES_SYSFS, format!("{old}\n")) {
                eprintln!("WARNING: could not restore {HUGEPAGES_SYSFS} to {old}: {e}");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Faulting threads.

/// Touch `pages` pages of `page_size` from `base`, split over `threads`
/// threads (contiguous chunks), while another thread serves the faults.  Returns
/// each fault's touch-to-resume latency in ns, and the wall time.
fn run_touchers(base: u64, page_size: u64, pages: usize, threads: usize) -> (Vec<u64>, Duration) {
    let barrier = Barrier::new(threads + 1);
    let per = pages / threads;
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || {
                    let mut lat = Vec::with_capacity(per);
                    barrier.wait();
                    for i in t * per..(t + 1) * per {
                        let p = (base + i as u64 * page_size) as *const u8;
                        let t0 = Instant::now();
                        // SAFETY: p is inside the registered mapping; the
                        // read blocks until the page is placed.
                        let v = unsafe { std::ptr::read_volatile(p) };
                        let dt = t0.elapsed();
                        assert_eq!(v, FILL, "page {i} has the wrong content");
                        lat.push(dt.as_nanos() as u64);
                    }
                    lat
                })
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        let mut all = Vec::with_capacity(per * threads);
        for h in handles {
            all.extend(h.join().expect("toucher panicked"));
        }
        (all, t0.elapsed())
    })
}

// ---------------------------------------------------------------------------
// Floor: one thread, poll + read one message + UFFDIO_COPY.

/// `UFFDIO_COPY` of one page, as a minimal handler does it.
fn raw_copy(uffd: BorrowedFd<'_>, dst: u64, src: u64, page_size: u64) {
    loop {
        let mut c = UffdioCopy {
            dst,
            src,
            len: page_size,
            mode: 0,
            copy: 0,
        };
        // SAFETY: src is page_size readable bytes; the kernel checks dst.
        match unsafe { uffd::ioctl(uffd, UFFDIO_COPY, &mut c) } {
            Ok(()) => return,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {
                uffd::wake(uffd, dst, page_size).expect("UFFDIO_WAKE");
                return;
            }
            Err(e) => panic!("UFFDIO_COPY at {dst:#x}: {e}"),
        }
    }
}

/// `poll()` + `read()` of one `uffd_msg`, then the copy: here (`hop` None), or
/// by a source thread the page address is sent to.
fn floor_server(
    uffd: BorrowedFd<'_>,
    page_size: u64,
    src: u64,
    stop: &AtomicBool,
    hop: Option<mpsc::Sender<u64>>,
) {
    let sz = std::mem::size_of::<UffdMsg>();
    loop {
        let mut pfd = libc::pollfd {
            fd: uffd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one live pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, 10) };
        if r <= 0 {
            if stop.load(Ordering::Acquire) {
                return;
            }
            continue;
        }
        let mut msg = UffdMsg::default();
        // SAFETY: reading one uffd_msg into a live, correctly sized struct.
        let n = unsafe { libc::read(uffd.as_raw_fd(), std::ptr::from_mut(&mut msg).cast(), sz) };
        if n != sz as isize || msg.event != UFFD_EVENT_PAGEFAULT {
            continue;
        }
        let dst = msg.pf_address & !(page_size - 1);
        match &hop {
            None => raw_copy(uffd, dst, src, page_size),
            Some(tx) => tx.send(dst).expect("hop source thread"),
        }
    }
}

fn run_floor(
    uffd: BorrowedFd<'_>,
    region: &Mapping,
    page_size: u64,
    threads: usize,
    src: u64,
    hop: bool,
) -> Sample {
    let pages = (region.len / page_size) as usize;
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let tx = hop.then(|| {
            let (tx, rx) = mpsc::channel::<u64>();
            s.spawn(move || {
                rx.iter()
                    .for_each(|dst| raw_copy(uffd, dst, src, page_size))
            });
            tx
        });
        let stop = &stop;
        let server = s.spawn(move || floor_server(uffd, page_size, src, stop, tx));
        let (lat, wall) = run_touchers(region.addr, page_size, pages, threads);
        stop.store(true, Ordering::Release);
        server.join().expect("floor server panicked");
        Sample { lat, wall }
    })
}

// ---------------------------------------------------------------------------
// Ours: FaultThread -> channel -> source thread -> place_pages.

struct Handler {
    block: Block,
    tx: mpsc::Sender<u64>,
}

impl FaultHandler for Handler {
    fn resolve(&mut self, addr: HostAddr) -> Result<Resolved> {
        let addr = addr.get();
        if addr >= self.block.host && addr - self.block.host < self.block.len {
            Ok(Resolved {
                handle: BlockHandle::new(0),
                block: self.block.clone(),
            })
        } else {
            Err(Error::OutOfRange { addr, len: 1 })
        }
    }

    fn request_page(&mut self, _handle: BlockHandle, offset: u64, _addr: HostAddr) -> Result<()> {
        self.tx
            .send(offset)
            .map_err(|_| Error::State("the source thread is gone"))
    }
}

fn run_ours(
    uffd: BorrowedFd<'_>,
    region: &Mapping,
    page_size: u64,
    threads: usize,
    src: &[u8],
) -> Sample {
    let pages = (region.len / page_size) as usize;
    let map = ReceivedMap::new((region.len / 4096) as usize);
    let block = Block::new(
        HostAddr::new(region.addr),
        region.len,
        page_size,
        12,
        Some(map),
        page_size == KIB4,
    )
    .expect("block geometry");
    let (tx, rx) = mpsc::channel::<u64>();
    let handler_block = block.clone();
    std::thread::scope(|s| {
        let source = s.spawn(move || {
            for off in rx {
                place_pages(uffd, &block, HostAddr::new(block.host + off), src, 1)
                    .expect("place_pages");
            }
        });
        let handler = Handler {
            block: handler_block,
            tx,
        };
        let ft =
            FaultThread::start(uffd, &[], None, Box::new(handler)).expect("FaultThread::start");
        let (lat, wall) = run_touchers(region.addr, page_size, pages, threads);
        // Dropping the handler with the thread closes the channel.
        ft.stop().expect("FaultThread::stop");
        source.join().expect("source thread panicked");
        Sample { lat, wall }
    })
}

// ---------------------------------------------------------------------------
// Statistics and the report.

struct Sample {
    lat: Vec<u64>,
    wall: Duration,
}

#[derive(Default)]
struct Stats {
    lat: Vec<u64>,
    wall: Duration,
}

impl Stats {
    fn add(&mut self, s: Sample) {
        self.lat.extend(s.lat);
        self.wall += s.wall;
    }

    fn finish(&mut self) {
        self.lat.sort_unstable();
    }

    fn pct(&self, p: usize) -> f64 {
        let i = (self.lat.len() * p / 100).min(self.lat.len() - 1);
        self.lat[i] as f64 / 1000.0
    }

    fn rate(&self) -> f64 {
        self.lat.len() as f64 / self.wall.as_secs_f64()
    }
}

fn verdict(ratio: f64) -> &'static str {
    if ratio <= 1.5 {
        "ok"
    } else {
        "**over 1.5x**"
    }
}

/// Register a fresh mapping of `len` bytes with `uffd`.
fn fresh(uffd: BorrowedFd<'_>, len: u64, huge: bool) -> std::result::Result<Mapping, String> {
    let m = Mapping::new(len, huge).map_err(|e| format!("mmap of {len} bytes: {e}"))?;
    let mut reg = uffd::UffdioRegister {
        range: uffd::UffdioRange {
            start: m.addr,
            len: m.len,
        },
        mode: uffd::UFFDIO_REGISTER_MODE_MISSING,
        ioctls: 0,
    };
    // SAFETY: UFFDIO_REGISTER takes a uffdio_register; our own mapping.
    unsafe { uffd::ioctl(uffd, uffd::UFFDIO_REGISTER, &mut reg) }
        .map_err(|e| format!("UFFDIO_REGISTER: {e}"))?;
    Ok(m)
}

/// One case: a table row.
fn bench_case(
    uffd: BorrowedFd<'_>,
    plan: Plan,
    threads: usize,
    huge: bool,
) -> std::result::Result<String, String> {
    let (page_size, faults, label) = if huge {
        (MIB2, plan.faults_2m, "2 MiB hugetlbfs")
    } else {
        (KIB4, plan.faults_4k, "4 KiB anon")
    };
    let faults = faults / threads * threads;
    let len = faults as u64 * page_size;
    let src = source(page_size);
    // 0: floor, 1: floor + hop, 2: ours, 3: ours without fault timing.
    let once = |variant: usize| -> std::result::Result<Sample, String> {
        let m = fresh(uffd, len, huge)?;
        Ok(match variant {
            0 => run_floor(uffd, &m, page_size, threads, src.addr, false),
            1 => run_floor(uffd, &m, page_size, threads, src.addr, true),
            2 => run_ours(uffd, &m, page_size, threads, src.bytes()),
            _ => {
                latency::set_enabled(false);
                let s = run_ours(uffd, &m, page_size, threads, src.bytes());
                latency::set_enabled(true);
                s
            }
        })
    };

    // Warm-up: one untimed round of each.
    for v in 0..VARIANTS {
        once(v)?;
    }
    let mut st: [Stats; VARIANTS] = Default::default();
    for rep in 0..plan.reps {
        // Rotate which goes first, so drift hits all alike.
        for k in 0..VARIANTS {
            let v = (rep + k) % VARIANTS;
            st[v].add(once(v)?);
        }
    }
    st.iter_mut().for_each(Stats::finish);
    let [floor, hop, ours, untimed] = &st;
    let r50 = ours.pct(50) / floor.pct(50);
    let r99 = ours.pct(99) / floor.pct(99);
    let rrate = ours.rate() / floor.rate();
    Ok(format!(
        "| {label} | {threads} | {} | {:.1} | {:.1} | {:.0} | {:.1} | {:.1} | {:.0} | **{r50:.2}x** {} | {r99:.2}x | {rrate:.2}x | {:.1} | {:.0} | {:.2}x | {:.1} | {:.2}x | {:.2}x |\n",
        floor.lat.len(),
        floor.pct(50),
        floor.pct(99),
        floor.rate(),
        ours.pct(50),
        ours.pct(99),
        ours.rate(),
        verdict(r50),
        hop.pct(50),
        hop.rate(),
        ours.pct(50) / hop.pct(50),
        untimed.pct(50),
        ours.pct(50) / untimed.pct(50),
        ours.rate() / untimed.rate(),
    ))
}

/// Place `plan.batch_bytes` of 4 KiB pages in 64 KiB runs, with sixteen
/// `place_pages(.., 1)` or one `place_pages(.., 16)` per run: ns per page,
/// median over the repetitions.  Nothing faults: this is placement alone.
fn bench_batching(uffd: BorrowedFd<'_>, plan: Plan) -> String {
    let pages = plan.batch_bytes / KIB4;
    let src = source(16 * KIB4);
    let mut results = [(1u64, Vec::new()), (16u64, Vec::new())];
    for rep in 0..plan.batch_reps {
        for k in 0..2 {
            // Alternate which goes first.
            let (per_call, times) = &mut results[(k + rep) % 2];
            let m = fresh(uffd, plan.batch_bytes, false).expect("batching mapping");
            let map = ReceivedMap::new(pages as usize);
            let block = Block::new(
                HostAddr::new(m.addr),
                m.len,
                KIB4,
                12,
                Some(map.clone()),
                true,
            )
            .expect("block");
            let t0 = Instant::now();
            for run in (m.addr..m.addr + m.len).step_by(16 * KIB4 as usize) {
                for off in (0..16 * KIB4).step_by((*per_call * KIB4) as usize) {
                    place_pages(
                        uffd,
                        &block,
                        HostAddr::new(run + off),
                        &src.bytes()[off as usize..],
                        *per_call,
                    )
                    .expect("place_pages");
                }
            }
            let dt = t0.elapsed();
            times.push(dt.as_nanos() as f64 / pages as f64);
            // SAFETY: our own mapping, every page of it now present.
            let last = unsafe { std::ptr::read_volatile(m.ptr().add(m.len as usize - 1)) };
            assert_eq!(last, FILL);
            assert!((0..pages as usize).all(|i| map.test(i)));
        }
    }
    let mut med = |i: usize| {
        let v = &mut results[i].1;
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let one = med(0);
    let sixteen = med(1);
    format!(
        "| 16 x `place_pages(.., 1)` | {} | {one:.0} | 1.00x |\n\
         | 1 x `place_pages(.., 16)` | {} | {sixteen:.0} | {:.2}x |\n",
        pages,
        pages / 16,
        one / sixteen
    )
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let plan = if full { FULL } else { SMOKE };
    let started = Instant::now();
    let uffd = Userfaultfd::new(UFFD_FEATURE_THREAD_ID).expect(
        "userfaultfd: this bench needs a kernel with userfaultfd and the right to use it (root)",
    );
    let fd = uffd.as_fd();
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);

    let mut out = String::new();
    let mut notes = String::new();
    out.push_str("## Fault service latency (real userfaultfd)\n\n");
    writeln!(
        out,
        "Kernel {}, {cpus} CPUs.  Latency: from a thread's first touch of a missing page to its \
         resume, in µs.  *floor*: one plain thread, poll() + read() of one uffd_msg + \
         UFFDIO_COPY, no library.  *ours*: `FaultThread` -> `request_page` -> channel -> source \
         thread -> `place_pages`.  Ratios are ours / floor (target: p50 ratio <= 1.5x; for \
         faults/s, above 1 is better).  *hop* (for reference, not the target): the floor loop \
         sending the address over the same kind of channel to a source thread that does the \
         raw UFFDIO_COPY, i.e. ours' thread structure without the library; ours/hop is the \
         library's own share.  *untimed*: ours with the fault-latency histogram off \
         (`latency::set_enabled(false)`, which only this bench calls); timing/untimed is what \
         timing every fault costs (for faults/s, below 1 is a cost).  {} rotating repetitions \
         per case, fresh mappings each.\n",
        kernel(),
        plan.reps
    )
    .unwrap();
    out.push_str(
        "| pages | threads | faults | floor p50 | floor p99 | floor faults/s | ours p50 | ours p99 | ours faults/s | p50 ratio | p99 ratio | faults/s ratio | hop p50 | hop faults/s | ours/hop p50 | untimed p50 | timing/untimed p50 | timing/untimed faults/s |\n",
    );
    out.push_str(
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );

    for threads in [1, 2, 8] {
        let row = bench_case(fd, plan, threads, false)
            .unwrap_or_else(|e| panic!("4 KiB case with {threads} threads failed: {e}"));
        eprint!("{row}");
        out.push_str(&row);
    }

    // Hugepages: one repetition's worth at a time (each round unmaps its own).
    let mut skip = |threads: usize, why: &str, table: &mut String| {
        eprintln!("\n*** SKIPPED: 2 MiB hugetlbfs pages, {threads} threads: {why} ***\n");
        writeln!(
            table,
            "| 2 MiB hugetlbfs | {threads} | SKIPPED | | | | | | | | | | | | | | | |"
        )
        .unwrap();
        writeln!(
            notes,
            "- **SKIPPED** 2 MiB hugetlbfs, {threads} threads: {why}"
        )
        .unwrap();
    };
    match HugepageReservation::new(plan.faults_2m as u64 + 8) {
        Ok(_restore_on_drop) => {
            for threads in [1, 2, 8] {
                match bench_case(fd, plan, threads, true) {
                    Ok(row) => {
                        eprint!("{row}");
                        out.push_str(&row);
                    }
                    Err(e) => skip(threads, &e, &mut out),
                }
            }
        }
        Err(e) => {
            for threads in [1, 2, 8] {
                skip(threads, &e, &mut out);
            }
        }
    }
    if !notes.is_empty() {
        writeln!(out, "\n{notes}").unwrap();
    }

    writeln!(
        out,
        "\n## Batched placement\n\n64 KiB runs (16 pages of 4 KiB) placed over {} MiB of registered \
         memory, nothing faulting; ns per 4 KiB page, median of {} runs.\n",
        plan.batch_bytes >> 20,
        plan.batch_reps
    )
    .unwrap();
    out.push_str("| per 64 KiB run | calls | ns per 4 KiB page | speed-up |\n");
    out.push_str("|---|---:|---:|---:|\n");
    out.push_str(&bench_batching(fd, plan));
    writeln!(
        out,
        "\nWhole bench: {:.0} s.",
        started.elapsed().as_secs_f64()
    )
    .unwrap();

    print!("{out}");
    if full {
        let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
            .parent()
            .expect("target dir")
            .join("fault-bench.md");
        std::fs::write(&path, &out).expect("write fault-bench.md");
        eprintln!("wrote {}", path.display());
    } else {
        eprintln!("(smoke run: `cargo bench --bench fault` passes --bench for the real figures)");
    }
}
