# SPDX-License-Identifier: GPL-2.0-or-later
"""The e2e check that the return path sends only the first host page of
a range request: its reading of the source's trace."""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from postcopy_demo.scenarios.preemptrange import count_ranges  # noqa: E402

HUGE = 2 << 20


def request(start, pages):
    return "ram_save_queue_pages mem0: start: 0x%x len: 0x%x" % (start, pages * HUGE)


def send(page):
    return "postcopy_preempt_send_host_page ramblock mem0 offset 0x%x" % page


QUEUED = "get_queued_page mem0/0x600000 page_abs=0x600"
NOT_DIRTY = "get_queued_page_not_dirty mem0/0x601000 page_abs=0x601"


class CountRanges(unittest.TestCase):
    def test_first_page_on_preempt_the_rest_queued(self):
        lines = [request(0x400000, 2), send(0x400), QUEUED, NOT_DIRTY, request(0x800000, 1),
                 send(0x800)]
        self.assertEqual(count_ranges(lines, HUGE),
                         {"ranges": 1, "tail_on_preempt": 0, "queued": 2})

    def test_the_whole_range_on_preempt(self):
        # As stock QEMU 10.2.2's return path sends it.
        lines = [request(0x400000, 2), send(0x400), send(0x600), request(0x800000, 2),
                 send(0x800), send(0xa00)]
        self.assertEqual(count_ranges(lines, HUGE),
                         {"ranges": 2, "tail_on_preempt": 2, "queued": 0})

    def test_single_pages_do_not_count(self):
        lines = [request(0x400000, 1), send(0x400), request(0x600000, 1), send(0x600)]
        self.assertEqual(count_ranges(lines, HUGE)["ranges"], 0)

    def test_a_page_asked_again_alone_is_no_tail(self):
        # The destination asks again for a pre-paged page it faults on.
        lines = [request(0x400000, 2), send(0x400), request(0x600000, 1), send(0x600)]
        self.assertEqual(count_ranges(lines, HUGE)["tail_on_preempt"], 0)

    def test_other_threads_lines_do_not_end_a_request(self):
        lines = [request(0x400000, 2), send(0x400), QUEUED, "ram_save_page mem0: offset: 0x0",
                 send(0x600)]
        self.assertEqual(count_ranges(lines, HUGE)["tail_on_preempt"], 1)


if __name__ == "__main__":
    unittest.main()
