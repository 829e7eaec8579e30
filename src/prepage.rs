// SPDX-License-Identifier: GPL-2.0-or-later
//! Destination side: adaptive pre-paging in the fault thread.
//!
//! QEMU's destination asks the source for exactly the host page that
//! faulted.  A page request (`MIG_RP_MSG_REQ_PAGES`) carries a length, and
//! the source queues whatever range of a block it is asked for, so the
//! destination may ask for the faulting page *and the next ones* in one
//! message: no protocol change, and it works against an unpatched source.
//!
//! # The policy
//!
//! Faults are grouped into **streams**: a stream is a run of faults that
//! walks forward through one block (one per vCPU sweeping its memory,
//! say).  Each stream has a **window** `W`, in host pages: a request for a
//! fault in that stream asks for the faulting page and up to `W - 1`
//! following pages, in one message that *starts at the faulting page*, so
//! pre-paging never delays the page a thread waits for.  The run stops
//! early at the block's end, at a page already received (the receivedmap,
//! when the embedder gave one) or at a page already in flight (the fault
//! thread's table).  Pre-paged pages go into that table, so the range is
//! not requested again page by page.  But the first fault on a page that
//! was only pre-paged asks for that page again, alone (later ones are
//! de-duplicated): QEMU 10.2's source, with postcopy-preempt, may leave
//! the end of a range unsent (`ram_save_queue_pages()` counts a page that
//! its background stream is sending as one of the range's and does not
//! move past it), and the thread waiting on such a page never faults
//! again: it waited up to 4.3 s for the background stream.  A page the
//! source sent already is clean there, and the second request is
//! dropped.
//!
//! - A fault that matches no stream starts a new one with `W = 1`: no
//!   pre-paging.  So random faults never pre-page.
//! - **Hits** grow the window (doubled, once per run, up to the maximum
//!   the embedder set): a fault on a pre-paged page still in flight (the
//!   guest wanted it; the request was out before the guest's own), or the
//!   stream's next fault being the first missing page after its run (the
//!   guest walked past the run: it was too short).
//! - **Bytes** bound it too: a request carries at most
//!   [`MAX_PREPAGE_BYTES`] after the faulting page, so one page ahead on
//!   2 MiB hugepages, whatever the window says (the window, and the
//!   `max_window` counter, still follow the stream).
//! - **Misses** shrink it to one page: a stream whose run is not hit
//!   before the stream is replaced or the thread pauses is dropped, and a
//!   fault there later starts a new stream at `W = 1`.
//! - **Replacement** protects streams that grew: a new stream replaces the
//!   least recently used stream *still at `W = 1`* while at least half of
//!   the [`STREAMS`] are at `W = 1`, and the least recently used grown one
//!   otherwise.  Every random fault starts a stream, so under plain LRU a
//!   thread's random reads (the `mix` pattern: 64 random reads, then 64
//!   pages of a sweep) replaced the sweeping thread's stream within
//!   [`STREAMS`] faults, and each run of its sweep began again at one page.
//!   Half of the table stays for new streams, so grown streams that have
//!   died cannot keep a new one from growing.
//!
//! # The gate, and streams per thread
//!
//! Random faults continue no stream, yet each scanned the table and
//! replaced a stream.  So after `CLOSE_AFTER` faults in a row that
//! continued no stream and hit no pre-paged page, the planner **closes**:
//! a fault then only notes where its thread (the `uffd_msg`'s thread id)
//! faulted, in a small direct-mapped table, and asks for one page.  It
//! **opens** again when a thread's fault is the page after its previous
//! one, on a hit on a pre-paged page still in flight, or when a probe (the
//! full planner, every `PROBE_EVERY`th fault while closed) finds a
//! stream continued.  Streams, windows and open runs are kept while
//! closed.  `CLOSE_AFTER` is longer than the `mix` pattern's bursts of
//! random reads, so a sweep between them keeps its window.
//!
//! While open, each thread's latest stream is tried first, so a thread
//! walking its memory finds its stream in O(1); only faults that do not
//! continue it scan the table.
//!
//! # What was taken from where
//!
//! - CRIU lazy-pages (`criu/uffd.c`): one table of requests in flight that
//!   both the demand faults and the bulk transfers go through, so that a
//!   fault in a range being transferred is not asked for again; and a
//!   transfer size that grows while it goes on being useful and drops back
//!   to its small default on a sign that it is not (CRIU's background
//!   `xfer_len` grows by 64 KiB per transfer while no fault comes and is
//!   reset on each fault).  Here growth is per stream and doubles, as a
//!   fault thread only learns of usefulness from faults.
//! - Hines & Gopalan, "Post-copy based live virtual machine migration
//!   using adaptive pre-paging and dynamic self-ballooning" (VEE'09): pre-page
//!   around the *latest fault* (their "pivot", which moves to each new
//!   fault: the spatial locality of the guest's accesses), never send a
//!   page twice, and let demand faults pre-empt the pre-paging.  Their
//!   source pushes pages both ways from the pivot ("bubbling"); a
//!   destination that pulls through the unchanged request message can
//!   only ask forward of the fault and keep the faulting page first.
//!
//! # The counters, and why there is no "wasted" one
//!
//! A pre-paged page that arrives before the guest touches it never
//! faults, so nobody can tell whether the guest used it: "wasted" is not
//! measurable.  [`Stats`] therefore counts what is seen:
//! pages pre-paged, pages confirmed used (faulted on while in flight, or
//! in a run the guest walked past, which is an estimate: the guest may
//! have skipped some of its pages), and pages *unconfirmed* (their run
//! was dropped without a hit).  Unconfirmed plus the pages of runs still
//! open at the end bound the waste from above.

