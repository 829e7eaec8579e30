# SPDX-License-Identifier: GPL-2.0-or-later
"""scripts/eexist-repro.py's reading of a destination's log, and the
Wilson interval it gives the rate."""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from postcopy_demo.benchstats import wilson  # noqa: E402
from postcopy_demo.eexist import read_log  # noqa: E402

# As QEMU 10.2.2 writes them with -trace ... and -msg timestamp=on
# (uffd_copy_page()'s error_report(), util/userfaultfd.c).
LOG = """\
1234@1765000000.000001:ram_discard_range mem0: start: 0 40000000
1234@1765000001.000001:ram_discard_range mem0: start: 2000000 200000
1234@1765000002.000001:postcopy_place_page host=0x7f0000200000
1234@1765000002.000002:postcopy_place_page_zero host=0x7f0000400000
2026-12-07T16:00:00.000000Z qemu-system-x86_64: uffd_copy_page() failed: \
dst_addr=0x7f0000600000 src_addr=0x7f1000000000 length=2097152 mode=0 errno=17
2026-12-07T16:00:00.000001Z qemu-system-x86_64: uffd_copy_page() failed: \
dst_addr=0x7f0000200000 src_addr=0x7f1000000000 length=2097152 mode=0 errno=17
2026-12-07T16:00:00.000002Z qemu-system-x86_64: uffd_copy_page() failed: \
dst_addr=0x7f0000600000 src_addr=0x7f1000000000 length=2097152 mode=0 errno=17
"""


class ReadLog(unittest.TestCase):
    def test_hosts_once_each_in_order(self):
        self.assertEqual(read_log(LOG)["hosts"], ["0x7f0000600000", "0x7f0000200000"])

    def test_placed_before(self):
        self.assertEqual(read_log(LOG)["placed_before"], [False, True])

    def test_a_longer_address_is_not_the_same_page(self):
        log = "postcopy_place_page host=0x7f00006000001\n" \
              "x: uffd_copy_page() failed: dst_addr=0x7f0000600000 src_addr=0x1 length=1 " \
              "mode=0 errno=17\n"
        self.assertEqual(read_log(log)["placed_before"], [False])

    def test_other_errors_are_not_eexist(self):
        log = "x: uffd_copy_page() failed: dst_addr=0x7f0000600000 src_addr=0x1 length=1 " \
              "mode=0 errno=12\nx: uffd_copy_page() failed: dst_addr=0x7f0000800000 " \
              "src_addr=0x1 length=1 mode=0 errno=170\n"
        self.assertEqual(read_log(log)["hosts"], [])

    def test_zero_page(self):
        log = "x: uffd_zero_page() failed: addr=0x7f0000601000 length=4096 mode=0 errno=17\n"
        self.assertEqual(read_log(log)["hosts"], ["0x7f0000601000"])

    def test_older_qemu_wording(self):
        log = "x: postcopy_place_page: File exists copy host: 0x7f0000600000 from: 0x1\n"
        self.assertEqual(read_log(log)["hosts"], ["0x7f0000600000"])

    def test_discards_counted(self):
        self.assertEqual(read_log(LOG)["discards"], 2)

    def test_clean_log(self):
        got = read_log("1@1.0:postcopy_place_page host=0x1000\n")
        self.assertEqual((got["hosts"], got["library"], got["discards"]), ([], 0, 0))

    def test_library_refusal(self):
        log = "qemu-system-x86_64: postcopy-rs: postcopy_rs_place_page: 0x7f0000600000 " \
              "+2097152: the page is already present (EEXIST)\n"
        self.assertEqual(read_log(log)["library"], 1)


class Wilson(unittest.TestCase):
    def test_known_values(self):
        lo, hi = wilson(5, 70)
        self.assertAlmostEqual(lo, 0.0309, places=3)
        self.assertAlmostEqual(hi, 0.1569, places=3)

    def test_zero_hits(self):
        lo, hi = wilson(0, 60)
        self.assertEqual(lo, 0.0)
        self.assertAlmostEqual(hi, 0.0602, places=3)

    def test_no_trials(self):
        self.assertEqual(wilson(0, 0), (0.0, 1.0))


if __name__ == "__main__":
    unittest.main()
