# SPDX-License-Identifier: GPL-2.0-or-later
"""Unit tests of make bench-e2e's statistics (postcopy_demo/benchstats.py)
and of the parser of the guest workload's STALLS lines.
Run: python3 -m unittest discover -s scripts/tests (scripts/test.sh does)."""

import os
import statistics
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from postcopy_demo import benchstats as bs  # noqa: E402
from postcopy_demo.guests import parse_stalls  # noqa: E402


def run(seq, kind, value):
    return {"seq": seq, "kind": kind, "v": value}


class Median(unittest.TestCase):
    def test_odd_even(self):
        self.assertEqual(bs.median([3, 1, 2]), 2.0)
        self.assertEqual(bs.median([4, 1, 3, 2]), 2.5)
        self.assertEqual(bs.median([7]), 7.0)

    def test_matches_statistics(self):
        xs = [0.3, 1.7, 0.9, 1.1, 5.0, 0.2, 0.95, 1.02]
        self.assertAlmostEqual(bs.median(xs), statistics.median(xs))

    def test_empty(self):
        with self.assertRaises(ValueError):
            bs.median([])

    def test_percentile(self):
        xs = [1.0, 2.0, 3.0, 4.0, 5.0]
        self.assertEqual(bs.percentile(xs, 0.0), 1.0)
        self.assertEqual(bs.percentile(xs, 1.0), 5.0)
        self.assertEqual(bs.percentile(xs, 0.5), 3.0)
        self.assertAlmostEqual(bs.percentile(xs, 0.125), 1.5)


