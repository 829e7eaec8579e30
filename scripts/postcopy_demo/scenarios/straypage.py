# SPDX-License-Identifier: GPL-2.0-or-later
"""A page filled behind the migration's back must stop it, not be kept.

After the switch the destination's guest RAM is empty where the source
discarded it, and every page arrives once.  A page found already present
(UFFDIO_COPY fails with EEXIST) was filled by something else, and its
contents are not the guest's: the placement must fail and postcopy pause,
as stock QEMU does, rather than let the guest read it (docs/BENCHMARKS.md,
"A lost page, and EEXIST").  The scenario fills one: once the destination
is in postcopy-active (its discards done), it writes a byte into the last
host page of guest RAM through a second mapping of the destination's
memfd, which its userfaultfd does not see.  The boot block guest never
touches that page, and the capped background stream reaches it last."""

import mmap
import os
import time

from ..migration import Hooks
from . import Failure

HUGE = 2 << 20
POSTCOPY_BANDWIDTH = 8      # MiB/s: the stream reaches the end of RAM seconds later


def fill_last_page(pid: int, page_size: int) -> str:
    """Write one byte into the last page of QEMU `pid`'s guest memfd."""
    fds = "/proc/%d/fd" % pid
    for fd in os.listdir(fds):
        try:
            link = os.readlink(os.path.join(fds, fd))
        except OSError:
            continue
        if not link.startswith("/memfd:"):
            continue
        f = os.open(os.path.join(fds, fd), os.O_RDWR)
        try:
            off = os.fstat(f).st_size - page_size
            m = mmap.mmap(f, page_size, flags=mmap.MAP_SHARED, offset=off)
            m[0] = 0x5A
            m.close()
        finally:
            os.close(f)
        return "filled the page at offset %#x of %s" % (off, link)
    raise Failure("no memfd among QEMU %d's descriptors" % pid)


class FillBehind(Hooks):
    def __init__(self, page_size: int):
        self.page_size, self.filled = page_size, None

    def after_switch(self, src, dst):
        deadline = time.monotonic() + 30
        while dst.query_migrate().get("status") != "postcopy-active":
            if time.monotonic() > deadline:
                raise Failure("the destination never reached postcopy-active")
            time.sleep(0.01)
        self.filled = fill_last_page(dst.proc.pid, self.page_size)


def stray_page(ctx, name: str, session, start) -> str:
    """Migrate a 2 MiB-backed guest with a page filled behind the
    destination's back: postcopy must pause with the library's EEXIST
    error, printed once and in the destination's error-desc, not
    complete."""
    ram = "256M@2M"
    with session(ctx, name, src_ram=ram, dst_ram=ram,
                 postcopy_bandwidth=POSTCOPY_BANDWIDTH) as s:
        src = start(s, s.start_source)
        dst = start(s, s.start_destination)
        hooks = FillBehind(HUGE)
        r = s.migrate(src, dst, hooks=hooks)
        if hooks.filled is None:
            raise Failure("the page was never filled (migration %s: %s)"
                          % (r["status"], r["error"]))
        if r["status"] == "completed":
            raise Failure("the migration completed over a page it did not place (%s)"
                          % hooks.filled)
        with open(dst.stderr_path, errors="replace") as f:
            refused = [ln for ln in f if "already present" in ln]
        if not refused:
            raise Failure("no EEXIST refusal in the destination's log (migration %s: %s)"
                          % (r["status"], r["error"]))
        if len(refused) != 1:
            raise Failure("the refusal is printed %d times, not once: %s"
                          % (len(refused), "; ".join(ln.strip() for ln in refused)))
        info = dst.query_migrate()
        state = info.get("status")
        if state != "postcopy-paused":
            raise Failure("the destination is %r, not postcopy-paused" % state)
        # The library's words reach the destination's error-desc, where a
        # management layer reads why the migration stopped.
        desc = info.get("error-desc") or ""
        if "postcopy-rs" not in desc or "already present" not in desc:
            raise Failure("the destination's error-desc lacks the library's words: %r" % desc)
        return "%s; the destination paused, error-desc: %s" % (hooks.filled, desc)
