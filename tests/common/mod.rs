// SPDX-License-Identifier: GPL-2.0-or-later
//! Shared helpers for the tests on real userfaultfd: registered memory
//! regions, hugepage reservations, page patterns, loud skips.
#![allow(dead_code)]

use postcopy_rs::addr::HostAddr;
use postcopy_rs::placement::Block;
use postcopy_rs::receivedmap::ReceivedMap;
use postcopy_rs::uffd::{Userfaultfd, UFFD_FEATURE_THREAD_ID};
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

/// A region's userfaultfd, shared with the threads of a test.
pub type Fd = Arc<Userfaultfd>;

pub const PAGE_4K: u64 = 4096;
pub const PAGE_2M: u64 = 2 << 20;

/// Say that a case is skipped, wherever the tests run, and record it
/// where the test command prints it again at the end.
///
/// Not `eprintln!`: the test harness captures that and shows it only for
/// a failing test, so a plain `cargo test` hid every skip.  A write to
/// the stderr handle itself bypasses the capture: the line shows on the
/// terminal and in CI logs, between the harness's own lines.
/// `POSTCOPY_RS_SKIPPED_FILE` names another file for the record.
pub fn skip_loudly(what: &str, why: &str) {
    let line = format!("SKIPPED: {what}: {why}");
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
    let path = std::env::var("POSTCOPY_RS_SKIPPED_FILE")
        .unwrap_or_else(|_| concat!(env!("CARGO_TARGET_TMPDIR"), "/skipped-tests.txt").to_string());
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
    {
        let _ = writeln!(f, "{line}");
    }
    // For a CI machine that must run everything: a skip fails the test.
    assert!(
        std::env::var("POSTCOPY_RS_NO_SKIP").as_deref() != Ok("1"),
        "{line} (and POSTCOPY_RS_NO_SKIP=1)"
    );
}

/// Fresh private anonymous memory of `len` bytes on pages of `page_size`
/// (4 KiB, or 2 MiB hugetlbfs).
pub fn map_anon(page_size: u64, len: u64) -> *mut libc::c_void {
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    if page_size == PAGE_2M {
        flags |= libc::MAP_HUGETLB | (21 << libc::MAP_HUGE_SHIFT);
    }
    // SAFETY: a fresh anonymous mapping; no existing memory is affected.
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
    assert_ne!(
        p,
        libc::MAP_FAILED,
        "mmap: {}",
        std::io::Error::last_os_error()
    );
    p
}

/// Memory of one page kind, mmapped and registered with a userfaultfd.
pub struct Region {
    pub uffd: Fd,
    pub base: u64,
    pub len: u64,
    pub page_size: u64,
    pub receivedmap: ReceivedMap,
}

impl Region {
    /// `npages` host pages of `page_size` (4 KiB anonymous or 2 MiB hugetlbfs).
    pub fn new(page_size: u64, npages: u64) -> Region {
        let uffd = Userfaultfd::new(UFFD_FEATURE_THREAD_ID).expect("userfaultfd (are we root?)");
        Self::map_into(uffd, page_size, npages)
    }

    fn map_into(uffd: Userfaultfd, page_size: u64, npages: u64) -> Region {
        let len = page_size * npages;
        let p = map_anon(page_size, len);
        if page_size == PAGE_4K {
            // SAFETY: advice on our own mapping.
            unsafe {
                libc::madvise(p, len as usize, libc::MADV_NOHUGEPAGE);
            }
        }
        uffd.register(p as u64, len).expect("UFFDIO_REGISTER");
        Region {
            uffd: Arc::new(uffd),
            base: p as u64,
            len,
            page_size,
            receivedmap: ReceivedMap::new((len / PAGE_4K) as usize),
        }
    }

    pub fn fd(&self) -> Fd {
        Arc::clone(&self.uffd)
    }

    pub fn block(&self) -> Block {
        Block::new(
            HostAddr::new(self.base),
            self.len,
            self.page_size,
            12,
            Some(self.receivedmap.clone()),
            self.page_size == PAGE_4K,
        )
        .expect("valid block")
    }

    pub fn page(&self, i: u64) -> u64 {
        self.base + i * self.page_size
    }

    pub fn npages(&self) -> u64 {
        self.len / self.page_size
    }

    /// Read the u64 at `addr` inside the region: blocks while its page is
    /// missing, which is the point.
    pub fn peek(&self, addr: u64) -> u64 {
        assert!(addr >= self.base && addr + 8 <= self.base + self.len && addr % 8 == 0);
        // SAFETY: aligned and inside our live mapping (checked above).
        unsafe { std::ptr::read_volatile(addr as *const u64) }
    }
}

