# SPDX-License-Identifier: GPL-2.0-or-later
"""Unit tests of the per-thread CPU sampler (postcopy_demo/threadcpu.py)
and of the bench report's per-request figure.  Run:
python3 -m unittest discover -s scripts/tests."""

import os
import sys
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from postcopy_demo import bench_e2e_report as rep  # noqa: E402
from postcopy_demo import threadcpu  # noqa: E402


def spin(name: str, seconds: float, started: threading.Event):
    """A thread that names itself (as QEMU's do), burns CPU, then idles a
    while before it exits (as the fault thread does once the last page is
    placed), so that a reading after its work is sure to come."""
    with open("/proc/self/task/%d/comm" % threading.get_native_id(), "w") as f:
        f.write(name)
    started.set()
    # CPU time, not wall time: on a loaded host the thread still gets it
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass
    time.sleep(20 * threadcpu.SAMPLE_S)


class ThreadCPU(unittest.TestCase):
    def test_totals_add_threads_of_one_name(self):
        self.assertEqual(threadcpu.totals({1: ("a", 5), 2: ("a", 7), 3: ("b", 1)}),
                         {"a": 12, "b": 1})

    def test_an_exited_thread_keeps_its_last_sample(self):
        cpu = threadcpu.ThreadCPU(os.getpid(), ["pcrs-spin"])
        cpu.start()
        started = threading.Event()
        t = threading.Thread(target=spin, args=("pcrs-spin", 0.3, started))
        t.start()
        started.wait()
        t.join()
        time.sleep(3 * threadcpu.SAMPLE_S)      # gone from /proc by now
        got = cpu.stop()
        # 0.3 s on a CPU, all of it read before the thread exited
        self.assertGreater(got.get("pcrs-spin", 0), 0.29e9)
        self.assertLess(got["pcrs-spin"], 0.5e9)
        self.assertNotIn(threadcpu.FAULT_THREAD, got)

    def test_per_request(self):
        self.assertEqual(rep._per(3000, 3, 1e3), 1.0)
        self.assertIsNone(rep._per(None, 3, 1e3))
        self.assertIsNone(rep._per(3000, 0, 1e3))


if __name__ == "__main__":
    unittest.main()
