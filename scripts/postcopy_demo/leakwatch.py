# SPDX-License-Identifier: GPL-2.0-or-later
"""The leak watch of a migration chain (scenarios/chain.py): a QEMU's open
file descriptors, threads and resident memory, read from /proc, and the
comparison that fails a chain when fd or thread counts grow from hop to
hop.

What is compared with what.  A Sample is one process at one point of a
hop; its series is its role and that point:

  booted source before/after  hop 1's source, before it migrates out and
                              once it has: the one process of the chain
                              that booted the guest and never ran an
                              incoming migration, so no later source is
                              like it (a series of one, never compared:
                              it has, for one, no /dev/userfaultfd open,
                              which QEMU opens once per process and keeps)
  source before               a source that came in by migration, before
                              its first migrate command of the hop
  source after                the same, once its migration completed
                              (postmigrate, the guest gone to the next)
  destination end             a destination once its migration completed
                              and the guest said VERIFY OK
  source retry                a source before its second attempt of a
                              hop, the first refused or cancelled

Within a series every sample is a different process, each at the same
point of the same life (one incoming migration, then one outgoing), so
their counts must be equal: a count that grows from one hop to the next
is state left behind by what that process, or the guest's state it was
handed, went through (a cut and its recovery, a refused or cancelled
attempt).  A retry sample is compared with the same process before its
first attempt: a migration that failed must leave nothing behind in the
source that tries again.  Memory (VmRSS) is reported, hop over hop, and
judged only against a gross bound (see rss_problems)."""

import collections
import dataclasses
import os
import re
import time
from typing import Dict, List, Optional, Tuple

COUNTS = ("fds", "threads")
# The series in table order (the retry is reported where it happens).
SERIES = ("source before", "source after", "destination end")


@dataclasses.dataclass
class Sample:
    hop: int
    vm: str                          # the VM's name (src, dst1, ...)
    role: str                        # booted source | source | destination
    point: str                       # before | retry | after | end
    fds: int
    threads: int
    rss_kb: int
    fd_kinds: Dict[str, int] = dataclasses.field(default_factory=dict)
    thread_names: Dict[str, int] = dataclasses.field(default_factory=dict)
    settled: bool = True             # the counts held still before the reading

    @property
    def series(self) -> str:
        return "%s %s" % (self.role, self.point)


def fd_kind(target: str) -> str:
    """What an fd is, without what makes each process's own: "socket",
    "pipe", "anon_inode:[eventfd]", "/dev/kvm", a path with its numbers
    as N (each VM's log is dstN.stderr.log)."""
    m = re.fullmatch(r"(socket|pipe|net):\[\d+\]", target)
    if m:
        return m.group(1)
    return re.sub(r"\d+", "N", target) if target.startswith("/") else target


def read_proc(pid: int) -> Tuple[Dict[str, int], Dict[str, int], int]:
    """(fd kinds, thread names, VmRSS in KiB) of a live process."""
    kinds: Dict[str, int] = collections.Counter()
    fd_dir = "/proc/%d/fd" % pid
    for fd in os.listdir(fd_dir):
        try:
            kinds[fd_kind(os.readlink(os.path.join(fd_dir, fd)))] += 1
        except OSError:              # closed between listdir and readlink
            pass
    names: Dict[str, int] = collections.Counter()
    task_dir = "/proc/%d/task" % pid
    for tid in os.listdir(task_dir):
        try:
            with open(os.path.join(task_dir, tid, "comm")) as f:
                names[f.read().strip()] += 1
        except OSError:              # the thread ended meanwhile
            pass
    rss = 0
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
    return dict(kinds), dict(names), rss


def take(pid: int, hop: int, vm: str, role: str, point: str, settle: float = 10.0,
         interval: float = 0.25, still: int = 4) -> Sample:
    """A Sample once fd and thread counts held still for `still` readings
    `interval` s apart (at most `settle` s).  Threads and fds that end
    shortly after a migration says completed (its thread, the return
    path's, the destination's listener and fault thread, their sockets)
    would otherwise be counted by chance."""
    deadline = time.monotonic() + settle
    last, same = None, 0
    while True:
        kinds, names, rss = read_proc(pid)
        counts = (sum(kinds.values()), sum(names.values()))
        same = same + 1 if counts == last else 1
        last = counts
        if same >= still or time.monotonic() > deadline:
            return Sample(hop, vm, role, point, counts[0], counts[1], rss, kinds, names,
                          settled=same >= still)
        time.sleep(interval)


def diff(a: Dict[str, int], b: Dict[str, int]) -> str:
    """What b has more or fewer of than a: "+1 socket, -1 pipe"."""
    keys = sorted(set(a) | set(b))
    return ", ".join("%+d %s" % (b.get(k, 0) - a.get(k, 0), k) for k in keys
                     if b.get(k, 0) != a.get(k, 0))


def _grew(prev: Sample, cur: Sample, what: str) -> List[str]:
    out = []
    for c in COUNTS:
        if getattr(cur, c) > getattr(prev, c):
            detail = diff(prev.fd_kinds, cur.fd_kinds) if c == "fds" else \
                diff(prev.thread_names, cur.thread_names)
            out.append("hop %d, %s: %s %s %d > %d %s (%s)"
                       % (cur.hop, cur.series, cur.vm, c, getattr(cur, c), getattr(prev, c),
                          what, detail or "same kinds, other numbers"))
    return out


def by_series(samples: List[Sample]) -> Dict[str, List[Sample]]:
    """The comparable series (no retries, no booted source), each by hop."""
    out: Dict[str, List[Sample]] = collections.OrderedDict()
    for s in sorted(samples, key=lambda s: s.hop):
        if s.point != "retry" and s.role != "booted source":
            out.setdefault(s.series, []).append(s)
    return out


def count_problems(samples: List[Sample]) -> List[str]:
    """Every fd or thread count that grew: in a series, over the previous
    hop's sample; for a retry, over the same process before its first
    attempt.  Empty when nothing grew."""
    problems = []
    for series in by_series(samples).values():
        for prev, cur in zip(series, series[1:]):
            problems += _grew(prev, cur, "at hop %d (%s)" % (prev.hop, prev.vm))
    for r in samples:
        if r.point != "retry":
            continue
        first = [s for s in samples if s.hop == r.hop and s.vm == r.vm and s.point == "before"]
        if first:
            problems += _grew(first[0], r, "before its first attempt")
    return problems


def rss_growth(samples: List[Sample]) -> List[Tuple[Sample, Optional[int]]]:
    """Each series sample with its VmRSS growth over the previous hop's
    sample of its series, in KiB (None for the first of a series)."""
    out = []
    for series in by_series(samples).values():
        prev = None
        for s in series:
            out.append((s, None if prev is None else s.rss_kb - prev.rss_kb))
            prev = s
    return out


def rss_problems(samples: List[Sample], bound_kb: int) -> List[str]:
    """Growth over the previous hop beyond bound_kb: the one memory
    judgement, for gross leaks only (scenarios/chain.py says why the
    bound)."""
    return ["hop %d, %s: %s VmRSS grew by %d MiB over the previous hop's (bound %d MiB)"
            % (s.hop, s.series, s.vm, d // 1024, bound_kb // 1024)
            for s, d in rss_growth(samples) if d is not None and d > bound_kb]
