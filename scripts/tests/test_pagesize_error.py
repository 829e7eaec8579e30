# SPDX-License-Identifier: GPL-2.0-or-later
"""qemu-test.sh's page-size check (scenarios/pagesize_error.py): what each
expectation accepts, and which capabilities each side is given."""

import os
import sys
import types
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from postcopy_demo import migration  # noqa: E402
from postcopy_demo.options import Options  # noqa: E402
from postcopy_demo.scenarios.pagesize_error import EXPECTATIONS, options  # noqa: E402

WORDS = ("postcopy: the destination's RAM uses pages of 2 MiB, the source's of 4 KiB: "
         "the page sizes must match")
SIBLING = "Sibling indicated error 1"
SETUP = "ram_save_setup failed: Broken pipe"


class Expectations(unittest.TestCase):
    def test_words_needs_both_sizes(self):
        words = EXPECTATIONS["words"].holds
        self.assertTrue(words(WORDS))
        self.assertFalse(words(SIBLING))
        self.assertFalse(words(SETUP))
        self.assertFalse(words("the source's pages are 4 KiB"))
        self.assertFalse(words(""))

    def test_sibling_is_any_error_without_the_words(self):
        sibling = EXPECTATIONS["sibling"].holds
        self.assertTrue(sibling(SIBLING))
        self.assertTrue(sibling(SETUP))
        self.assertFalse(sibling(WORDS))
        self.assertFalse(sibling(""))       # no error: the migration did not fail

    def test_each_reads_one_side(self):
        for e in EXPECTATIONS.values():
            self.assertIn(e.side, ("source", "destination"))


class Capabilities(unittest.TestCase):
    """The report is on exactly the sides named, nothing else optional."""

    def caps(self, src_cap, dst_cap):
        s = types.SimpleNamespace(opts=options("src-bin", "dst-bin", src_cap, dst_cap, "logs"))
        return (migration.side_capabilities(s, "src", ["postcopy-ram"]),
                migration.side_capabilities(s, "dst", ["postcopy-ram"]))

    def test_named_sides_only(self):
        report = migration.PAGE_SIZE_REPORT
        for src_cap in (False, True):
            for dst_cap in (False, True):
                (src, src_opt), (dst, dst_opt) = self.caps(src_cap, dst_cap)
                self.assertEqual(report in src, src_cap)
                self.assertEqual(report in dst, dst_cap)
                self.assertEqual((src_opt, dst_opt), ((), ()))
                self.assertIn("postcopy-ram", src)
                self.assertIn("postcopy-ram", dst)

    def test_other_runs_ask_for_it_where_known(self):
        s = types.SimpleNamespace(opts=Options())
        caps, optional = migration.side_capabilities(s, "dst", ["postcopy-ram"])
        self.assertEqual(caps, ["postcopy-ram"])
        self.assertEqual(optional, (migration.PAGE_SIZE_REPORT,))


if __name__ == "__main__":
    unittest.main()
