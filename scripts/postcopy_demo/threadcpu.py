# SPDX-License-Identifier: GPL-2.0-or-later
"""CPU time of a process's threads, by thread name, read from /proc while
they live.

A thread's time is its schedstat's first field (nanoseconds on a CPU,
kept by the scheduler; no tick rounding).  The destination's fault
thread ends with postcopy, and with it its /proc entry, so its last
reading stands for it: the threads named are found by a scan of
/proc/PID/task every SCAN_S, and each one found is read every SAMPLE_S.
What a thread spends after its last reading, at most SAMPLE_S of its
work, is not counted; a thread that lives less than SCAN_S may not be
seen at all (its name is then absent, which the report calls missing).

Both QEMUs name the fault thread alike (migration.h's
MIGRATION_THREAD_DST_FAULT, passed to the library too), when QEMU runs
with -name debug-threads=on, as vm.py starts it."""

import os
import threading
import time
from typing import Dict, Iterable, Optional

SAMPLE_S = 0.005
SCAN_S = 0.05
FAULT_THREAD = "mig/dst/fault"
# the destination's threads that read postcopy's pages and place them:
# the main channel's after LISTEN, and the preempt channel's
RECEIVE_THREADS = ("mig/dst/listen", "mig/dst/preempt")


def read_ns(path: str) -> Optional[int]:
    """A schedstat file's nanoseconds on a CPU, or None once it is gone."""
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def read_threads(pid: int) -> Dict[int, tuple]:
    """{tid: (name, ns on a CPU)} of pid's threads now; those that exit
    while being read are left out."""
    out = {}
    base = "/proc/%d/task" % pid
    try:
        tids = os.listdir(base)
    except OSError:
        return out
    for tid in tids:
        try:
            with open("%s/%s/comm" % (base, tid)) as f:
                name = f.read().rstrip("\n")
        except OSError:
            continue
        ns = read_ns("%s/%s/schedstat" % (base, tid))
        if ns is not None:
            out[int(tid)] = (name, ns)
    return out


def totals(samples: Dict[int, tuple]) -> Dict[str, int]:
    """{name: ns} over every thread sampled, from {tid: (name, ns)}."""
    out: Dict[str, int] = {}
    for name, ns in samples.values():
        out[name] = out.get(name, 0) + ns
    return out


class ThreadCPU:
    """Samples pid's threads named in `names` until stop()."""

    def __init__(self, pid: int, names: Iterable[str] = (FAULT_THREAD,)):
        self.pid, self.names = pid, set(names)
        self.last: Dict[int, tuple] = {}     # tid: (name, ns), written by the sampler
        self.stop_ev = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def start(self):
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        live: Dict[int, str] = {}            # tid: name, of threads still there
        next_scan = 0.0
        while True:
            now = time.monotonic()
            if now >= next_scan:
                for tid, (name, ns) in read_threads(self.pid).items():
                    if name in self.names:
                        live[tid] = name
                        self.last[tid] = (name, ns)
                next_scan = now + SCAN_S
            for tid, name in list(live.items()):
                ns = read_ns("/proc/%d/task/%d/schedstat" % (self.pid, tid))
                if ns is None:
                    del live[tid]
                else:
                    self.last[tid] = (name, ns)
            if self.stop_ev.wait(SAMPLE_S):
                return

    def stop(self) -> Dict[str, int]:
        """Stop sampling: {name: ns} of the threads seen, each at its last
        reading; names never seen are absent."""
        self.stop_ev.set()
        if self.thread:
            self.thread.join()
            self.thread = None
        return totals(self.last)
