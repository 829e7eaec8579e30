# SPDX-License-Identifier: GPL-2.0-or-later
"""pagecache_trace.py: reading the kernel's trace of 2 MiB page cache adds
and deletes, and finding a destination's pages put there after its
discard by anything but a placement."""

import os
import sys
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from postcopy_demo.pagecache_trace import destination_adds, parse, path_of  # noqa: E402


def event(comm, ino, ofs, t="100.000001", flags=".....", cpu=1, tid=4242):
    return ("       %s-%d   [%03d] %s  %s: mm_filemap_add_to_page_cache: dev 0:17 ino %s "
            "pfn=0x2d4000 ofs=%d order=9\n" % (comm, tid, cpu, flags, t, ino, ofs))


def stack(comm, frames, t="100.000002", cpu=1, tid=4242):
    return ("       %s-%d   [%03d] .....  %s: <stack trace>\n%s"
            % (comm, tid, cpu, t, "".join(" => %s\n" % f for f in frames)))


def add(comm, ino, ofs, frames, flags="....."):
    return event(comm, ino, ofs, flags=flags) + stack(comm, frames)


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
        ev, unread = parse(TRACE)
        self.assertEqual(unread, 0)
        self.assertEqual([(e["op"], e["comm"], e["file"]) for e in ev][:4],
                         [("add", "CPU 1/TCG", "0:17:4b"), ("add", "qemu-system-x86", "0:17:4c"),
                          ("add", "qemu-system-x86", "0:17:4c"),
                          ("delete", "qemu-system-x86", "0:17:4c")])
        self.assertEqual(ev[0]["stack"], FAULT)
        self.assertEqual(ev[3]["stack"], [])
        self.assertEqual(ev[4]["ofs"], M)

    def test_a_stack_goes_to_its_own_cpu_and_thread(self):
        # the other CPU's add is printed between an add and its stack
        text = (event("mig/dst/listen", "4c", M, cpu=0, tid=10)
                + event("CPU 0/TCG", "4c", 2 * M, cpu=1, tid=20)
                + stack("CPU 0/TCG", FAULT, cpu=1, tid=20)
                + stack("mig/dst/listen", COPY, cpu=0, tid=10))
        ev, _ = parse(text)
        self.assertEqual([(e["comm"], path_of(e["stack"])) for e in ev],
                         [("mig/dst/listen", "uffdio_copy"), ("CPU 0/TCG", "fault")])

    def test_record_tgid_column(self):
        ln = ("   mig/dst/listen-4243  (   4240) [001] .....  100.000001: "
              "mm_filemap_add_to_page_cache: dev 0:17 ino 4c pfn=0x1 ofs=0 order=9\n")
        ev, unread = parse(ln)
        self.assertEqual((len(ev), unread, ev[0]["comm"]), (1, 0, "mig/dst/listen"))

    def test_lines_of_another_shape_are_counted(self):
        _, unread = parse("CPU:1 [LOST 12 EVENTS]\n" + TRACE)
        self.assertEqual(unread, 1)

    def test_paths(self):
        self.assertEqual(path_of(COPY), "uffdio_copy")
        self.assertEqual(path_of(FAULT), "fault")
        self.assertEqual(path_of(["a", "b", "hugetlbfs_fallocate"]), "fallocate")
        self.assertEqual(path_of(["tp", "__filemap_add_folio", "hugetlb_add_to_page_cache",
                                  "something_new", "x"]), "other: something_new")
        self.assertEqual(path_of([]), "no stack")


class DestinationAdds(unittest.TestCase):
    def test_the_stray_is_named(self):
        got = destination_adds(parse(TRACE)[0])
        self.assertEqual(list(got), ["0:17:4c"])       # the source's file placed nothing
        d = got["0:17:4c"]
        self.assertEqual((d["added_before"], d["deleted"]), (2, 1))
        self.assertEqual(d["adds_by_path"], {"uffdio_copy": 2, "fault": 1})
        self.assertEqual([(s["comm"], s["ofs"], s["path"]) for s in d["strays"]],
                         [("CPU 0/TCG", 2 * M, "fault")])

    def test_precopy_faults_are_not_strays(self):
        clean = TRACE.replace(add("CPU 0/TCG", "4c", 2 * M, FAULT, flags="d..1."), "")
        self.assertEqual(destination_adds(parse(clean)[0])["0:17:4c"]["strays"], [])

    def test_nothing_placed_nothing_reported(self):
        self.assertEqual(destination_adds(parse(add("CPU 1/TCG", "4b", 0, FAULT))[0]), {})


if __name__ == "__main__":
    unittest.main()
