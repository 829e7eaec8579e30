# SPDX-License-Identifier: GPL-2.0-or-later
"""Unit tests of make bench-e2e's report (postcopy_demo/bench_e2e_report.py):
what --quick fails on, the table, and the document section between the
markers.  Run: python3 -m unittest discover -s scripts/tests."""

import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from postcopy_demo import bench_e2e_report as br  # noqa: E402
from postcopy_demo import benchstats as bs  # noqa: E402


def rec(seq, kind, blocktime, **kw):
    r = {"seq": seq, "pair": seq // 2, "kind": kind, "cell": "seq/4k/preempt-off", "ok": True,
         "blocktime_ms": blocktime, "vcpu_blocktime_ms": [blocktime, 1],
         "postcopy_latency_ns": 5000, "postcopy_requests": 10, "postcopy_ms": 100.0,
         "source_postcopy_ms": 90.0, "downtime_ms": 2, "total_time_ms": 1000,
         "guest_worst_us": 300.0, "guest_p99_us": 8.0, "accel": "tcg"}
    r.update(kw)
    return r


META = {"date": "d", "command": "c", "cpu_model": "m", "cpus": 2, "host": "h", "kernel": "k",
        "load_start": "1", "load_end": "2", "qemu_version": "10.2.2", "patched": "p",
        "unpatched": "u", "mem": 1024, "smp": 2, "precopy_rate": "2000", "switch_after": 64,
        "runs": 2, "results": "r"}


class Missing(unittest.TestCase):
    def test_complete(self):
        recs = [rec(0, "unpatched", 10), rec(1, "patched", 20)]
        self.assertEqual(br.missing(recs), [])

    def test_zero_is_a_value(self):
        recs = [rec(0, "unpatched", 0), rec(1, "patched", 0)]
        self.assertEqual(br.missing(recs), [])

    def test_missing_figure(self):
        recs = [rec(0, "unpatched", 10), rec(1, "patched", 20, guest_p99_us=None)]
        self.assertEqual(br.missing(recs), ["seq/4k/preempt-off run 1 (patched): guest_p99"])

    def test_fault_thread_not_found(self):
        # sampled but never seen (a thread under another name): missing;
        # a run with no request has no CPU per request, and that is no gap
        recs = [rec(0, "unpatched", 10, fault_thread_ns=20000),
                rec(1, "patched", 20, fault_thread_ns=None),
                rec(2, "patched", 20, fault_thread_ns=None, postcopy_requests=0)]
        self.assertEqual(br.missing(recs), ["seq/4k/preempt-off run 1 (patched): fault_cpu"])

    def test_receive_threads_are_not_required(self):
        recs = [rec(0, "unpatched", 10, receive_threads_ns=3e9),
                rec(1, "patched", 20, receive_threads_ns=None), rec(2, "patched", 20)]
        self.assertEqual(br.missing(recs), [])

    def test_receive_share_of_the_phase(self):
        f = dict((k, f) for k, _, _, f in br.METRICS)["receive_cpu"]
        self.assertAlmostEqual(f(rec(0, "patched", 1, receive_threads_ns=25e6,
                                     postcopy_ms=100.0)), 25.0)

    def test_no_pair(self):
        recs = [rec(0, "unpatched", 10), rec(1, "patched", 20, ok=False)]
        self.assertEqual(br.missing(recs), ["seq/4k/preempt-off: no complete pair"])
        self.assertEqual(br.missing([]), ["no run at all"])


class Render(unittest.TestCase):
    def test_table(self):
        recs = [rec(0, "unpatched", 10), rec(1, "patched", 20),
                rec(2, "unpatched", 10), rec(3, "patched", 5)]
        md = br.render(recs, dict(META))
        self.assertIn("| seq/4k/preempt-off | 2 | 10.0 ms | 12.5 ms | 1.25x [0.50, 2.00] | "
                      "inside the noise | 1.00x [1.00, 1.00] | 0.30 / 0.30 ms |", md)
        for key, what, _, _ in br.METRICS:
            # records without byte counters (before the link mode) have no such rows
            (self.assertNotIn if key in br.WIRE else self.assertIn)("| %s |" % what, md)


    def test_one_long_stall_shows_though_no_median_moves(self):
        recs = [rec(i, k, 10, guest_worst_us=300.0) for i, k in
                enumerate(["unpatched", "patched"] * 3)]
        recs[3]["guest_worst_us"] = 2.6e6
        recs[3]["total_time_ms"] = 1100
        md = br.render(recs, dict(META, runs=3))
        self.assertIn("| 1.00x [1.00, 1.10] | 0.30 / 2600 ms |", md)

    def test_bandwidth_cap_is_stated(self):
        recs = [rec(0, "unpatched", 10), rec(1, "patched", 20)]
        self.assertIn("not capped", br.render(recs, dict(META)))
        md = br.render(recs, dict(META, postcopy_bandwidth=64))
        self.assertIn("`max-postcopy-bandwidth` 64 MiB/s on both builds", md)


    def test_run_order_is_read_from_the_records(self):
        def two_cells(order):
            return [rec(i, k, 10, cell=c) for i, (c, k) in enumerate(order)]
        back_to_back = two_cells([("a", "unpatched"), ("a", "patched"),
                                  ("a", "unpatched"), ("a", "patched"),
                                  ("b", "unpatched"), ("b", "patched")])
        interleaved = two_cells([("a", "unpatched"), ("a", "patched"),
                                 ("b", "unpatched"), ("b", "patched")])
        self.assertIn("back to back", br.run_order(back_to_back))
        self.assertIn("interleaved", br.run_order(interleaved))
        self.assertIn("interleaved", br.render(interleaved, dict(META, runs=1)))
        self.assertIn("unpatched then patched", br.run_order(interleaved))
        turns = [dict(rec(i, k, 10, cell=c), pair=p)
                 for i, (c, p, k) in enumerate(bs.schedule(["a", "b"], 2))]
        self.assertIn("taking turns going first", br.run_order(turns))