use crate::addr::{BlockHandle, HostAddr};
use crate::error::Result;
use crate::placement::Block;
use crate::stats::Counters;
use std::collections::HashSet;

/// Largest window accepted, in host pages.
pub const MAX_WINDOW: u32 = 1024;
/// Streams followed at once; past it the least recently used is dropped.
pub const STREAMS: usize = 32;
/// Most bytes a request may ask for after the faulting page, whatever the
/// window: one page ahead on 2 MiB hugepages.  A stock source with
/// postcopy-preempt sends the whole range before it reads the next
/// request, so pre-paged pages delay the next fault's page: a window of
/// 16 on 2 MiB pages (30 MiB ahead) made sequential blocktime 8.6x stock
/// QEMU's, and even one page ahead saved requests but not blocktime
/// (0.93x).  The series' source (patch "send only the first page of a
/// request from the return path") sends the pages ahead on the precopy
/// channel instead: one page ahead then cut it to about 0.4x
/// (docs/BENCHMARKS.md).  More than one is left unmeasured against a
/// stock source.
pub const MAX_PREPAGE_BYTES: u64 = 2 << 20;
/// Faults in a row that continue no stream (and hit nothing pre-paged)
/// after which the planner closes (see the module's comment).
const CLOSE_AFTER: u32 = 256;
/// While closed, every this many faults run the full planner, as a probe.
const PROBE_EVERY: u32 = 64;
/// Slots of the per-thread tables (direct-mapped by thread id).
const THREAD_SLOTS: usize = 64;

/// Sends one page request for a range.
pub trait RangeRequester: Send {
    /// Ask the source for `len` bytes (whole host pages, at least two) of
    /// block `handle` from block offset `offset`, the faulting page (at
    /// `addr`) first.  Returns the bytes actually requested from `offset`
    /// (0: all of them; fewer is allowed, the faulting page always
    /// counts), or an error if the return path is broken.
    fn request_range(
        &mut self,
        handle: BlockHandle,
        offset: u64,
        len: u64,
        addr: HostAddr,
    ) -> Result<u64>;
}

/// How to pre-page, set on a running fault thread.
pub struct Settings {
    /// The window's maximum, in host pages (2..=[`MAX_WINDOW`]).
    pub max_pages: u32,
    /// Sends the requests of more than one page.
    pub requester: Box<dyn RangeRequester>,
}

/// Pre-paging counters (the C ABI's `PostcopyRsPrepageStats`).  Pages are
/// host pages.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Page requests that carried pre-paged pages (more than one page).
    pub requests: u64,
    /// Pages pre-paged: requested beyond the faulting pages.
    pub pages: u64,
    /// Pre-paged pages a thread then faulted on while still in flight.
    pub hits_in_flight: u64,
    /// Pre-paged pages of runs the guest walked past (the stream's next
    /// fault was the first missing page after the run), not counted as
    /// in-flight hits: used most likely, but not observed page by page.
    pub hits_walked_past: u64,
    /// Pre-paged pages of runs dropped with no hit (stream replaced, or
    /// the fault thread paused): perhaps used without a fault, perhaps
    /// wasted.
    pub unconfirmed: u64,
    /// Streams started (faults that continued no stream).
    pub streams: u64,
    /// Times a window doubled.
    pub window_grows: u64,
    /// The largest window reached, in pages (a maximum, not a sum).
    pub max_window: u64,
}

