// SPDX-License-Identifier: GPL-2.0-or-later
//! Destination side: atomic page placement with `UFFDIO_COPY` / `UFFDIO_ZEROPAGE`.
//!
//! Replaces `postcopy_place_page`, `postcopy_place_page_zero` and the
//! placement half of `qemu_ufd_copy_ioctl` (migration/postcopy-ram.c).
//!
//! **EEXIST is an error**, as in QEMU's own `qemu_ufd_copy_ioctl()`.
//! `UFFDIO_COPY` never overwrites a present page: it fails with EEXIST and
//! leaves memory as it is.  QEMU's source sends each page once after the
//! switch (sending clears its dirty bit; a request for a clean page is
//! dropped), so a page already there was filled by something else, and
//! the guest may already have read what that left.  Taking it as "placed"
//! once hid a zero-filled 2 MiB page (docs/BENCHMARKS.md, "A lost page,
//! and EEXIST").
//! So the placement fails, naming the address; nobody is woken, so no
//! thread blocked on the page goes on with contents the migration did not
//! send, and QEMU fails or pauses the migration instead of going on.
//!
//! **EAGAIN** (the mm is changing, or a multi-page copy stopped part way)
//! is retried from where the kernel stopped.

use crate::addr::HostAddr;
use crate::error::{Error, Result};
use crate::latency;
use crate::receivedmap::ReceivedMap;
use crate::stats::{self, Counter};
use crate::uffd::{self, UffdioCopy, UffdioRange, UffdioZeropage, UFFDIO_COPY, UFFDIO_ZEROPAGE};
use std::os::fd::BorrowedFd;
use std::sync::{Mutex, PoisonError};

/// EAGAIN retries without progress before giving up.
const MAX_STALLED_RETRIES: u32 = 10_000;

/// A RAMBlock as the destination sees it, validated.
#[derive(Debug, Clone)]
pub struct Block {
    /// Host address of the block's first byte.
    pub host: u64,
    /// Bytes of guest RAM.
    pub len: u64,
    /// Host page size: the unit of placement.
    pub page_size: u64,
    /// One bit per target page, set when a page is placed; shared with
    /// other threads, hence atomic.
    pub receivedmap: Option<ReceivedMap>,
    /// log2(target page size).
    pub target_page_bits: u32,
    /// `UFFDIO_ZEROPAGE` works on this memory (not hugetlbfs).
    pub zeropage_ok: bool,
}

impl Block {
    /// Validate the geometry of a block.  `receivedmap` must hold a bit per
    /// target page of `len`.
    pub fn new(
        host: HostAddr,
        len: u64,
        page_size: u64,
        target_page_bits: u32,
        receivedmap: Option<ReceivedMap>,
        zeropage_ok: bool,
    ) -> Result<Self> {
        let host = host.get();
        if !(9..=30).contains(&target_page_bits) {
            return Err(Error::PageSize {
                page_size,
                target_page_size: 1u64.checked_shl(target_page_bits).unwrap_or(0),
            });
        }
        let tps = 1u64 << target_page_bits;
        if !page_size.is_power_of_two()
            || page_size < tps
            || page_size > crate::limits::MAX_HOST_PAGE_SIZE
        {
            return Err(Error::PageSize {
                page_size,
                target_page_size: tps,
            });
        }
        if host % page_size != 0 {
            return Err(Error::Misaligned {
                addr: host,
                align: page_size,
            });
        }
        if len % page_size != 0 {
            return Err(Error::Length {
                len,
                page: page_size,
                unit: "bytes",
            });
        }
        if host.checked_add(len).is_none() {
            return Err(Error::OutOfRange { addr: host, len });
        }
        if let Some(map) = &receivedmap {
            if (map.bits() as u64) < len >> target_page_bits {
                return Err(Error::OutOfRange { addr: host, len });
            }
        }
        Ok(Block {
            host,
            len,
            page_size,
            receivedmap,
            target_page_bits,
            zeropage_ok,
        })
    }

    /// Offset of `npages` host pages at `addr` within the block, after
    /// checking they are aligned and inside it.
    pub fn offset_of(&self, addr: u64, npages: u64) -> Result<u64> {
        if addr % self.page_size != 0 {
            return Err(Error::Misaligned {
                addr,
                align: self.page_size,
            });
        }
        if npages == 0 {
            return Err(Error::Invalid("zero pages to place"));
        }
        let len = npages.checked_mul(self.page_size);
        match (addr.checked_sub(self.host), len) {
            (Some(off), Some(len)) if off.checked_add(len).is_some_and(|end| end <= self.len) => {
                Ok(off)
            }
            _ => Err(Error::OutOfRange {
                addr,
                len: len.unwrap_or(0),
            }),
        }
    }

