# SPDX-License-Identifier: GPL-2.0-or-later
"""Once postcopy runs, the source keeps little unsent data queued on the
main channel (series patch "keep little unsent on the main channel
during postcopy").

Without postcopy-preempt a page the destination asks for goes out on the
main channel, behind every byte the kernel still holds unsent for that
socket.  Linux autotunes the send buffer to megabytes, and on a link the
background stream fills, the unsent part of it is what a faulting vCPU
waits behind: about 4 MiB, 60 ms at 64 MiB/s.  With the fix the source
sets TCP_NOTSENT_LOWAT on the channel at the switch, and the unsent
bytes stay near it.

The migration runs over a shaped link, and while the source is in
postcopy-active the unsent bytes of its connection to the destination's
migration port (`ss -ti`, the kernel's tcpi_notsent_bytes) are sampled
every SAMPLE_S; a sample that does not find that connection, before the
last one that does (the source closes it as it completes), fails the
test, so it cannot pass by looking at nothing.  The first SETTLE_S are
not judged: data queued before the switch drains then.  The highest
sample must stay under UNSENT_MAX; on stock QEMU it is 1.5-2 MiB here
(the send buffer's 4 MiB less what is in flight).  Bytes are judged,
never time."""

import re
import threading
import time
from typing import Optional

from ..bottleneck import Bottleneck, probe
from ..migration import Hooks
from ..procs import run
from . import BugSeen, Failure, Skip, migrate_verified

# The link: fast enough that postcopy of the boot block guest takes
# seconds, not minutes, and slower than the source can write.
LINK_BPS = 200 * 10 ** 6
LINK_QUEUE_MS = 100.0
SAMPLE_S = 0.05
SETTLE_S = 0.5
MIN_SAMPLES = 20
# QEMU's bound (256 KiB), plus one write the kernel may take whole before
# it looks at the bound again (about 320 KiB seen at worst), with room to
# spare; stock QEMU showed 1.3-1.8 MiB here.
UNSENT_MAX = 640 << 10
NOTSENT = re.compile(r"\bnotsent:(\d+)")


def unsent_bytes(ss_output: str) -> Optional[int]:
    """The unsent byte count of the connection in `ss -tiH` output that
    ss was filtered to (ss leaves the field out when it is 0), or None
    when ss listed no connection."""
    if not ss_output.strip():
        return None
    return max((int(m) for m in NOTSENT.findall(ss_output)), default=0)


class Sampler(Hooks):
    """Samples the source namespace's unsent bytes from postcopy-active on
    until the source says completed."""

    def __init__(self, net):
        # One per sample: the unsent bytes, or None where the
        # connection was not found.
        self.net, self.seen = net, []
        self.port = None
        self.stop = threading.Event()
        self.thread = None

    def after_switch(self, src, dst):
        self.port = dst.port
        deadline = time.monotonic() + 30
        while src.query_migrate().get("status") != "postcopy-active":
            if time.monotonic() > deadline:
                return
            time.sleep(0.01)
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        start = time.monotonic()
        while not self.stop.is_set():
            r = run(self.net.wrap("src", ["ss", "-tiH", "state", "established",
                                          "dport", "=", ":%d" % self.port]), check=False)
            if time.monotonic() - start >= SETTLE_S:
                self.seen.append(unsent_bytes(r.stdout) if r.returncode == 0 else None)
            time.sleep(SAMPLE_S)

    def judged(self):
        """(the samples, how many missed the connection before its end)."""
        seen = list(self.seen)
        while seen and seen[-1] is None:
            seen.pop()
        got = [b for b in seen if b is not None]
        return got, len(seen) - len(got)

    def completed(self, src, dst):
        self.finish()

    def finish(self):
        """Stop sampling (again: a no-op)."""
        self.stop.set()
        if self.thread:
            self.thread.join()
            self.thread = None


def unsent_bound(ctx, name: str, session, start) -> str:
    kind, tried = probe()
    if not kind:
        raise Skip("no traffic shaper in this kernel (%s)" % tried)
    with session(ctx, name) as s:
        s.net = Bottleneck(s.out, s.logdir, LINK_BPS, LINK_QUEUE_MS, kind)
        s.net.setup()
        sampler = Sampler(s.net)
        try:
            _, _, _, v = migrate_verified(s, start, sampler)
        finally:
            # a migration that raised never reached the completed hook
            sampler.finish()
        got, missing = sampler.judged()
        if missing:
            raise Failure("%d sample(s) of `ss` found no connection to the destination's "
                          "port %s while later ones did" % (missing, sampler.port))
        if len(got) < MIN_SAMPLES:
            raise Failure("only %d sample(s) of the source's sockets in postcopy: too short "
                          "a postcopy phase to tell" % len(got))
        worst = max(got)
        what = ("highest unsent data on the source's main channel in postcopy: %d KiB "
                "(%d samples, median %d KiB; bound %d KiB)"
                % (worst >> 10, len(got), sorted(got)[len(got) // 2] >> 10, UNSENT_MAX >> 10))
        if worst > UNSENT_MAX:
            raise BugSeen("%s: a page the destination asks for waits behind all of it" % what)
        return "%s; %s" % (v["line"], what)