const NCOUNTERS: usize = 8;

#[derive(Clone, Copy)]
enum Counter {
    Requests,
    Pages,
    HitsInFlight,
    HitsWalkedPast,
    Unconfirmed,
    Streams,
    WindowGrows,
    MaxWindow,
}

static STATS: Counters<NCOUNTERS> = Counters::new();

fn add(c: Counter, n: u64) {
    STATS.add(c as usize, n);
}

/// The pre-paging counters now.
pub fn snapshot() -> Stats {
    let v = STATS.load();
    Stats {
        requests: v[Counter::Requests as usize],
        pages: v[Counter::Pages as usize],
        hits_in_flight: v[Counter::HitsInFlight as usize],
        hits_walked_past: v[Counter::HitsWalkedPast as usize],
        unconfirmed: v[Counter::Unconfirmed as usize],
        streams: v[Counter::Streams as usize],
        window_grows: v[Counter::WindowGrows as usize],
        max_window: v[Counter::MaxWindow as usize],
    }
}

/// Zero the pre-paging counters.
pub fn reset_stats() {
    STATS.reset();
}

/// One stream of faults and its latest run.
#[derive(Debug, Clone)]
struct Stream {
    handle: BlockHandle,
    page_size: u64,
    /// The latest run's pre-paged pages are `[start, next)` (empty with a
    /// window of one); `next` is where the stream is expected to fault.
    start: u64,
    next: u64,
    window: u32,
    /// The window grew during the current run already.
    grown: bool,
    used: u64,
}

/// How a run ends.
#[derive(Clone, Copy)]
enum Close {
    WalkedPast,
    Dropped,
}

/// Where a thread last faulted, and the stream it last used.
#[derive(Debug, Clone, Copy)]
struct ThreadSlot {
    tid: u32,
    handle: BlockHandle,
    /// The page after its latest fault (0: none yet).
    next: u64,
    /// Index in `streams` of the thread's latest stream.
    stream: Option<usize>,
}

impl Default for ThreadSlot {
    fn default() -> Self {
        ThreadSlot {
            tid: 0,
            handle: BlockHandle::new(0),
            next: 0,
            stream: None,
        }
    }
}

/// The fault thread's pre-paging state.  Off (every request one page)
/// until [`Prepager::configure`] is given settings.
pub struct Prepager {
    settings: Option<Settings>,
    streams: Vec<Stream>,
    /// Pre-paged pages (host addresses) of open runs not yet hit.
    pending: HashSet<u64>,
    /// The stream [`Prepager::plan`] chose for the request being made.
    planned: Option<usize>,
    /// [`Prepager::plan`] was closed for the request being made: it
    /// opens no run.
    gated: bool,
    clock: u64,
    /// Faults in a row that continued no stream and hit nothing.
    misses: u32,
    /// Faults since the planner closed (it is open while `misses` is
    /// below `CLOSE_AFTER`).
    closed_for: u32,
    threads: [ThreadSlot; THREAD_SLOTS],
}

impl Default for Prepager {
    fn default() -> Self {
        Prepager {
            settings: None,
            streams: Vec::new(),
            pending: HashSet::new(),
            planned: None,
            gated: false,
            clock: 0,
            misses: 0,
            closed_for: 0,
            threads: [ThreadSlot::default(); THREAD_SLOTS],
        }
    }
}

impl Prepager {
    /// Turn pre-paging on with `settings`, or off with None.  Open runs
    /// are dropped either way.
    pub fn configure(&mut self, settings: Option<Settings>) {
        self.reset();
        self.settings = settings.filter(|s| s.max_pages > 1);
    }

    /// Whether pre-paging is on.
    pub fn enabled(&self) -> bool {
        self.settings.is_some()
    }

    /// The window of each stream, most recently used first (for tests).
    pub fn windows(&self) -> Vec<u32> {
        let mut v: Vec<_> = self.streams.iter().map(|s| (s.used, s.window)).collect();
        v.sort_unstable_by_key(|&(used, _)| std::cmp::Reverse(used));
        v.into_iter().map(|(_, w)| w).collect()
    }

    /// Forget every stream and open run (the fault thread paused: requests
    /// made before may be lost with the old channel).
    pub fn reset(&mut self) {
        for i in (0..self.streams.len()).rev() {
            self.close(i, Close::Dropped);
        }
        self.streams.clear();
        self.pending.clear();
        self.planned = None;
        self.open();
        self.threads = [ThreadSlot::default(); THREAD_SLOTS];
    }

