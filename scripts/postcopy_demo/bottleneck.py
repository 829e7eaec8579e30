# SPDX-License-Identifier: GPL-2.0-or-later
"""A link whose rate is the cap: the source and destination namespaces
joined through a third, "mid", namespace that bridges two veth pairs, with
a token-bucket shaper on the mid namespace's port toward the destination.

    src ns --veth-- [mid ns: bridge, shaper on the port to dst] --veth-- dst ns

Why a middle hop rather than the shaper on the source's own veth: a packet
queued in a qdisc of the sending host still belongs to its socket, so TCP
Small Queues (net.ipv4.tcp_limit_output_bytes) throttles the socket before
the queue fills, and a local drop is reported to TCP at once instead of
being found out from missing ACKs.  Crossing a veth orphans the packet, so
the queue in the mid namespace behaves as a router's buffer on the path
does: the senders fill it until it drops.

The shaper is tbf where the kernel has sch_tbf, else htb with one class
over a bfifo of the same size (probe() finds out which); the kernel this
was written on has both and no sch_netem.  Without a rate the topology is
the same and nothing is shaped (the qemu-cap mode of make bench-e2e), so
the two modes differ only in where the cap is.  Either way the bytes leave
through a qdisc on that port, whose counters are the bytes on the wire
(wire.py)."""

import os
import re
from typing import Optional, Tuple

from .netns import NetPair
from .options import MigrateError
from .procs import register_cleanup, run

# tc's rate units, in bits per second (tc's own "bps" means bytes: not taken).
RATE_UNITS = {"bit": 1, "kbit": 10 ** 3, "mbit": 10 ** 6, "gbit": 10 ** 9,
              "kibit": 1 << 10, "mibit": 1 << 20, "gibit": 1 << 30}


COUNTING_LIMIT = 256 << 20   # bytes: the unshaped link's bfifo, never reached


def parse_rate(text: str) -> int:
    """A tc-style rate ("512mbit", "1gbit", "64mibit") in bits per second."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-z]+)\s*", text.lower())
    if not m or m.group(2) not in RATE_UNITS:
        raise ValueError("a rate is a number and one of %s, e.g. 512mbit"
                         % ", ".join(RATE_UNITS))
    bps = int(float(m.group(1)) * RATE_UNITS[m.group(2)])
    if bps < 1000 * 8:
        raise ValueError("a rate under 1 kB/s is not a link")
    return bps


def burst_bytes(rate_bps: int) -> int:
    """The token bucket: 2 ms of the rate, and at least 128 KiB so that a
    64 KiB GSO packet passes whole (tbf would otherwise split it)."""
    return max(128 << 10, rate_bps // 8 // 500)


def queue_bytes(rate_bps: int, queue_ms: float) -> int:
    """The shaper's buffer: queue_ms of the rate (what a full queue adds to
    every packet's wait)."""
    return max(1, int(rate_bps / 8 * queue_ms / 1000.0))


def shaper_argv(kind: str, ns: str, dev: str, rate_bps: int, queue_ms: float,
                verb: str = "add"):
    """The tc commands that shape dev's egress (verb "change": that
    reshape it)."""
    burst, limit = burst_bytes(rate_bps), queue_bytes(rate_bps, queue_ms)
    tc = ["tc", "-n", ns]
    if kind == "tbf":
        # tbf's limit counts the bytes waiting for tokens: queue_ms of them
        return [tc + ["qdisc", verb, "dev", dev, "root", "tbf", "rate", "%dbit" % rate_bps,
                      "burst", str(burst), "limit", str(limit)]]
    return ([tc + ["qdisc", "add", "dev", dev, "root", "handle", "1:", "htb", "default", "1"]]
            if verb == "add" else []) + [
        tc + ["class", verb, "dev", dev, "parent", "1:", "classid", "1:1", "htb",
              "rate", "%dbit" % rate_bps, "ceil", "%dbit" % rate_bps,
              "burst", str(burst), "cburst", str(burst), "quantum", "60000"],
        tc + ["qdisc", verb, "dev", dev, "parent", "1:1", "handle", "10:", "bfifo",
              "limit", str(limit)]]


_PROBED: Optional[Tuple[Optional[str], str]] = None


def probe() -> Tuple[Optional[str], str]:
    """("tbf" or "htb" or None, what was tried): which shaper this kernel
    has, tried on a veth in a scratch namespace (once per process)."""
    global _PROBED
    if _PROBED is not None:
        return _PROBED
    ns = "%s%d-probe" % (Bottleneck.PREFIX, os.getpid())
    tried = []
    run(["ip", "netns", "add", ns])
    try:
        run(["ip", "-n", ns, "link", "add", "pcrsprobe0", "type", "veth", "peer", "name",
             "pcrsprobe1"])
        for kind in ("tbf", "htb"):
            errs = [r for argv in shaper_argv(kind, ns, "pcrsprobe0", 512 * 10 ** 6, 100.0)
                    for r in [run(argv, check=False)] if r.returncode != 0]
            run(["tc", "-n", ns, "qdisc", "del", "dev", "pcrsprobe0", "root"], check=False)
            if not errs:
                _PROBED = (kind, "; ".join(tried + ["%s: yes" % kind]))
                return _PROBED
            tried.append("%s: %s" % (kind, (errs[0].stderr or errs[0].stdout).strip()))
    finally:
        run(["ip", "netns", "del", ns], check=False)
    _PROBED = (None, "; ".join(tried))
    return _PROBED


