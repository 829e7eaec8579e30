# SPDX-License-Identifier: GPL-2.0-or-later
"""qemu-test.sh's page-size check (scenarios/pagesize_error.py): what each
expectation of the destination's error accepts, what the source's error
must be, and that no side is given a capability of its own."""

import os
import sys
import types
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from postcopy_demo import migration  # noqa: E402
from postcopy_demo.scenarios.pagesize_error import (  # noqa: E402
    EXPECTATIONS,
    options,
    stock_source_error,
)

WORDS = ("load of migration failed: Operation not permitted: Postcopy needs matching RAM "
         "page sizes: the source's guest RAM uses 4 KiB pages, the destination's uses 4 KiB "
         "and 2 MiB pages (summaries s=0x1000 d=0x201000); back guest RAM with the same page "
         "sizes on both sides")
HEX = ("load of migration failed: Operation not permitted: Postcopy needs matching RAM "
       "page sizes (s=1000 d=201000)")
OLD_10_0 = "load of migration failed: Operation not permitted"
SIBLING = "Sibling indicated error 1"
SETUP = "ram_save_setup failed: Broken pipe"


class Expectations(unittest.TestCase):
    def test_words_needs_both_sizes(self):
        words = EXPECTATIONS["words"].holds
        self.assertTrue(words(WORDS))
        for err in (HEX, OLD_10_0, SIBLING, "the source's pages are 4 KiB", ""):
            self.assertFalse(words(err), err)

    def test_old_is_any_error_without_the_words(self):
        old = EXPECTATIONS["old"].holds
        for err in (HEX, OLD_10_0):
            self.assertTrue(old(err), err)
        self.assertFalse(old(WORDS))
        self.assertFalse(old(""))       # no error: the migration did not fail

    def test_the_source_fails_as_stock_does(self):
        self.assertTrue(stock_source_error(SIBLING))
        self.assertTrue(stock_source_error(SETUP))
        self.assertFalse(stock_source_error(WORDS))     # nothing new reached it
        self.assertFalse(stock_source_error(""))


class Capabilities(unittest.TestCase):
    """Both sides get postcopy-ram and nothing of their own."""

    def test_no_side_gets_more(self):
        s = types.SimpleNamespace(opts=options("src-bin", "dst-bin", "logs"))
        src = migration.side_capabilities(s, "src", ["postcopy-ram"])
        dst = migration.side_capabilities(s, "dst", ["postcopy-ram"])
        self.assertEqual(src, ["postcopy-ram"])
        self.assertEqual(dst, ["postcopy-ram"])


if __name__ == "__main__":
    unittest.main()