    /// Whether the planner is open (see the module's comment).
    pub fn is_open(&self) -> bool {
        self.misses < CLOSE_AFTER
    }

    fn open(&mut self) {
        self.misses = 0;
        self.closed_for = 0;
    }

    /// A fault on `page` (block `handle`), which is in flight: a hit if it
    /// was pre-paged and not hit before.
    pub fn fault_in_flight(&mut self, handle: BlockHandle, page: u64) {
        if !self.pending.remove(&page) {
            return;
        }
        self.open();
        add(Counter::HitsInFlight, 1);
        self.clock += 1;
        let (clock, max) = (self.clock, self.max());
        if let Some(s) = self
            .streams
            .iter_mut()
            .find(|s| s.handle == handle && (s.start..s.next).contains(&page))
        {
            s.used = clock;
            grow(s, max);
        }
    }

    /// How many host pages to request for a fault of thread `tid` (0 if
    /// unknown) on missing `page` of `block` (`handle`): 1 without
    /// pre-paging, otherwise the faulting page and the missing ones after
    /// it, up to the stream's window.  `in_flight` says whether a page is
    /// in flight.
    pub fn plan(
        &mut self,
        handle: BlockHandle,
        block: &Block,
        page: u64,
        tid: u32,
        in_flight: impl Fn(u64) -> bool,
    ) -> u64 {
        self.planned = None;
        self.gated = false;
        if self.settings.is_none() {
            return 1;
        }
        let ps = block.page_size;
        let slot = tid as usize % THREAD_SLOTS;
        let t = self.threads[slot];
        let same_thread = t.tid == tid && t.handle == handle;
        self.threads[slot] = ThreadSlot {
            tid,
            handle,
            next: page + ps,
            stream: if same_thread { t.stream } else { None },
        };
        if !self.is_open() {
            self.closed_for += 1;
            if same_thread && t.next == page {
                // The thread walks forward: open, and plan.
                self.open();
            } else if self.closed_for % PROBE_EVERY != 0 {
                self.gated = true;
                return 1;
            }
        }
        let end = block.host + block.len;
        let present = |p: u64| {
            p < end
                && (in_flight(p)
                    || block
                        .offset_of(p, 1)
                        .is_ok_and(|off| block.is_received(off)))
        };
        self.clock += 1;
        let max = self.max();
        let continues = |s: &Stream| {
            s.handle == handle
                && s.page_size == ps
                && page >= s.next
                && (page - s.next) / ps < u64::from(max)
                && (s.next..page).step_by(ps as usize).all(&present)
        };
        // The thread's own latest stream first: O(1) for a thread walking
        // its memory.
        let found = self.threads[slot]
            .stream
            .filter(|&i| self.streams.get(i).is_some_and(continues))
            .or_else(|| self.streams.iter().position(continues));
        let i = match found {
            Some(i) => {
                self.open();
                self.close(i, Close::WalkedPast);
                grow(&mut self.streams[i], max);
                i
            }
            None => {
                self.misses = self.misses.saturating_add(1);
                self.start_stream(handle, ps, page)
            }
        };
        self.threads[slot].stream = Some(i);
        let s = &mut self.streams[i];
        s.used = self.clock;
        s.grown = false;
        let limit = u64::from(s.window).min(1 + MAX_PREPAGE_BYTES / ps);
        let mut n = 1;
        while n < limit {
            let p = page + n * ps;
            if p >= end || present(p) {
                break;
            }
            n += 1;
        }
        self.planned = Some(i);
        n
    }

    /// Send the request for `npages` (from [`Prepager::plan`], at least 2)
    /// host pages of `page_size` from `offset`; returns how many were
    /// requested.
    pub fn request(
        &mut self,
        handle: BlockHandle,
        offset: u64,
        npages: u64,
        page_size: u64,
        addr: HostAddr,
    ) -> Result<u64> {
        let Some(s) = self.settings.as_mut() else {
            return Ok(0);
        };
        let bytes = s
            .requester
            .request_range(handle, offset, npages * page_size, addr)?;
        Ok(if bytes == 0 {
            npages
        } else {
            (bytes / page_size).clamp(1, npages)
        })
    }

