# SPDX-License-Identifier: GPL-2.0-or-later
"""Bytes on the wire: a sampler of the counters of the qdisc on the
link's egress (what tc -s qdisc shows), and what the samples say about a
phase of the migration (mean and peak bytes/s, and whether any 1 s window
went over a limit).

Why the qdisc's counters and not the interface's tx_bytes: the kernel
hands a veth TCP segments glued into one GSO packet of up to 64 KiB, and
tx_bytes counts such a packet's headers once, about 4 % short of what its
segments carry at the MSS; the qdisc counts each segment's headers
(qdisc_pkt_len), as the shaper does when it spends tokens.  So the link
always has a qdisc there: the shaper, or in the qemu-cap mode a bfifo that
only counts (bottleneck.py).

The sampler is a process of its own, so that the driver's work (QMP
polling) does not delay the samples, and reads the counters over
rtnetlink; it writes "<wall-clock s before the read> <after it> <bytes>
<backlog bytes> <drops>" lines (the counter was read somewhere between the
two times), wall clock because QEMU stamps its MIGRATION events with it.
wire_stats() is pure and unit-tested (scripts/tests/test_wire.py)."""

import bisect
import subprocess
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

from .options import MigrateError
from .procs import kill_proc, spawn

INTERVAL = 0.1          # s between samples
WINDOW = 1.0            # s: the window a peak and a limit are judged over

# The root qdisc's counters over rtnetlink (RTM_GETQDISC, TCA_STATS2's
# basic and queue stats), read in some 0.1 ms: a tc process per sample took
# up to 150 ms on a loaded host, and a sample's time is only known to
# within its read.  Runs in the link's namespace (`ip netns exec`).
_SAMPLER = r"""import socket, struct, sys, time
dev, step = sys.argv[1], float(sys.argv[2])
RTM_NEWQDISC, RTM_GETQDISC, NLMSG_DONE, NLMSG_ERROR = 36, 38, 3, 2
TCA_STATS2, TCA_STATS_BASIC, TCA_STATS_QUEUE = 7, 1, 3
ifindex = socket.if_nametoindex(dev)
s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
s.bind((0, 0))
def attrs(buf, off, end):
    while off + 4 <= end:
        ln, ty = struct.unpack_from("HH", buf, off)
        if ln < 4:
            return
        yield ty & 0x3FFF, off + 4, off + ln
        off += (ln + 3) & ~3
def read():
    req = struct.pack("IHHII", 36, RTM_GETQDISC, 0x301, 1, 0) + \
        struct.pack("BxxxiIII", 0, 0, 0, 0, 0)
    s.send(req)
    found = None
    while True:
        buf = s.recv(1 << 16)
        off = 0
        while off + 16 <= len(buf):
            ln, ty = struct.unpack_from("IH", buf, off)
            if ty == NLMSG_DONE:
                return found
            if ty == NLMSG_ERROR:
                raise OSError("netlink error")
            if ty == RTM_NEWQDISC:
                _, idx, _, parent, _ = struct.unpack_from("BxxxiIII", buf, off + 16)
                if idx == ifindex and parent == 0xFFFFFFFF:
                    for t, a, b in attrs(buf, off + 36, off + ln):
                        if t == TCA_STATS2:
                            st = {}
                            for t2, a2, b2 in attrs(buf, a, b):
                                if t2 == TCA_STATS_BASIC:
                                    st["bytes"] = struct.unpack_from("Q", buf, a2)[0]
                                elif t2 == TCA_STATS_QUEUE:
                                    st["q"] = struct.unpack_from("IIIII", buf, a2)
                            found = (st["bytes"], st["q"][1], st["q"][2])
            off += (ln + 3) & ~3
nxt = time.monotonic()
while True:
    t0 = time.time()
    r = read()
    t1 = time.time()
    if r:
        sys.stdout.write("%.6f %.6f %d %d %d\n" % (t0, t1, r[0], r[1], r[2]))
        sys.stdout.flush()
    nxt += step
    time.sleep(max(0.0, nxt - time.monotonic()))
"""


