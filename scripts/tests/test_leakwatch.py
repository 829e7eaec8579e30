# SPDX-License-Identifier: GPL-2.0-or-later
"""The leak watch of migration chains (postcopy_demo/leakwatch.py): which
samples are compared with which, what counts as growth, the memory bound;
and the chain's plans and its reading of a cancel (scenarios/chain.py)."""

import os
import shutil
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from postcopy_demo import leakwatch  # noqa: E402
from postcopy_demo.leakwatch import Sample  # noqa: E402
from postcopy_demo.options import MigrateError  # noqa: E402
from postcopy_demo.scenarios import chain  # noqa: E402

MiB_KB = 1024


def hop(n, fds=40, threads=8, rss=600, dst_fds=None, dst_threads=None, dst_rss=None,
        src_after_fds=None):
    """The three samples of a plain hop n (hop 1's source booted)."""
    role = "booted source" if n == 1 else "source"
    src = "src" if n == 1 else "dst%d" % (n - 1)
    return [
        Sample(n, src, role, "before", fds, threads, rss * MiB_KB, {"socket": fds}),
        Sample(n, src, role, "after", src_after_fds or fds, threads, rss * MiB_KB,
               {"socket": src_after_fds or fds}),
        Sample(n, "dst%d" % n, "destination", "end", dst_fds or fds, dst_threads or threads,
               (dst_rss or rss) * MiB_KB, {"socket": dst_fds or fds},
               {"worker": dst_threads or threads}),
    ]


class Counts(unittest.TestCase):
    def test_equal_counts_along_the_chain_pass(self):
        samples = [s for n in range(1, 11) for s in hop(n)]
        self.assertEqual(leakwatch.count_problems(samples), [])

    def test_one_more_fd_at_a_destination_fails_naming_hop_series_and_kind(self):
        samples = hop(1) + hop(2) + hop(3, dst_fds=41) + hop(4)
        problems = leakwatch.count_problems(samples)
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("hop 3, destination end: dst3 fds 41 > 40 at hop 2 (dst2)", problems[0])
        self.assertIn("+1 socket", problems[0])

    def test_a_leak_per_hop_fails_at_every_hop_it_grows(self):
        samples = [s for n in range(1, 5) for s in hop(n, fds=40 + n)]
        problems = leakwatch.count_problems(samples)
        # sources from hop 2 on (2 series), destinations from hop 1 on
        self.assertEqual(len([p for p in problems if "source before" in p]), 2)
        self.assertEqual(len([p for p in problems if "source after" in p]), 2)
        self.assertEqual(len([p for p in problems if "destination end" in p]), 3)

    def test_a_thread_more_fails_and_names_the_thread(self):
        samples = hop(1) + hop(2) + hop(3, dst_threads=9)
        problems = leakwatch.count_problems(samples)
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("threads 9 > 8", problems[0])
        self.assertIn("+1 worker", problems[0])

    def test_fewer_is_not_growth(self):
        samples = hop(1) + hop(2) + hop(3, fds=39) + hop(4, fds=39)
        self.assertEqual(leakwatch.count_problems(samples), [])

    def test_the_booted_source_is_compared_with_no_one(self):
        # hop 1's source never ran an incoming migration: fewer fds than
        # the sources that did is no growth at hop 2.
        samples = hop(1, fds=30) + hop(2, fds=40)
        samples = [s for s in samples if s.role != "destination"]
        self.assertEqual(leakwatch.count_problems(samples), [])
        self.assertNotIn("booted source before", leakwatch.by_series(samples))

    def test_a_retry_is_compared_with_the_same_process_before_its_first_attempt(self):
        samples = hop(1) + hop(2) + hop(3)
        samples.append(Sample(3, "dst2", "source", "retry", 41, 8, 600 * MiB_KB,
                              {"socket": 40, "anon_inode:[eventfd]": 1}))
        problems = leakwatch.count_problems(samples)
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("before its first attempt", problems[0])
        self.assertIn("+1 anon_inode:[eventfd]", problems[0])

    def test_a_retry_is_not_in_the_hop_over_hop_series(self):
        samples = hop(1) + hop(2) + hop(3)
        samples.append(Sample(3, "dst2", "source", "retry", 40, 8, 600 * MiB_KB))
        self.assertEqual(leakwatch.count_problems(samples), [])
        self.assertNotIn("source retry", leakwatch.by_series(samples))

    def test_samples_are_compared_in_hop_order_whatever_order_they_came(self):
        samples = list(reversed(hop(1) + hop(2) + hop(3, dst_fds=41)))
        problems = leakwatch.count_problems(samples)
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("at hop 2", problems[0])


