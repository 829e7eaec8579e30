# SPDX-License-Identifier: GPL-2.0-or-later
"""pagecache_trace.py: reading the kernel's trace of 2 MiB page cache adds
and deletes, and finding a destination's pages put there after its
discard by anything but a placement."""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from postcopy_demo.pagecache_trace import destination_adds, parse, path_of  # noqa: E402


def add(comm, ino, ofs, stack, t="100.000001", flags="....."):
    return ("       %s-4242   [001] %s  %s: mm_filemap_add_to_page_cache: dev 0:17 ino %s "
            "pfn=0x2d4000 ofs=%d order=9\n       %s-4242   [001] %s  %s: <stack trace>\n%s"
            % (comm, flags, t, ino, ofs, comm, flags, t,
               "".join(" => %s\n" % f for f in stack)))


def delete(comm, ino, ofs):
    return ("       %s-4242   [000] d..2.  100.000002: mm_filemap_delete_from_page_cache: "
            "dev 0:17 ino %s pfn=0x2d3e00 ofs=%d order=9\n" % (comm, ino, ofs))


FAULT = ["trace_event_raw_event_mm_filemap_op_page_cache", "__filemap_add_folio",
         "hugetlb_add_to_page_cache", "hugetlb_fault", "handle_mm_fault", "exc_page_fault"]
COPY = ["trace_event_raw_event_mm_filemap_op_page_cache", "__filemap_add_folio",
        "hugetlb_add_to_page_cache", "hugetlb_mfill_atomic_pte", "mfill_atomic_copy",
        "userfaultfd_ioctl"]
M = 2 << 20
TRACE = ("# tracer: nop\n#\n"
         # the source's guest writes its memory (another file)
         + add("CPU 1/TCG", "4b", 0, FAULT)
         # the destination: precopy, the discard, placements, one stray
         + add("qemu-system-x86", "4c", 0, FAULT) + add("qemu-system-x86", "4c", M, FAULT)
         + delete("qemu-system-x86", "4c", M)
         + add("mig/dst/listen", "4c", M, COPY)
         + add("CPU 0/TCG", "4c", 2 * M, FAULT, flags="d..1.")
         + add("mig/dst/preempt", "4c", 2 * M, COPY))


class Parse(unittest.TestCase):
    def test_events_in_order_with_stacks(self):
        ev = parse(TRACE)
        self.assertEqual([(e["op"], e["comm"], e["ino"]) for e in ev][:4],
                         [("add", "CPU 1/TCG", "4b"), ("add", "qemu-system-x86", "4c"),
                          ("add", "qemu-system-x86", "4c"), ("delete", "qemu-system-x86", "4c")])
        self.assertEqual(ev[0]["stack"], FAULT)
        self.assertEqual(ev[3]["stack"], [])
        self.assertEqual(ev[4]["ofs"], M)

    def test_paths(self):
        self.assertEqual(path_of(COPY), "uffdio_copy")
        self.assertEqual(path_of(FAULT), "fault")
        self.assertEqual(path_of(["a", "b", "hugetlbfs_fallocate"]), "fallocate")
        self.assertTrue(path_of(["a", "b", "c"]).startswith("other"))


class DestinationAdds(unittest.TestCase):
    def test_the_stray_is_named(self):
        got = destination_adds(parse(TRACE))
        self.assertEqual(list(got), ["4c"])       # the source's file placed nothing
        d = got["4c"]
        self.assertEqual(d["deleted"], 1)
        self.assertEqual(d["adds_by_path"], {"uffdio_copy": 2, "fault": 1})
        self.assertEqual([(s["comm"], s["ofs"], s["path"]) for s in d["strays"]],
                         [("CPU 0/TCG", 2 * M, "fault")])

    def test_precopy_faults_are_not_strays(self):
        clean = TRACE.replace(add("CPU 0/TCG", "4c", 2 * M, FAULT, flags="d..1."), "")
        self.assertEqual(destination_adds(parse(clean))["4c"]["strays"], [])

    def test_nothing_placed_nothing_reported(self):
        self.assertEqual(destination_adds(parse(add("CPU 1/TCG", "4b", 0, FAULT))), {})


if __name__ == "__main__":
    unittest.main()
