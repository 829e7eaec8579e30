# SPDX-License-Identifier: GPL-2.0-or-later
"""The e2e check that a source serves a page request past its rate limit:
its reading of the source's trace."""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from postcopy_demo.scenarios.urgent import count_spins  # noqa: E402

WAKE = "migration_rate_limit_post urgent: 1"
SLEEP = "migration_rate_limit_post urgent: 0"
QUEUE = "ram_save_queue_pages pc.ram: start: 0x1000 len: 0x1000"
DEQUEUE = "get_queued_page pc.ram/0x1000 page_abs=0x1"
SENT = "get_queued_page_not_dirty pc.ram/0x2000 page_abs=0x2"


class CountSpins(unittest.TestCase):
    def test_served_at_once(self):
        lines = [SLEEP, QUEUE, WAKE, DEQUEUE, SLEEP, QUEUE, WAKE, SENT, SLEEP]
        self.assertEqual(count_spins(lines), {"wakes": 2, "spins": 0, "dequeued": 2})

    def test_waiting_for_the_window_is_a_spin(self):
        # As QEMU 10.2.2 without the fix traced it: woken, nothing dequeued.
        lines = [SLEEP, QUEUE, WAKE, WAKE, WAKE, "1234@1.0:" + WAKE, DEQUEUE, SLEEP]
        self.assertEqual(count_spins(lines), {"wakes": 4, "spins": 3, "dequeued": 1})

    def test_a_new_request_between_wakes_is_not_a_spin(self):
        lines = [QUEUE, WAKE, DEQUEUE, QUEUE, WAKE, DEQUEUE]
        self.assertEqual(count_spins(lines)["spins"], 0)
        self.assertEqual(count_spins([QUEUE, WAKE, QUEUE, WAKE])["spins"], 0)

    def test_a_sleep_between_wakes_resets(self):
        self.assertEqual(count_spins([WAKE, SLEEP, WAKE])["spins"], 0)

    def test_other_lines_are_ignored(self):
        lines = [WAKE, "postcopy_rs_log level 3: discard", "qemu: warning", WAKE]
        self.assertEqual(count_spins(lines)["spins"], 1)


if __name__ == "__main__":
    unittest.main()