    /// Has the target page holding block offset `off` been placed?
    pub fn is_received(&self, off: u64) -> bool {
        self.receivedmap
            .as_ref()
            .is_some_and(|m| m.test((off >> self.target_page_bits) as usize))
    }

    fn mark_received(&self, off: u64, len: u64) {
        if let Some(m) = &self.receivedmap {
            let tpb = self.target_page_bits;
            m.set_range((off >> tpb) as usize, (len >> tpb) as usize);
        }
    }
}

/// What to fill the pages with.
#[derive(Debug, Clone, Copy)]
enum Fill {
    /// `UFFDIO_COPY` from this address.
    Copy(u64),
    /// `UFFDIO_ZEROPAGE`.
    Zero,
}

/// One ioctl; returns the bytes done (possibly partial) or the errno.
fn issue(
    uffd: BorrowedFd<'_>,
    fill: Fill,
    dst: u64,
    len: u64,
) -> std::result::Result<(), (i32, u64)> {
    let (res, progress) = match fill {
        Fill::Copy(src) => {
            let mut c = UffdioCopy {
                dst,
                src,
                len,
                mode: 0,
                copy: 0,
            };
            // SAFETY: UFFDIO_COPY takes a uffdio_copy.  `src` is readable for
            // `len` bytes (a slice place_pages checked, or the zero buffer)
            // and the kernel validates `dst` against the registered range.
            let r = unsafe { uffd::ioctl(uffd, UFFDIO_COPY, &mut c) };
            (r, c.copy)
        }
        Fill::Zero => {
            let mut z = UffdioZeropage {
                range: UffdioRange { start: dst, len },
                mode: 0,
                zeropage: 0,
            };
            // SAFETY: UFFDIO_ZEROPAGE takes a uffdio_zeropage; the kernel
            // validates the range.
            let r = unsafe { uffd::ioctl(uffd, UFFDIO_ZEROPAGE, &mut z) };
            (r, z.zeropage)
        }
    };
    // Counted after the ioctl, which wakes the faulting threads.
    stats::add(Counter::PlaceIoctls, 1);
    match res {
        Ok(()) => Ok(()),
        Err(e) => Err((
            e.raw_os_error().unwrap_or(libc::EIO),
            u64::try_from(progress).unwrap_or(0),
        )),
    }
}

/// Fill `dst..dst + len` atomically, page by page as the kernel allows,
/// retrying EAGAIN.  On failure, also says how many bytes were placed
/// before it (those pages are there, and their waiters woken).
fn fill_range(
    uffd: BorrowedFd<'_>,
    fill: Fill,
    dst: u64,
    len: u64,
    page_size: u64,
) -> std::result::Result<(), (u64, Error)> {
    let op = match fill {
        Fill::Copy(_) => "UFFDIO_COPY",
        Fill::Zero => "UFFDIO_ZEROPAGE",
    };
    let mut done = 0;
    let mut stalled = 0;
    while done < len {
        let src = match fill {
            Fill::Copy(s) => Fill::Copy(s + done),
            Fill::Zero => Fill::Zero,
        };
        let errno = match issue(uffd, src, dst + done, len - done) {
            Ok(()) => return Ok(()),
            Err((libc::EAGAIN, progress)) => {
                stats::add(Counter::EagainRetries, 1);
                // The kernel only ever stops on a page boundary.
                let progress = progress.min(len - done) / page_size * page_size;
                if progress > 0 {
                    done += progress;
                    stalled = 0;
                    continue;
                }
                stalled += 1;
                if stalled <= MAX_STALLED_RETRIES {
                    std::thread::yield_now();
                    continue;
                }
                libc::EAGAIN
            }
            Err((libc::EEXIST, _)) => {
                // The module comment says why this is not success; the
                // error is logged where it leaves the library.
                stats::add(Counter::Eexist, 1);
                let addr = dst + done;
                return Err((
                    done,
                    Error::Present {
                        op,
                        addr,
                        len: page_size,
                    },
                ));
            }
            Err((errno, _)) => errno,
        };
        return Err((
            done,
            Error::Ioctl {
                op,
                addr: dst + done,
                len: len - done,
                errno,
            },
        ));
    }
    Ok(())
}

/// Account for `len` bytes placed at `host` (block offset `off`): received
/// bits first, then the latency end mark (see `crate::latency` on the order).
fn placed(block: &Block, host: u64, off: u64, len: u64) {
    if len == 0 {
        return;
    }
    block.mark_received(off, len);
    latency::end(host, block.page_size, len / block.page_size);
}

