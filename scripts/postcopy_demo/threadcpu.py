# SPDX-License-Identifier: GPL-2.0-or-later
"""CPU time of a process's threads, by thread name, read from /proc while
they live.

A thread's time is its schedstat's first field (nanoseconds on a CPU,
kept by the scheduler; no tick rounding).  The destination's fault
thread ends with postcopy, and with it its /proc entry: so a sampler
reads every SAMPLE_S, and a thread's last sample stands for it.  What it
spends after that sample, at most SAMPLE_S before it exits, is lost;
the thread is idle then (postcopy has placed its last page), so the
loss is its wake-up to quit.

Both QEMUs name the thread alike (migration.h's MIGRATION_THREAD_DST_FAULT,
passed to the library too), when QEMU runs with -name debug-threads=on, as
vm.py starts it."""

import os
import threading
from typing import Dict, Iterable, Optional

SAMPLE_S = 0.05
FAULT_THREAD = "mig/dst/fault"


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
            with open("%s/%s/schedstat" % (base, tid)) as f:
                ns = int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
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
        self.last: Dict[int, tuple] = {}
        self.stop_ev = threading.Event()
        self.thread: Optional[threading.Thread] = None

    def start(self):
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self):
        while True:
            for tid, (name, ns) in read_threads(self.pid).items():
                if name in self.names:
                    self.last[tid] = (name, ns)
            if self.stop_ev.wait(SAMPLE_S):
                return

    def stop(self) -> Dict[str, int]:
        """Stop sampling: {name: ns} of the threads seen, each at its last
        sample; names never seen are absent."""
        self.stop_ev.set()
        if self.thread:
            self.thread.join()
            self.thread = None
        return totals(self.last)
