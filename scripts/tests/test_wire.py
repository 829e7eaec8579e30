# SPDX-License-Identifier: GPL-2.0-or-later
"""Unit tests of make bench-e2e's bytes on the wire (postcopy_demo/wire.py)
and of the link's arithmetic (postcopy_demo/bottleneck.py).  Run:
python3 -m unittest discover -s scripts/tests."""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from postcopy_demo import bottleneck as bn  # noqa: E402
from postcopy_demo import wire  # noqa: E402


def steady(rate, t_end, step=0.1, read=0.0, start=0.0):
    """Samples of a counter growing at rate bytes/s, each read in `read` s."""
    n = int(round((t_end - start) / step)) + 1
    return [(start + i * step - read / 2, start + i * step + read / 2,
             int(rate * i * step)) for i in range(n)]


class WireStats(unittest.TestCase):
    def test_steady_rate_is_not_over(self):
        st = wire.wire_stats(steady(64e6, 10.0), 2.0, 8.0, {"link": (64e6, 0.0)})
        self.assertAlmostEqual(st["mean_Bps"], 64e6, delta=1)
        self.assertAlmostEqual(st["peak_Bps"], 64e6, delta=1)
        self.assertEqual(st["over"], {"link": False})
        self.assertEqual(st["phase_s"], 6.0)

    def test_a_burst_over_the_limit_is_found(self):
        s = steady(50e6, 10.0)
        # 1 s at 80 MB/s from t=4: every later counter 30 MB higher
        s = [(a, b, n + int(min(max(a - 4.0, 0.0), 1.0) * 30e6)) for a, b, n in s]
        st = wire.wire_stats(s, 1.0, 9.0, {"link": (64e6, 131072.0), "cap": (90e6, 0.0)})
        self.assertEqual(st["over"], {"link": True, "cap": False})
        self.assertAlmostEqual(st["peak_Bps"], 80e6, delta=1e3)
        self.assertAlmostEqual(st["mean_Bps"], (8 * 50e6 + 30e6) / 8, delta=1)

    def test_the_allowance_and_the_reads_length_are_given_to_the_link(self):
        # 0.2 % over the rate in every 1 s: within a 128 KiB burst
        s = steady(64.1e6, 5.0)
        self.assertFalse(wire.wire_stats(s, 0.5, 4.5, {"l": (64e6, 131072.0)})["over"]["l"])
        self.assertTrue(wire.wire_stats(s, 0.5, 4.5, {"l": (64e6, 0.0)})["over"]["l"])
        # a counter read in 20 ms: a stretch may have lasted 1.02 s
        s = steady(65e6, 5.0, read=0.02)
        st = wire.wire_stats(s, 0.5, 4.5, {"l": (64e6, 0.0)})
        self.assertFalse(st["over"]["l"])
        self.assertEqual(st["read_s_max"], 0.02)

    def test_a_phase_shorter_than_the_window(self):
        st = wire.wire_stats(steady(10e6, 3.0), 1.0, 1.55, {})
        self.assertAlmostEqual(st["peak_window_s"], 0.5)
        self.assertAlmostEqual(st["peak_Bps"], 10e6, delta=1)

    def test_no_samples_around_the_phase(self):
        self.assertEqual(wire.wire_stats(steady(1e6, 2.0), 3.0, 4.0, {}), {})
        self.assertEqual(wire.wire_stats([], 0.0, 1.0, {}), {})
        self.assertEqual(wire.wire_stats(steady(1e6, 2.0), 1.0, 1.0, {}), {})

    def test_backlog(self):
        rows = [(0.0, 0.0, 0, 0, 5), (1.0, 1.0, 10, 500, 5), (2.0, 2.0, 20, 900, 7),
                (3.0, 3.0, 30, 100, 9)]
        self.assertEqual(wire.backlog_stats(rows, 0.5, 2.5),
                         {"backlog_max_bytes": 900, "drops": 2})


class Link(unittest.TestCase):
    def test_rates(self):
        self.assertEqual(bn.parse_rate("512mbit"), 512 * 10 ** 6)
        self.assertEqual(bn.parse_rate("64mibit"), 64 << 20)
        self.assertEqual(bn.parse_rate("1.5gbit"), 1500 * 10 ** 6)
        for bad in ("512", "64mbps", "fast", "1bit"):
            with self.assertRaises(ValueError):
                bn.parse_rate(bad)
        self.assertEqual(bn.rate_text(512 * 10 ** 6), "512mbit")
        self.assertEqual(bn.rate_text(64 << 20), "%dbit" % (64 << 20))

    def test_queue_and_burst(self):
        self.assertEqual(bn.queue_bytes(512 * 10 ** 6, 100.0), 6400000)
        self.assertEqual(bn.burst_bytes(512 * 10 ** 6), 131072)
        self.assertEqual(bn.burst_bytes(10 * 10 ** 9), 2500000)

    def test_shaper_commands(self):
        (tbf,) = bn.shaper_argv("tbf", "ns", "dev", 512 * 10 ** 6, 100.0)
        self.assertEqual(tbf[-7:], ["tbf", "rate", "512000000bit", "burst", "131072",
                                    "limit", "6400000"])
        htb = bn.shaper_argv("htb", "ns", "dev", 512 * 10 ** 6, 100.0)
        self.assertEqual(len(htb), 3)
        self.assertEqual(htb[2][-4:], ["10:", "bfifo", "limit", "6400000"])

    def test_shaper_change_commands(self):
        # A reshape changes the rate and the queue in place; htb keeps its
        # root qdisc (adding it again would fail: it exists).
        (tbf,) = bn.shaper_argv("tbf", "ns", "dev", 16 * 10 ** 6, 500.0, "change")
        self.assertEqual(tbf[3:5], ["qdisc", "change"])
        self.assertEqual(tbf[-6:-4], ["rate", "16000000bit"])
        htb = bn.shaper_argv("htb", "ns", "dev", 16 * 10 ** 6, 500.0, "change")
        self.assertEqual([a[3:5] for a in htb], [["class", "change"], ["qdisc", "change"]])
        self.assertEqual(htb[1][-1], "1000000")


if __name__ == "__main__":
    unittest.main()
