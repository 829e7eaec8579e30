# SPDX-License-Identifier: GPL-2.0-or-later
"""The e2e tests of stock fixes 0002 (request-flush-2M) and 0004
(rate-limit-leak-4K): their reading of QEMU's traces."""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from postcopy_demo.scenarios.ratelimitleak import count  # noqa: E402
from postcopy_demo.scenarios.requestflush import judge  # noqa: E402

HUGE = 2 << 20


def at(ms, line):
    """A trace line as -msg timestamp=on prints it, ms after a minute."""
    return "2026-12-07T05:04:%09.6fZ %s" % (ms / 1000.0, line)


def dequeued(ms, offset):
    return at(ms, "get_queued_page mem0/0x%x page_abs=0x%x" % (offset, offset >> 12))


def saved(ms, offset):
    return at(ms, "ram_save_page mem0: offset: 0x%x host: 0x7f0000000000" % offset)


def wait(begin, end):
    return [at(begin, "migration_rate_limit_pre 80 ms"),
            at(end, "migration_rate_limit_post urgent: 0")]


def loaded(ms, offset):
    return at(ms, "ram_load_postcopy_loop chan=0 addr=0x%x flags=0x8" % offset)


LAST_OF_0x400000 = 0x400000 + HUGE - 4096


class RequestFlush(unittest.TestCase):
    def test_tail_held_through_the_wait_in_the_next_page(self):
        src = [dequeued(1, 0x400000), saved(2, LAST_OF_0x400000), saved(3, 0x600000)] \
            + wait(4, 90)
        dst = [loaded(95, LAST_OF_0x400000)]
        self.assertEqual(judge(src, dst, HUGE), {"requested": 1, "judged": 1, "waited": 1})

    def test_flushed_before_the_wait(self):
        src = [dequeued(1, 0x400000), saved(2, LAST_OF_0x400000), saved(3, 0x600000)] \
            + wait(4, 90)
        dst = [loaded(5, LAST_OF_0x400000)]
        self.assertEqual(judge(src, dst, HUGE), {"requested": 1, "judged": 1, "waited": 0})

    def test_a_wait_inside_the_requested_page_is_not_judged(self):
        # The page itself may wait for the rate limit; only a wait after
        # the thread moved on says the tail sat in the buffer.
        src = [dequeued(1, 0x400000)] + wait(2, 90) + [saved(91, LAST_OF_0x400000)]
        dst = [loaded(95, LAST_OF_0x400000)]
        self.assertEqual(judge(src, dst, HUGE)["judged"], 0)

    def test_a_short_wait_is_not_judged(self):
        src = [dequeued(1, 0x400000), saved(3, 0x600000)] + wait(4, 10)
        dst = [loaded(12, LAST_OF_0x400000)]
        self.assertEqual(judge(src, dst, HUGE)["judged"], 0)

    def test_the_log_backends_own_stamp(self):
        src = ["1234@1000.001000:get_queued_page mem0/0x400000 page_abs=0x400",
               "1234@1000.003000:ram_save_page mem0: offset: 0x600000 host: 0x7f00",
               "1234@1000.004000:migration_rate_limit_pre 80 ms",
               "1234@1000.090000:migration_rate_limit_post urgent: 0"]
        dst = ["99@1000.095000:ram_load_postcopy_loop chan=0 addr=0x5ff000 flags=0x8"]
        self.assertEqual(judge(src, dst, HUGE)["waited"], 1)


class RateLimitLeak(unittest.TestCase):
    def test_counts(self):
        lines = ["ram_save_queue_pages mem0: start: 0x3e5000 len: 0x1000",
                 "ram_save_queue_pages mem0: start: 0x3e6000 len: 0x1000",
                 "get_queued_page mem0/0x3e5000 page_abs=0x3e5",
                 "migration_rate_limit_post urgent: 1",
                 "migration_rate_limit_post urgent: 0",
                 "get_queued_page_not_dirty mem0/0x3ea000 page_abs=0x3ea"]
        self.assertEqual(count(lines), {"queued": 2, "dequeued": 2, "urgent": 1, "slept": 1})


if __name__ == "__main__":
    unittest.main()
