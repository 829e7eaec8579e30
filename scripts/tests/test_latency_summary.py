# SPDX-License-Identifier: GPL-2.0-or-later
"""The demo's summary of the library's latency (postcopy_rs_incoming_latency)."""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from postcopy_demo import report  # noqa: E402

LAT = {"pages": 7, "p50_us": 64, "p99_us": 512, "max_us": 300, "mean_us": 90,
       "dist": [0, 0, 0, 0, 0, 0, 5, 0, 2]}


class LatencySummary(unittest.TestCase):
    def test_faults_not_timed_are_said_only_when_there_are_some(self):
        for lat in (LAT, dict(LAT, untracked=0, abandoned=0)):
            self.assertNotIn("not timed", report.latency_lines(lat)[0][1])
        line = report.latency_lines(dict(LAT, untracked=3, abandoned=1))[0][1]
        self.assertIn("over 7 host pages", line)
        self.assertIn("untracked 3 not timed", line)
        self.assertIn("abandoned 1 not timed", line)


if __name__ == "__main__":
    unittest.main()
