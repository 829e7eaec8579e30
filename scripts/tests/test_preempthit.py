# SPDX-License-Identifier: GPL-2.0-or-later
"""The e2e check that precopy finishes a host page the destination waits
for without sleeping out a rate-limit window: its reading of the
source's trace."""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from postcopy_demo.scenarios.preempthit import count_hits  # noqa: E402

HUGE = 2 << 20
HIT = "postcopy_preempt_hit ramblock mem0 offset 0x400000"
SLEPT = "migration_rate_limit_post urgent: 0"
WOKEN = "migration_rate_limit_post urgent: 1"


def save(offset, block="mem0"):
    return "ram_save_page %s: offset: 0x%x host: 0x7f0000000000" % (block, offset)


class CountHits(unittest.TestCase):
    def test_finished_without_a_window(self):
        lines = [save(0x400000), HIT, save(0x401000), save(0x5ff000), SLEPT, save(0x600000)]
        self.assertEqual(count_hits(lines, HUGE), {"hits": 1, "served": 1, "waited": 0})

    def test_sleeping_out_the_window_inside_the_page(self):
        # As QEMU 10.2.2 without the fix traced it.
        lines = [HIT, save(0x401000), SLEPT, save(0x402000)]
        self.assertEqual(count_hits(lines, HUGE), {"hits": 1, "served": 1, "waited": 1})

    def test_a_hit_that_ends_the_wait(self):
        lines = ["migration_rate_limit_pre 80 ms", HIT, WOKEN, save(0x402000)]
        self.assertEqual(count_hits(lines, HUGE)["waited"], 0)

    def test_a_hit_during_a_wait_that_runs_out(self):
        lines = ["migration_rate_limit_pre 80 ms", HIT, SLEPT, save(0x402000)]
        self.assertEqual(count_hits(lines, HUGE)["waited"], 1)

    def test_other_pages_and_blocks_do_not_count(self):
        lines = [HIT, SLEPT, save(0x600000), save(0x401000, "pc.ram")]
        self.assertEqual(count_hits(lines, HUGE), {"hits": 1, "served": 0, "waited": 0})

    def test_a_sleep_before_the_hit_does_not_count(self):
        lines = [SLEPT, HIT, save(0x401000), "1234@1.0:" + SLEPT]
        self.assertEqual(count_hits(lines, HUGE), {"hits": 1, "served": 1, "waited": 0})


if __name__ == "__main__":
    unittest.main()
