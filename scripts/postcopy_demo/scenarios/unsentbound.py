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
postcopy-active its TCP sockets' unsent bytes (`ss -ti`, the kernel's
tcpi_notsent_bytes) are sampled every SAMPLE_S.  The first SETTLE_S are
not judged: data queued before the switch drains then.  The highest
sample must stay under UNSENT_MAX; on stock QEMU it is megabytes.  Bytes
are judged, never time."""

import re
import threading
import time

from ..bottleneck import Bottleneck, probe
from ..migration import Hooks
from ..procs import run
from . import BugSeen, Failure, Skip

# The link: fast enough that postcopy of the boot block guest takes
# seconds, not minutes, and slower than the source can write.
LINK_BPS = 200 * 10 ** 6
LINK_QUEUE_MS = 100.0
SAMPLE_S = 0.05
SETTLE_S = 0.5
MIN_SAMPLES = 20
# QEMU's bound (256 KiB), plus one write the kernel may take whole before
# it looks at the bound again, with room to spare; stock QEMU shows
# several MiB here.
UNSENT_MAX = 768 << 10
NOTSENT = re.compile(r"\bnotsent:(\d+)")


def unsent_bytes(ss_output: str) -> int:
    """The largest unsent byte count of any socket in `ss -tiH` output
    (ss leaves the field out when it is 0)."""
    return max((int(m) for m in NOTSENT.findall(ss_output)), default=0)


class Sampler(Hooks):
    """Samples the source namespace's unsent bytes from postcopy-active on
    until the source says completed."""

    def __init__(self, net):
        self.net, self.samples = net, []
        self.stop = threading.Event()
        self.thread = None

    def after_switch(self, src, dst):
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
            r = run(self.net.wrap("src", ["ss", "-tiH", "state", "established"]), check=False)
            if time.monotonic() - start >= SETTLE_S and r.returncode == 0:
                self.samples.append(unsent_bytes(r.stdout))
            time.sleep(SAMPLE_S)

    def completed(self, src, dst):
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
        src = start(s, s.start_source)
        dst = start(s, s.start_destination)
        r = s.migrate(src, dst, hooks=sampler)
        sampler.completed(src, dst)
        if r["status"] != "completed" or r["error"]:
            raise Failure("migration %s: %s" % (r["status"], r["error"]))
        v = s.verify(dst)
        if not v["ok"]:
            raise Failure(v["error"])
        got = sampler.samples
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