    /// The request for `npages` host pages from `page` went out: open the
    /// stream's new run.
    pub fn requested(&mut self, handle: BlockHandle, page: u64, page_size: u64, npages: u64) {
        if self.settings.is_none() || std::mem::take(&mut self.gated) {
            return;
        }
        let i = match self.planned.take() {
            Some(i) if i < self.streams.len() => i,
            // A pause between plan and request dropped the stream.
            _ => self.start_stream(handle, page_size, page),
        };
        let s = &mut self.streams[i];
        s.start = page + page_size;
        s.next = page + npages * page_size;
        let (start, next) = (s.start, s.next);
        if npages > 1 {
            add(Counter::Requests, 1);
            add(Counter::Pages, npages - 1);
            self.pending
                .extend((start..next).step_by(page_size as usize));
        }
    }

    fn max(&self) -> u32 {
        self.settings.as_ref().map_or(1, |s| s.max_pages)
    }

    /// A new stream at `page`; if the table is full, in place of the least
    /// recently used stream at one page, or of the least recently used
    /// grown one while those fill more than half of it.
    fn start_stream(&mut self, handle: BlockHandle, page_size: u64, page: u64) -> usize {
        add(Counter::Streams, 1);
        let s = Stream {
            handle,
            page_size,
            start: page + page_size,
            next: page + page_size,
            window: 1,
            grown: false,
            used: self.clock,
        };
        if self.streams.len() < STREAMS {
            self.streams.push(s);
            return self.streams.len() - 1;
        }
        let grown = self.streams.iter().filter(|t| t.window > 1).count();
        let from_grown = grown > STREAMS / 2;
        let lru = (0..self.streams.len())
            .filter(|&i| (self.streams[i].window > 1) == from_grown)
            .min_by_key(|&i| self.streams[i].used)
            .unwrap_or(0);
        self.close(lru, Close::Dropped);
        self.streams[lru] = s;
        lru
    }

    /// End stream `i`'s current run: its pages not hit are counted as
    /// `how` says and are no longer pending.
    fn close(&mut self, i: usize, how: Close) {
        let s = &mut self.streams[i];
        let (start, next, ps) = (s.start, s.next, s.page_size);
        s.start = next;
        let n = (start..next)
            .step_by(ps as usize)
            .filter(|p| self.pending.remove(p))
            .count() as u64;
        add(
            match how {
                Close::WalkedPast => Counter::HitsWalkedPast,
                Close::Dropped => Counter::Unconfirmed,
            },
            n,
        );
    }
}