class Memory(unittest.TestCase):
    def test_growth_is_measured_per_series_over_the_previous_hop(self):
        samples = hop(1) + hop(2, rss=610) + hop(3, rss=605, dst_rss=700)
        growth = {(s.hop, s.series): d for s, d in leakwatch.rss_growth(samples)}
        self.assertIsNone(growth[(1, "destination end")])
        self.assertEqual(growth[(2, "destination end")], 10 * MiB_KB)
        self.assertEqual(growth[(3, "destination end")], 90 * MiB_KB)
        self.assertIsNone(growth[(2, "source before")])
        self.assertEqual(growth[(3, "source before")], -5 * MiB_KB)
        self.assertNotIn((1, "booted source before"), growth)

    def test_only_growth_past_the_bound_fails(self):
        samples = hop(1) + hop(2, dst_rss=700) + hop(3, dst_rss=828)
        self.assertEqual(leakwatch.rss_problems(samples, 128 * MiB_KB), [])
        samples += hop(4, dst_rss=958)
        problems = leakwatch.rss_problems(samples, 128 * MiB_KB)
        self.assertEqual(len(problems), 1, problems)
        self.assertIn("hop 4, destination end: dst4 VmRSS grew by 130 MiB", problems[0])

    def test_the_bound_is_an_eighth_of_guest_ram_and_never_below_64_mib(self):
        self.assertEqual(chain.rss_bound_kb(2048), 256 * MiB_KB)
        self.assertEqual(chain.rss_bound_kb(512), 64 * MiB_KB)
        self.assertEqual(chain.rss_bound_kb(128), 64 * MiB_KB)


class Readings(unittest.TestCase):
    def test_fd_kinds_drop_what_makes_each_process_its_own(self):
        self.assertEqual(leakwatch.fd_kind("socket:[123456]"), "socket")
        self.assertEqual(leakwatch.fd_kind("pipe:[99]"), "pipe")
        self.assertEqual(leakwatch.fd_kind("anon_inode:[eventfd]"), "anon_inode:[eventfd]")
        self.assertEqual(leakwatch.fd_kind("/run/x/20250101-1200-77/dst3.stderr.log"),
                         leakwatch.fd_kind("/run/x/20250101-1200-77/dst4.stderr.log"))

    def test_this_process_can_be_read(self):
        s = leakwatch.take(os.getpid(), 1, "self", "source", "before", settle=2,
                           interval=0.01, still=2)
        self.assertGreater(s.fds, 0)
        self.assertGreaterEqual(s.threads, 1)
        self.assertGreater(s.rss_kb, 0)
        self.assertEqual(s.fds, sum(s.fd_kinds.values()))

    def test_diff_names_what_changed(self):
        self.assertEqual(leakwatch.diff({"a": 1, "b": 2}, {"a": 1, "b": 1, "c": 1}),
                         "-1 b, +1 c")


class Plans(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp()

    def tearDown(self):
        shutil.rmtree(self.tmp)

    def test_ten_hops_mix_every_kind_each_after_a_plain_hop(self):
        plan = chain.default_plan(10)
        self.assertEqual(plan, ["plain", "plain", "cut", "plain", "mismatch", "plain",
                                "cancel", "plain", "plain", "plain"])

    def test_a_short_chain_keeps_what_fits(self):
        self.assertEqual(chain.default_plan(4), ["plain", "plain", "cut", "plain"])
        self.assertEqual(chain.default_plan(1), ["plain"])

    def test_the_states_after_the_last_cancel_are_read_from_the_trace(self):
        path = os.path.join(self.tmp, "src.stderr.log")
        with open(path, "w") as f:
            f.write("1@1.0:migrate_set_state new state active\n"
                    "1@2.0:migration_cancel \n"
                    "1@2.1:migrate_set_state new state cancelling\n"
                    "1@2.2:migrate_set_state new state cancelled\n"
                    "1@5.0:migrate_set_state new state setup\n"
                    "1@6.0:migration_cancel \n"
                    "qemu-system-x86_64: failed to save SaveStateEntry\n"
                    "1@6.1:migrate_set_state new state failed\n")
        self.assertEqual(chain.states_after_cancel(path), ["failed"])
        self.assertEqual(chain.states_after_cancel(path + ".missing"), [])

    def test_a_plan_names_known_kinds_only(self):
        self.assertEqual(chain.parse_plan("plain, cancel"), ["plain", "cancel"])
        with self.assertRaises(MigrateError):
            chain.parse_plan("plain,teleport")


if __name__ == "__main__":
    unittest.main()