/// Place `npages` contiguous host pages at `host` from the start of `from`
/// (at least `npages * block.page_size` bytes), in one `UFFDIO_COPY` where
/// the kernel allows, and mark them received.
pub fn place_pages(
    uffd: BorrowedFd<'_>,
    block: &Block,
    host: HostAddr,
    from: &[u8],
    npages: u64,
) -> Result<()> {
    let host = host.get();
    let off = block.offset_of(host, npages)?;
    // No overflow: offset_of checked the pages fit in the block.
    let len = npages * block.page_size;
    if (from.len() as u64) < len {
        return Err(Error::OutOfRange {
            addr: from.as_ptr() as u64,
            len,
        });
    }
    let src = from.as_ptr() as u64;
    let res = fill_range(uffd, Fill::Copy(src), host, len, block.page_size);
    let done = res.as_ref().map_or_else(|(done, _)| *done, |()| len);
    placed(block, host, off, done);
    stats::add(Counter::PagesPlaced, done / block.page_size);
    stats::add(Counter::BytesPlaced, done);
    res.map_err(|(_, e)| e)
}

/// Place one zero host page at `host` and mark it received: `UFFDIO_ZEROPAGE`,
/// or on memory without it (hugetlbfs) a copy from a zero buffer of the
/// block's page size.
pub fn place_zero(uffd: BorrowedFd<'_>, block: &Block, host: HostAddr) -> Result<()> {
    let host = host.get();
    let off = block.offset_of(host, 1)?;
    let ps = block.page_size;
    let fill = if block.zeropage_ok {
        Fill::Zero
    } else {
        Fill::Copy(zero_source(ps)?)
    };
    fill_range(uffd, fill, host, ps, ps).map_err(|(_, e)| e)?;
    placed(block, host, off, ps);
    stats::add(Counter::ZeroPagesPlaced, 1);
    stats::add(Counter::BytesPlaced, ps);
    Ok(())
}

/// A read-only region of `size` zero bytes, one per size, kept for the life
/// of the process.  Private anonymous memory that is only read maps the
/// shared zero page, so even a 1 GiB buffer costs no RAM.
fn zero_source(size: u64) -> Result<u64> {
    static ZEROES: Mutex<Vec<(u64, u64)>> = Mutex::new(Vec::new());
    let mut z = ZEROES.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(&(_, addr)) = z.iter().find(|(s, _)| *s == size) {
        return Ok(addr);
    }
    // SAFETY: a fresh anonymous mapping; no existing memory is affected.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(Error::last_os("mmap of the zero-page buffer"));
    }
    z.push((size, p as u64));
    drop(z);
    Ok(p as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_geometry_is_checked() {
        let ok = Block::new(
            HostAddr::new(0x20_0000),
            0x40_0000,
            0x20_0000,
            12,
            None,
            false,
        )
        .unwrap();
        assert_eq!(ok.offset_of(0x40_0000, 1).unwrap(), 0x20_0000);
        assert!(matches!(
            ok.offset_of(0x40_1000, 1),
            Err(Error::Misaligned { .. })
        ));
        assert!(matches!(
            ok.offset_of(0x60_0000, 1),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(
            ok.offset_of(0x20_0000, 3),
            Err(Error::OutOfRange { .. })
        ));
        assert!(matches!(ok.offset_of(0x20_0000, 0), Err(Error::Invalid(_))));
        assert!(matches!(ok.offset_of(0, 1), Err(Error::OutOfRange { .. })));
        ok.offset_of(0x20_0000, u64::MAX).unwrap_err();
        // Misaligned host, impossible page sizes, partial page lengths.
        Block::new(HostAddr::new(0x1000), 0x20_0000, 0x20_0000, 12, None, false).unwrap_err();
        Block::new(HostAddr::new(0), 0x3000, 0x3000, 12, None, false).unwrap_err();
        Block::new(HostAddr::new(0), 0x1000, 0x800, 12, None, false).unwrap_err();
        Block::new(HostAddr::new(0), 0x30_0000, 0x20_0000, 12, None, false).unwrap_err();
        Block::new(HostAddr::new(0), 0x1000, 0x1000, 40, None, false).unwrap_err();
        // A receivedmap too short for the block.
        let map = ReceivedMap::new(64);
        Block::new(
            HostAddr::new(0),
            65 << 12,
            0x1000,
            12,
            Some(map.clone()),
            true,
        )
        .unwrap_err();
        Block::new(HostAddr::new(0), 64 << 12, 0x1000, 12, Some(map), true).unwrap();
    }
}