/// Double `s`'s window, once per run, up to `max`.
fn grow(s: &mut Stream, max: u32) {
    if s.grown || s.window >= max {
        return;
    }
    s.window = s.window.saturating_mul(2).min(max);
    s.grown = true;
    add(Counter::WindowGrows, 1);
    STATS.max(Counter::MaxWindow as usize, u64::from(s.window));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    const PS: u64 = 4096;
    const HOST: u64 = 1 << 40;

    /// Records each range request: (offset, pages).
    struct Rec(Arc<Mutex<Vec<(u64, u64)>>>);

    impl RangeRequester for Rec {
        fn request_range(
            &mut self,
            _h: BlockHandle,
            offset: u64,
            len: u64,
            _a: HostAddr,
        ) -> Result<u64> {
            self.0.lock().unwrap().push((offset, len / PS));
            Ok(0)
        }
    }

    struct Sim {
        p: Prepager,
        block: Block,
        in_flight: HashSet<u64>,
        ranges: Arc<Mutex<Vec<(u64, u64)>>>,
        /// Pages asked for per fault.
        asked: Vec<u64>,
    }

    impl Sim {
        fn new(max: u32, npages: u64) -> Sim {
            let ranges = Arc::new(Mutex::new(Vec::new()));
            let mut p = Prepager::default();
            p.configure(Some(Settings {
                max_pages: max,
                requester: Box::new(Rec(Arc::clone(&ranges))),
            }));
            Sim {
                p,
                block: Block::new(HostAddr::new(HOST), npages * PS, PS, 12, None, true).unwrap(),
                in_flight: HashSet::new(),
                ranges,
                asked: Vec::new(),
            }
        }

        /// A fault on page `i`, as the fault thread handles it.
        fn fault(&mut self, handle: usize, i: u64) {
            self.fault_by(handle, i, 0);
        }

        /// A fault of thread `tid` on page `i`.
        fn fault_by(&mut self, handle: usize, i: u64, tid: u32) {
            let handle = BlockHandle::new(handle);
            let page = HOST + i * PS;
            if self.in_flight.contains(&page) {
                self.p.fault_in_flight(handle, page);
                return;
            }
            let inf = self.in_flight.clone();
            let n = self
                .p
                .plan(handle, &self.block, page, tid, |p| inf.contains(&p));
            let got = if n > 1 {
                self.p
                    .request(handle, i * PS, n, PS, HostAddr::new(page))
                    .unwrap()
            } else {
                1
            };
            self.p.requested(handle, page, PS, got);
            self.in_flight.extend((0..got).map(|k| page + k * PS));
            self.asked.push(got);
        }

        /// Every page in flight arrives.
        fn arrive(&mut self) {
            self.in_flight.clear();
        }
    }

    #[test]
    fn sequential_faults_grow_the_window_to_the_max() {
        let mut s = Sim::new(16, 1 << 12);
        let mut i = 0;
        while i < 200 {
            s.fault(1, i);
            i += *s.asked.last().unwrap();
            s.arrive();
        }
        assert_eq!(&s.asked[..6], &[1, 2, 4, 8, 16, 16]);
        assert_eq!(s.p.windows(), vec![16]);
        // Each range starts at the faulting page.
        let r = s.ranges.lock().unwrap().clone();
        assert_eq!(r[0], (PS, 2));
        assert_eq!(r[1], (3 * PS, 4));
    }

    #[test]
    fn huge_pages_are_prepaged_one_page_ahead() {
        let mut p = Prepager::default();
        p.configure(Some(Settings {
            max_pages: 16,
            requester: Box::new(Rec(Arc::new(Mutex::new(Vec::new())))),
        }));
        const HUGE: u64 = 2 << 20;
        let block = Block::new(HostAddr::new(HOST), 64 * HUGE, HUGE, 12, None, false).unwrap();
        let (mut page, mut asked) = (HOST, Vec::new());
        for _ in 0..16 {
            let n = p.plan(BlockHandle::new(1), &block, page, 0, |_| false);
            p.requested(BlockHandle::new(1), page, HUGE, n);
            asked.push(n);
            page += n * HUGE;
        }
        assert_eq!(asked[0], 1);
        assert!(asked[1..].iter().all(|&n| n == 2), "{asked:?}");
        // The window still follows the stream; only the bytes are capped.
        assert_eq!(p.windows(), vec![16]);
    }

    #[test]
    fn gigantic_pages_are_never_prepaged() {
        // A 1 GiB page is larger than a request may carry beyond its
        // faulting page: every request is that page alone, and no range
        // goes out, however long the stream.
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let mut p = Prepager::default();
        p.configure(Some(Settings {
            max_pages: 16,
            requester: Box::new(Rec(Arc::clone(&ranges))),
        }));
        const GIGA: u64 = 1 << 30;
        let block = Block::new(HostAddr::new(HOST), 8 * GIGA, GIGA, 12, None, false).unwrap();
        let mut page = HOST;
        for _ in 0..8 {
            let n = p.plan(BlockHandle::new(1), &block, page, 0, |_| false);
            assert_eq!(n, 1);
            p.requested(BlockHandle::new(1), page, GIGA, n);
            page += GIGA;
        }
        assert!(ranges.lock().unwrap().is_empty());
    }

    #[test]
    fn a_window_is_capped_in_bytes() {
        let mut s = Sim::new(MAX_WINDOW, 1 << 16);
        let mut i = 0;
        while i < 4096 {
            s.fault(1, i);
            i += *s.asked.last().unwrap();
            s.arrive();
        }
        let most = *s.asked.iter().max().unwrap();
        assert_eq!(most, 1 + MAX_PREPAGE_BYTES / PS);
    }

    #[test]
    fn random_faults_never_prepage() {
        let mut s = Sim::new(16, 1 << 16);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Even pages only: no fault can continue another by chance.
            s.fault(1, (x % (1 << 15)) * 2);
        }
        assert!(s.asked.iter().all(|&n| n == 1), "{:?}", s.asked);
        assert!(s.ranges.lock().unwrap().is_empty());
        assert!(s.p.windows().iter().all(|&w| w == 1));
        assert!(s.p.streams.len() <= STREAMS);
    }

    /// xorshift: random even pages below 2^16 (no fault can continue
    /// another by chance).
    fn random_page(x: &mut u64) -> u64 {
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        (*x % (1 << 15)) * 2
    }

    /// Random faults close the planner: past `CLOSE_AFTER` of them, only
    /// one fault in `PROBE_EVERY` runs it (the stream clock moves only when
    /// it runs), and no stream is started in between.
    #[test]
    fn random_faults_close_the_planner() {
        let mut s = Sim::new(16, 1 << 16);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for k in 0..CLOSE_AFTER {
            assert!(s.p.is_open(), "closed after {k} faults");
            s.fault_by(1, random_page(&mut x), 1 + k % 8);
        }
        assert!(!s.p.is_open());
        let clock = s.p.clock;
        let n = 10 * PROBE_EVERY;
        for k in 0..n {
            // Nothing in flight: a page drawn twice is planned twice.
            s.arrive();
            s.fault_by(1, random_page(&mut x), 1 + k % 8);
        }
        assert!(!s.p.is_open());
        assert_eq!(s.p.clock - clock, u64::from(n / PROBE_EVERY));
        assert!(s.asked.iter().all(|&a| a == 1), "{:?}", s.asked);
        assert!(s.ranges.lock().unwrap().is_empty());
    }

    /// A thread that walks forward opens a closed planner on its second
    /// fault, and pre-pages from there as if it had never closed.
    #[test]
    fn a_sequential_thread_opens_the_planner() {
        let mut s = Sim::new(16, 1 << 17);
        let mut x: u64 = 0x1234_5678_9abc_def1;
        for k in 0..CLOSE_AFTER + 5 {
            s.fault_by(1, random_page(&mut x), 1 + k % 8);
        }
        assert!(!s.p.is_open());
        let (before, mut i) = (s.asked.len(), 1 << 16);
        while i < (1 << 16) + 200 {
            s.fault_by(1, i, 42);
            i += *s.asked.last().unwrap();
            s.arrive();
        }
        assert!(s.p.is_open());
        // One fault while closed, then as from a fresh start.
        assert_eq!(&s.asked[before..before + 7], &[1, 1, 2, 4, 8, 16, 16]);
        assert_eq!(s.p.windows()[0], 16);
    }

    /// Each thread's stream is found first: interleaved sweeps by two
    /// threads both grow, each thread keeping its own stream.
    #[test]
    fn streams_are_found_per_thread() {
        let mut s = Sim::new(8, 1 << 12);
        let (mut a, mut b) = (0, 2048);
        for _ in 0..10 {
            s.fault_by(1, a, 11);
            a += *s.asked.last().unwrap();
            s.fault_by(1, b, 12);
            b += *s.asked.last().unwrap();
            s.arrive();
        }
        assert_eq!(s.p.windows(), vec![8, 8]);
        let slot = |tid: u32| s.p.threads[tid as usize % THREAD_SLOTS];
        assert_ne!(slot(11).stream, slot(12).stream);
    }

    #[test]
    fn interleaved_streams_each_grow() {
        let mut s = Sim::new(8, 1 << 12);
        let (mut a, mut b) = (0, 2048);
        for _ in 0..10 {
            s.fault(1, a);
            a += *s.asked.last().unwrap();
            s.fault(1, b);
            b += *s.asked.last().unwrap();
            s.arrive();
        }
        assert_eq!(s.p.windows(), vec![8, 8]);
    }

    #[test]
    fn runs_stop_at_in_flight_pages_and_the_block_end() {
        let mut s = Sim::new(16, 6);
        s.fault(1, 0);
        s.fault(1, 1); // window 2: pages 1, 2
        s.arrive();
        s.fault(1, 3); // window 4, cut at the block's end (6 pages)
        assert_eq!(s.asked, vec![1, 2, 3]);
        let mut t = Sim::new(16, 100);
        t.fault(1, 0);
        t.fault(1, 1);
        t.arrive();
        // Page 5 is in flight (another fault): the run from 3 stops there.
        t.in_flight.insert(HOST + 5 * PS);
        t.fault(1, 3);
        assert_eq!(t.asked, vec![1, 2, 2]);
    }

    #[test]
    fn a_fault_on_a_prepaged_page_in_flight_is_a_hit() {
        let before = snapshot().hits_in_flight;
        let mut s = Sim::new(16, 1 << 10);
        s.fault(1, 0);
        s.fault(1, 1); // window 2: pages 1, 2
        s.fault(1, 2); // in flight, pre-paged: a hit, the window grows
        s.fault(1, 2); // a second fault on it is not a second hit
        assert!(snapshot().hits_in_flight > before);
        assert_eq!(s.p.windows(), vec![4]);
        s.fault(1, 3); // walked past: the window grows once per run only
        assert_eq!(s.asked, vec![1, 2, 4]);
        assert_eq!(s.p.windows(), vec![4]);
    }

    /// A stream's random neighbours (here: every fault of another thread
    /// reading at random) do not replace it while it grows.
    #[test]
    fn random_faults_do_not_replace_a_grown_stream() {
        let mut s = Sim::new(16, 1 << 14);
        for i in 0..3 {
            s.fault(1, i);
        }
        assert_eq!(s.p.windows()[0], 4);
        for k in 0..4 * STREAMS as u64 {
            s.fault(1, 1000 + 10 * k);
        }
        s.arrive();
        s.fault(1, 3);
        assert_eq!(*s.asked.last().unwrap(), 4);
        assert!(s.p.streams.len() <= STREAMS);
    }

    /// Past half of the table, grown streams are replaced as any other:
    /// the least recently used one goes, and a fault there starts again
    /// at one page.
    #[test]
    fn a_grown_stream_dropped_unhit_restarts_at_one_page() {
        let n = STREAMS as u64 / 2 + 1;
        let mut s = Sim::new(16, 1 << 16);
        // n streams, 1000 pages apart, each grown to 4 (its next fault:
        // page 3).
        for i in 0..3 {
            for k in 0..n {
                s.fault(1, 1000 * k + i);
            }
        }
        assert_eq!(s.p.windows(), vec![4; n as usize]);
        s.arrive();
        // Random faults fill the table; the next one replaces stream 0,
        // the least recently used grown one.
        for k in 0..(STREAMS as u64 - n) + 1 {
            s.fault(1, 50_000 + 10 * k);
        }
        s.fault(1, 3);
        assert_eq!(*s.asked.last().unwrap(), 1);
        s.fault(1, 1000 + 3);
        assert_eq!(*s.asked.last().unwrap(), 4);
    }

    /// The guest's `mix` pattern: a thread alternates 64 pages of a
    /// sweep with 64 random reads.  After the first run, each run of the
    /// sweep costs at most 64 / 16 + 1 faults.
    #[test]
    fn a_sweep_between_random_reads_keeps_its_window() {
        let mut s = Sim::new(16, 1 << 20);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = 0;
        let mut sweep_faults = Vec::new();
        for _ in 0..20 {
            let before = s.asked.len();
            let end = next + 64;
            while next < end {
                s.fault(1, next);
                next += *s.asked.last().unwrap();
                s.arrive();
            }
            sweep_faults.push(s.asked.len() - before);
            for _ in 0..64 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                s.fault(1, (1 << 19) + (x % (1 << 18)) * 2);
            }
        }
        assert!(
            sweep_faults[1..].iter().all(|&f| f <= 64 / 16 + 1),
            "faults per run of the sweep: {sweep_faults:?}"
        );
    }

    #[test]
    fn pages_already_present_are_walked_past() {
        let mut s = Sim::new(16, 1 << 10);
        s.fault(1, 0); // window 1
        s.arrive();
        // Pages 1..4 arrive in the background (in flight for another fault).
        for i in 1..4 {
            s.in_flight.insert(HOST + i * PS);
        }
        // The fault on 4 continues the stream: the pages between are there.
        s.fault(1, 4);
        assert_eq!(*s.asked.last().unwrap(), 2);
    }

    #[test]
    fn reset_and_off() {
        let mut s = Sim::new(16, 1 << 10);
        for i in 0..3 {
            s.fault(1, i);
        }
        s.p.reset();
        assert!(s.p.windows().is_empty() && s.p.pending.is_empty());
        s.p.configure(None);
        assert!(!s.p.enabled());
        let n = s.p.plan(BlockHandle::new(1), &s.block, HOST, 0, |_| false);
        assert_eq!(n, 1);
        // A window of one is no pre-paging: off too.
        s.p.configure(Some(Settings {
            max_pages: 1,
            requester: Box::new(Rec(Arc::clone(&s.ranges))),
        }));
        assert!(!s.p.enabled());
    }

    #[test]
    fn a_shorter_answer_is_taken_at_its_word() {
        struct Short;
        impl RangeRequester for Short {
            fn request_range(
                &mut self,
                _: BlockHandle,
                _: u64,
                _: u64,
                _: HostAddr,
            ) -> Result<u64> {
                Ok(PS)
            }
        }
        let mut p = Prepager::default();
        p.configure(Some(Settings {
            max_pages: 8,
            requester: Box::new(Short),
        }));
        assert_eq!(
            p.request(BlockHandle::new(1), 0, 4, PS, HostAddr::new(HOST)),
            Ok(1)
        );
    }
}