/// Free every thread blocked in `b`, so that a hung test fails instead of
/// hanging: a zero page wherever one is missing, then a wake-up of the
/// whole block (a page already present is refused without one).
#[allow(dead_code)]
pub fn release_all(fd: impl AsFd, b: &Block) {
    for i in 0..b.len / b.page_size {
        let _ = postcopy_rs::placement::place_zero(
            fd.as_fd(),
            b,
            HostAddr::new(b.host + i * b.page_size),
        );
    }
    let _ = postcopy_rs::uffd::wake(fd.as_fd(), b.host, b.len);
}

/// `place_pages` from a buffer whose length is checked.
pub fn place(
    fd: impl AsFd,
    b: &Block,
    host: u64,
    buf: &[u64],
    npages: u64,
) -> postcopy_rs::Result<()> {
    // SAFETY: the bytes of a live &[u64]: same memory, every bit pattern a
    // valid u8, alignment 1.  (No copy: a copy of a 2 MiB page in a debug
    // build is slow enough to make the fault thread ask again.)
    let bytes = unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), buf.len() * 8) };
    postcopy_rs::placement::place_pages(fd.as_fd(), b, HostAddr::new(host), bytes, npages)
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; nothing references it after drop.
        unsafe {
            libc::munmap(self.base as *mut libc::c_void, self.len as usize);
        }
    }
}

/// The word stored at word `w` of host page `page` by the test pattern.
pub fn pattern_word(page: u64, w: u64, salt: u64) -> u64 {
    (page.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ w.wrapping_mul(0xff51_afd7_ed55_8ccd)) ^ salt
}

pub fn pattern_page(page: u64, page_size: u64, salt: u64) -> Vec<u64> {
    (0..page_size / 8)
        .map(|w| pattern_word(page, w, salt))
        .collect()
}

/// Read a few words of host page `i` (touching it: this faults if missing)
/// and check them against the pattern.
pub fn check_page(r: &Region, i: u64, salt: u64) -> Result<(), String> {
    let words = r.page_size / 8;
    for w in [0, 1, words / 2, words - 1] {
        let v = r.peek(r.page(i) + w * 8);
        let want = pattern_word(i, w, salt);
        if v != want {
            return Err(format!("page {i} word {w}: {v:#x} != {want:#x}"));
        }
    }
    Ok(())
}

/// Serialises tests that reserve hugepages or assert on global counters.
static SERIAL: Mutex<()> = Mutex::new(());

pub fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Run `f` serialised, with `n` 2 MiB hugepages reserved, or skip loudly.
pub fn with_hugepages(what: &str, n: u64, f: impl FnOnce()) {
    let _g = serial();
    if let Some(_h) = HugePages::reserve(2048, n, what) {
        f();
    }
}

/// Hugepages reserved for one test, given back on drop.
///
/// Given back by what was added, not by writing back the count read
/// first: another user of the pool (a QEMU of the end-to-end tests,
/// scripts/eexist-repro.py) may have raised it meanwhile, and a stale
/// count would take its pages away.
pub struct HugePages {
    path: String,
    added: u64,
}

impl HugePages {
    /// Reserve `n` more pages of `size_kb`; None (after a loud skip) if the
    /// kernel will not, or if `POSTCOPY_RS_SKIP_HUGEPAGES=1`.
    pub fn reserve(size_kb: u64, n: u64, what: &str) -> Option<HugePages> {
        if std::env::var_os("POSTCOPY_RS_SKIP_HUGEPAGES").is_some_and(|v| v == "1") {
            skip_loudly(what, "POSTCOPY_RS_SKIP_HUGEPAGES=1");
            return None;
        }
        let dir = format!("/sys/kernel/mm/hugepages/hugepages-{size_kb}kB");
        let path = format!("{dir}/nr_hugepages");
        let read = |p: &str| {
            std::fs::read_to_string(p)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
        };
        let Some(prev) = read(&path) else {
            skip_loudly(
                what,
                &format!("no {size_kb} kB hugepage support ({path} unreadable)"),
            );
            return None;
        };
        if let Err(e) = std::fs::write(&path, format!("{}", prev + n)) {
            skip_loudly(
                what,
                &format!("cannot reserve {n} x {size_kb} kB hugepages: {e} (not root?)"),
            );
            return None;
        }
        let now = read(&path).unwrap_or(prev);
        let guard = HugePages {
            added: now.saturating_sub(prev).min(n),
            path,
        };
        let free = read(&format!("{dir}/free_hugepages")).unwrap_or(0);
        if free < n {
            skip_loudly(
                what,
                &format!("kernel granted only {free} of {n} x {size_kb} kB hugepages"),
            );
            return None;
        }
        Some(guard)
    }
}

impl Drop for HugePages {
    fn drop(&mut self) {
        if let Some(now) = std::fs::read_to_string(&self.path)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
        {
            let _ = std::fs::write(&self.path, format!("{}", now.saturating_sub(self.added)));
        }
    }
}

/// xorshift64*, for reproducible test randomness.
pub struct Rng(pub u64);
impl Rng {
    pub fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n
    }
}