class Bottleneck(NetPair):
    """A NetPair (the Session's .net) through a mid namespace, shaped at
    rate_bps toward the destination when a rate is given."""

    PREFIX = "pcrs-link-"
    ROLES = ("src", "mid", "dst", "probe")

    def __init__(self, out, logdir: str, rate_bps: Optional[int] = None,
                 queue_ms: float = 100.0, kind: str = "tbf"):
        super().__init__(0.0, out, logdir)
        pid = os.getpid()
        self.ns["mid"] = "%s%d-mid" % (self.PREFIX, pid)
        self.mid_veth = {"src": "pcrs%dms" % pid, "dst": "pcrs%dmd" % pid}
        self.bridge = "pcrs%db" % pid
        self.rate_bps, self.queue_ms, self.kind = rate_bps, queue_ms, kind

    @property
    def wire(self) -> Tuple[str, str]:
        """(namespace, device) whose tx_bytes are the bytes on the wire from
        the source to the destination (after the shaper, if any)."""
        return self.ns["mid"], self.mid_veth["dst"]

    def setup(self):
        self.remove_stale(self.out)
        register_cleanup(self.cleanup)
        for side in ("src", "mid", "dst"):
            run(["ip", "netns", "add", self.ns[side]])
            self.created.append(self.ns[side])
        mid = self.ns["mid"]
        run(["ip", "-n", mid, "link", "add", self.bridge, "type", "bridge"])
        for side in ("src", "dst"):
            ns, dev, peer = self.ns[side], self.veth[side], self.mid_veth[side]
            run(["ip", "link", "add", dev, "type", "veth", "peer", "name", peer])
            run(["ip", "link", "set", dev, "netns", ns])
            run(["ip", "link", "set", peer, "netns", mid])
            run(["ip", "-n", ns, "addr", "add", self.addr[side] + "/24", "dev", dev])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(["ip", "-n", mid, "link", "set", peer, "master", self.bridge])
            run(["ip", "-n", mid, "link", "set", peer, "up"])
        run(["ip", "-n", mid, "link", "set", self.bridge, "up"])
        if not self.rate_bps:
            # a queue that never fills (the veth takes every packet at once),
            # there for its counters (wire.py)
            run(["tc", "-n", mid, "qdisc", "add", "dev", self.mid_veth["dst"], "root",
                 "bfifo", "limit", str(COUNTING_LIMIT)])
            self.method = "no shaper"
            self.method_text = ("through a bridge in a third namespace, nothing shaped "
                                "(a bfifo on its port toward the destination, for the counters)")
            return
        for argv in shaper_argv(self.kind, mid, self.mid_veth["dst"], self.rate_bps,
                                self.queue_ms):
            run(argv)
        self.method = "shaped"
        self.method_text = ("through a bridge in a third namespace whose port toward the "
                            "destination is shaped by %s" % self.describe())

    def set_rate(self, rate_bps: int):
        """Reshape the link to rate_bps, with the same queue in time.  The
        packets queued stay (tbf resizes its fifo, htb's bfifo is changed
        in place) unless the new queue is shorter than they are; older
        kernels' tbf replaced its fifo, dropping them: shaper_stats()
        counts drops, for a caller to show."""
        if not self.rate_bps:
            raise MigrateError("an unshaped link has no rate to change")
        for argv in shaper_argv(self.kind, self.ns["mid"], self.mid_veth["dst"], rate_bps,
                                self.queue_ms, "change"):
            run(argv)
        self.rate_bps = rate_bps

    def describe(self) -> str:
        """The shaper in words (for the report)."""
        if not self.rate_bps:
            return "nothing shaped (a bfifo there only counts the bytes)"
        return "tc %s at %s (%.1f MB/s), %g ms of queue (%d bytes), burst %d bytes" % (
            self.kind, rate_text(self.rate_bps), self.rate_bps / 8e6, self.queue_ms,
            queue_bytes(self.rate_bps, self.queue_ms), burst_bytes(self.rate_bps))

    def shaper_stats(self) -> dict:
        """The counters of the qdisc toward the destination (tc -s qdisc):
        sent bytes, drops, overlimits; {} if tc says nothing."""
        r = run(["tc", "-n", self.ns["mid"], "-s", "qdisc", "show", "dev",
                 self.mid_veth["dst"]], check=False)
        out = {}
        for m in re.finditer(r"qdisc (\w+) [^\n]*\n\s*Sent (\d+) bytes (\d+) pkt \(dropped (\d+), "
                             r"overlimits (\d+)", r.stdout):
            if m.group(1) in ("tbf", "bfifo"):
                out = {"qdisc": m.group(1), "sent_bytes": int(m.group(2)),
                       "packets": int(m.group(3)), "dropped": int(m.group(4)),
                       "overlimits": int(m.group(5))}
        return out

    def set_link(self, up: bool):
        raise MigrateError("a Bottleneck link is not cut (use NetPair)")


def rate_text(bps: int) -> str:
    """bits per second as tc would write them."""
    for unit, f in (("gbit", 10 ** 9), ("mbit", 10 ** 6), ("kbit", 10 ** 3)):
        if bps % f == 0:
            return "%d%s" % (bps // f, unit)
    return "%dbit" % bps