def wired(seq, kind, blocktime, mean, peak, over=(), **kw):
    return rec(seq, kind, blocktime, mode="link", wire={"mean_Bps": mean, "peak_Bps": peak},
               wire_mean_Bps=mean, wire_peak_Bps=peak, wire_over=list(over), **kw)


LINK = dict(META, mode="link", link_rate="512mbit", link_rate_bps=512 * 10 ** 6,
            link="tc tbf at 512mbit", shaper_probe="tbf: yes")


class Link(unittest.TestCase):
    def test_the_mode_is_in_the_title_and_the_bytes_on_the_wire_in_the_table(self):
        recs = [wired(0, "unpatched", 10, 40e6, 63e6), wired(1, "patched", 5, 50e6, 64e6),
                wired(2, "unpatched", 10, 42e6, 63.5e6),
                wired(3, "patched", 5, 52e6, 70e6, over=["link"])]
        md = br.render(recs, dict(LINK))
        self.assertIn("## Postcopy end to end on a shaped link (512mbit)", md)
        self.assertIn("No `max-postcopy-bandwidth` on either build", md)
        self.assertIn("tbf: yes", md)
        self.assertIn("wire MB/s (link 64.0)", md)
        self.assertIn("| 41.0 / 63.5 ; 51.0 / 70.0 | 0 of 2 / 1 of 2 |", md)
        for _, what, _, _ in br.METRICS:
            self.assertIn("| %s |" % what, md)
        cap = br.render(recs, dict(META, mode="qemu-cap", postcopy_bandwidth=64))
        self.assertIn("(QEMU-cap mode)", cap)
        self.assertIn("wire MB/s (cap 67.1)", cap)

    def test_missing_wire_figure(self):
        recs = [wired(0, "unpatched", 10, 40e6, 63e6), wired(1, "patched", 5, 50e6, None)]
        self.assertEqual(br.missing(recs), ["seq/4k/preempt-off run 1 (patched): wire_peak"])
        # an older record without "wire" at all is not missing it
        self.assertEqual(br.missing([rec(0, "unpatched", 1), rec(1, "patched", 1)]), [])

    def test_short_block_links_the_detail(self):
        recs = [wired(0, "unpatched", 10, 40e6, 63e6), wired(1, "patched", 5, 50e6, 64e6)]
        md = br.render_short(recs, dict(LINK), "bench/x.md")
        self.assertIn("[bench/x.md](bench/x.md)", md)
        self.assertIn("| seq/4k/preempt-off | 1 |", md)
        self.assertNotIn("### ", md)
        self.assertLess(len(md.splitlines()), 10)


class Doc(unittest.TestCase):
    def test_block_names(self):
        self.assertEqual(br.block_name({"postcopy_bandwidth": 64}), "bench-e2e")
        self.assertEqual(br.block_name({"prepage": 16, "postcopy_bandwidth": 64}),
                         "bench-e2e-prepage")
        self.assertEqual(br.block_name({}), "bench-e2e-uncapped")
        self.assertEqual(br.block_name({"prepage": 16, "postcopy_bandwidth": 0}),
                         "bench-e2e-prepage-uncapped")
        self.assertEqual(br.block_name({"prepage": 0, "postcopy_bandwidth": 32}),
                         "bench-e2e-capped-32")
        self.assertEqual(br.block_name({"mode": "qemu-cap", "postcopy_bandwidth": 64}),
                         "bench-e2e")
        self.assertEqual(br.block_name({"mode": "link", "link_rate": "512mbit"}),
                         "bench-e2e-link-512mbit")
        self.assertEqual(br.block_name({"mode": "link", "link_rate": "1gbit", "prepage": 16,
                                        "postcopy_bandwidth": 64}),
                         "bench-e2e-link-1gbit-prepage-capped-64")


    def test_section_replaced_rest_kept(self):
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "B.md")
            with open(p, "w") as f:
                f.write("# Benchmarks\n\nmicro\n")
            br.write_doc(p, "first\n")
            br.write_doc(p, "second\n")
            with open(p) as f:
                text = f.read()
        self.assertTrue(text.startswith("# Benchmarks\n\nmicro\n"))
        self.assertEqual(text.count(br.BEGIN), 1)
        self.assertEqual(text.count(br.END), 1)
        self.assertIn("second", text)
        self.assertNotIn("first", text)

    def test_named_blocks_do_not_overwrite_each_other(self):
        with tempfile.TemporaryDirectory() as d:
            p = os.path.join(d, "B.md")
            br.write_doc(p, "off\n")
            br.write_doc(p, "on\n", "bench-e2e-prepage")
            br.write_doc(p, "on again\n", "bench-e2e-prepage")
            with open(p) as f:
                text = f.read()
        begin, end = br.markers("bench-e2e-prepage")
        self.assertEqual(text.count(begin), 1)
        self.assertEqual(text.count(end), 1)
        self.assertEqual(text.count(br.BEGIN), 1)
        self.assertIn("off", text)
        self.assertIn("on again", text)
        self.assertNotIn("on\n<", text)


if __name__ == "__main__":
    unittest.main()