class WireSampler:
    """The counters of dev's root qdisc in namespace ns every interval
    seconds, into path."""

    def __init__(self, ns: str, dev: str, path: str, interval: float = INTERVAL):
        self.ns, self.dev, self.path, self.interval = ns, dev, path, interval
        self.proc: Optional[subprocess.Popen] = None

    def start(self):
        with open(self.path, "wb") as log, open(self.path + ".err", "wb") as err:
            self.proc = spawn(["ip", "netns", "exec", self.ns, sys.executable, "-c", _SAMPLER,
                               self.dev, str(self.interval)], stdout=log, stderr=err)
        deadline = time.monotonic() + 10
        while not self.samples():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise MigrateError("the byte counter sampler did not start (see %s.err)"
                                   % self.path)
            time.sleep(0.05)

    def wait_past(self, t: float, timeout: float = 5.0) -> bool:
        """Wait for a sample read wholly after wall-clock time t."""
        deadline = time.monotonic() + timeout
        while not any(lo > t for lo, _, _ in self.samples()[-3:]):
            if self.proc is None or self.proc.poll() is not None or \
                    time.monotonic() > deadline:
                return False
            time.sleep(self.interval / 2)
        return True

    def stop(self) -> List[Tuple[float, float, int]]:
        if self.proc:
            kill_proc(self.proc)
            self.proc = None
        return self.samples()

    def samples(self) -> List[Tuple[float, float, int]]:
        """(time before, time after, bytes) so far."""
        return [r[:3] for r in self.rows()]

    def rows(self) -> List[Tuple[float, float, int, int, int]]:
        """(time before, time after, bytes, backlog bytes, drops) so far."""
        out = []
        try:
            with open(self.path) as f:
                for ln in f:
                    p = ln.split()
                    if len(p) == 5 and ln.endswith("\n"):
                        out.append((float(p[0]), float(p[1]), int(p[2]), int(p[3]), int(p[4])))
        except FileNotFoundError:
            pass
        return out


def backlog_stats(rows, t0: float, t1: float) -> dict:
    """The deepest queue seen in [t0, t1] and the drops in it."""
    inside = [r for r in rows if t0 <= r[0] <= t1]
    if not inside:
        return {}
    before = [r for r in rows if r[0] < t0]
    return {"backlog_max_bytes": max(r[3] for r in inside),
            "drops": inside[-1][4] - (before[-1][4] if before else inside[0][4])}


def _at(pts: Sequence[Tuple[float, float]], t: float) -> Optional[float]:
    """The counter at time t, linear between the (time, bytes) around it."""
    ts = [p[0] for p in pts]
    i = bisect.bisect_left(ts, t)
    if i < len(ts) and ts[i] == t:
        return float(pts[i][1])
    if i == 0 or i == len(ts):
        return None
    (ta, ba), (tb, bb) = pts[i - 1], pts[i]
    return ba + (bb - ba) * (t - ta) / (tb - ta)


def wire_stats(samples: Sequence[Tuple[float, float, int]], t0: float, t1: float,
               limits: Dict[str, Tuple[float, float]], window: float = WINDOW) -> dict:
    """Bytes/s on the wire over [t0, t1] from (time before, time after,
    counter) samples: the counter was read between the two times.

    mean_Bps: the counter's growth over the phase / its length (a sample
    taken at the middle of its two times).
    peak_Bps: the highest rate over any stretch of at least `window` s
    between two samples inside the phase (a phase shorter than that: over
    the whole phase, and peak_window_s says how long it was).
    limits: {name: (bytes/s, allowance bytes)}; over[name] is true if some
    such stretch carried more than limit x its longest possible length
    (the later sample's time after, less the earlier one's time before)
    + allowance: only what the samples prove.  The allowance is a token
    bucket's burst, which a shaper lets through by design.
    {} without samples around the phase."""
    samples = sorted(samples)
    pts = [((a + b) / 2.0, n) for a, b, n in samples]
    if len(pts) < 2 or t1 <= t0:
        return {}
    b0, b1 = _at(pts, t0), _at(pts, t1)
    inside = [s for s, p in zip(samples, pts) if t0 <= p[0] <= t1]
    if len(inside) < 2 or b0 is None or b1 is None:
        return {}
    spans = []   # (length between midpoints, longest possible length, bytes)
    j = 0
    for i, (lo, hi, n) in enumerate(inside):
        mid = (lo + hi) / 2.0
        j = max(j, i + 1)
        while j < len(inside) and sum(inside[j][:2]) / 2.0 - mid < window:
            j += 1
        if j == len(inside):
            break
        spans.append((sum(inside[j][:2]) / 2.0 - mid, inside[j][1] - lo, inside[j][2] - n))
    if not spans:
        a, z = inside[0], inside[-1]
        spans = [((z[0] + z[1] - a[0] - a[1]) / 2.0, z[1] - a[0], z[2] - a[2])]
    peak = max(spans, key=lambda s: s[2] / s[0])
    return {
        "mean_Bps": round((b1 - b0) / (t1 - t0)),
        "peak_Bps": round(peak[2] / peak[0]),
        "peak_window_s": round(peak[0], 3),
        "phase_s": round(t1 - t0, 3),
        "bytes": round(b1 - b0),
        "samples": len(inside),
        "read_s_max": round(max(hi - lo for lo, hi, _ in inside), 4),
        "over": {name: any(db > lim * longest + allow for _, longest, db in spans)
                 for name, (lim, allow) in limits.items()},
    }