class Pairing(unittest.TestCase):
    def test_abab_order(self):
        runs = [run(0, "unpatched", 10), run(1, "patched", 20),
                run(2, "unpatched", 30), run(3, "patched", 60)]
        prs = bs.pairs(list(reversed(runs)))      # input order does not matter
        self.assertEqual([(a["seq"], b["seq"]) for a, b in prs], [(0, 1), (2, 3)])
        self.assertEqual(bs.ratios(prs, lambda r: r["v"]), [2.0, 2.0])

    def test_unpaired_run_left_out(self):
        runs = [run(0, "unpatched", 10), run(1, "patched", 5), run(2, "unpatched", 7)]
        prs = bs.pairs(runs)
        self.assertEqual(len(prs), 1)
        self.assertEqual(bs.ratios(prs, lambda r: r["v"]), [0.5])

    def test_pair_numbers_keep_pairs_aligned_past_a_failure(self):
        # Pair 1's unpatched run failed (and was dropped): pair 2 must not
        # borrow pair 1's patched run.
        runs = [dict(run(0, "unpatched", 10), pair=0), dict(run(1, "patched", 20), pair=0),
                dict(run(3, "patched", 99), pair=1),
                dict(run(4, "unpatched", 30), pair=2), dict(run(5, "patched", 90), pair=2)]
        prs = bs.pairs(runs)
        self.assertEqual([(a["seq"], b["seq"]) for a, b in prs], [(0, 1), (4, 5)])
        self.assertEqual(bs.ratios(prs, lambda r: r["v"]), [2.0, 3.0])

    def test_schedule_interleaves_cells_and_alternates_who_goes_first(self):
        order = bs.schedule(["a", "b"], 2)
        self.assertEqual(order, [("a", 0, "unpatched"), ("a", 0, "patched"),
                                 ("b", 0, "unpatched"), ("b", 0, "patched"),
                                 ("a", 1, "patched"), ("a", 1, "unpatched"),
                                 ("b", 1, "patched"), ("b", 1, "unpatched")])

    def test_order_of_reads_who_went_first(self):
        recs = [dict(seq=i, cell=c, pair=p, kind=k)
                for i, (c, p, k) in enumerate(bs.schedule(["a", "b"], 3))]
        self.assertEqual(bs.order_of(recs), "alternating")
        # Older results: unpatched always first.
        old = [dict(seq=i, cell="a", pair=i // 2, kind=("unpatched", "patched")[i % 2])
               for i in range(6)]
        self.assertEqual(bs.order_of(old), "unpatched first")
        # Only the first run of a pair counts, whatever order seq lists them in.
        self.assertEqual(bs.order_of(list(reversed(old))), "unpatched first")

    def test_missing_or_zero_base_has_no_ratio(self):
        prs = [({"v": 0}, {"v": 3}), ({"v": None}, {"v": 3}), ({"v": 2}, {"v": None}),
               ({"v": 4}, {"v": 0}), ({"v": 4}, {"v": 2})]
        self.assertEqual(bs.ratios(prs, lambda r: r["v"]), [0.0, 0.5])


class Bootstrap(unittest.TestCase):
    XS = [0.8, 0.95, 1.0, 1.05, 1.1, 1.3, 0.9, 1.2, 0.85]

    def test_reproducible(self):
        self.assertEqual(bs.bootstrap_ci(self.XS), bs.bootstrap_ci(self.XS))

    def test_brackets_the_median_within_the_range(self):
        lo, hi = bs.bootstrap_ci(self.XS)
        self.assertLessEqual(min(self.XS), lo)
        self.assertLessEqual(lo, bs.median(self.XS))
        self.assertLessEqual(bs.median(self.XS), hi)
        self.assertLessEqual(hi, max(self.XS))
        self.assertLess(lo, hi)

    def test_constant(self):
        self.assertEqual(bs.bootstrap_ci([2.0] * 7), (2.0, 2.0))

    def test_wider_at_higher_level(self):
        lo95, hi95 = bs.bootstrap_ci(self.XS, level=0.95)
        lo50, hi50 = bs.bootstrap_ci(self.XS, level=0.5)
        self.assertLessEqual(lo95, lo50)
        self.assertGreaterEqual(hi95, hi50)

    def test_summary_and_verdict(self):
        s = bs.summarize(self.XS)
        self.assertEqual(s["n"], 9)
        self.assertTrue(s["noise"])
        self.assertEqual(bs.verdict(s), "inside the noise")
        low = bs.summarize([0.5, 0.6, 0.55, 0.58, 0.62, 0.52, 0.57])
        self.assertFalse(low["noise"])
        self.assertEqual(bs.verdict(low), "patched lower")
        self.assertEqual(bs.verdict(bs.summarize([1.5, 1.6, 1.7])), "patched higher")
        self.assertEqual(bs.verdict(bs.summarize([1.5])), "one pair: no interval")
        self.assertIsNone(bs.summarize([]))
        self.assertEqual(bs.verdict(None), "no ratio (a value is 0 or missing)")


class Stalls(unittest.TestCase):
    LINE = ("STALLS thread=0 cpu=0 pattern=seq accesses=102388 elapsed_ms=613.8 busy_ms=569.1 "
            "errors=0 done=1 done_ms=22.3 passes=12 worst_us=28092.0 p50_us=1.0 p99_us=2.0 "
            "stalled=26 stalled_ms=467.5 hist=0:102304,1:28,2:20,4:5,13:9,14:14")

    def test_thread_line(self):
        d = parse_stalls(self.LINE)
        self.assertEqual(d["thread"], 0)
        self.assertEqual(d["pattern"], "seq")
        self.assertEqual(d["worst_us"], 28092.0)
        self.assertEqual(d["p99_us"], 2.0)
        self.assertEqual(d["stalled_ms"], 467.5)
        self.assertEqual(d["hist"], {0: 102304, 1: 28, 2: 20, 4: 5, 13: 9, 14: 14})

    def test_total_line(self):
        d = parse_stalls("STALLS total threads=2 stall_us=50 pattern=seq accesses=5 "
                         "done=2/2 done_ms=1.5 worst_us=9.0 p99_us=8.0 hist=")
        self.assertEqual(d["threads"], 2)
        self.assertEqual(d["done"], "2/2")
        self.assertEqual(d["hist"], {})
        self.assertNotIn("total", d)


if __name__ == "__main__":
    unittest.main()
