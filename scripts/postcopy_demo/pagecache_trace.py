# SPDX-License-Identifier: GPL-2.0-or-later
"""Who put each 2 MiB page into a hugetlbfs file, from the kernel's own
trace (tracefs: filemap's mm_filemap_add_to_page_cache, with a stack
trace, and mm_filemap_delete_from_page_cache), for scripts/eexist-repro.py.

On QEMU's destination a 2 MiB page of guest RAM enters the memfd by a
fault while precopy writes it, leaves it when the switch's discard
punches it out, and enters again only by the placement's UFFDIO_COPY
(stack through mfill_atomic).  After the first delete in that file (the
discard: the advise-time discard finds nothing present), an add by any
other path is what leaves a page "already present" for the placement:
this names its path and its thread."""

import os
import re
import subprocess
from typing import Dict, List, Optional

TRACEFS = "/sys/kernel/tracing"
EVENTS = ("filemap/mm_filemap_add_to_page_cache", "filemap/mm_filemap_delete_from_page_cache")
HUGE_ORDER = 9          # 2 MiB pages on x86-64
# "  CPU 0/TCG-4242   [001] d..2.  3705.028604: mm_filemap_delete_from_page_cache: ..."
LINE = re.compile(r"^\s*(?P<comm>.+?)-(?P<tid>\d+)\s+\[\d+\]\s+(?:\S+\s+)?[\d.]+: "
                  r"(?P<event>mm_filemap_(?:add_to|delete_from)_page_cache|<stack trace>)"
                  r"(?::\s+(?P<rest>.*))?$")
FIELDS = re.compile(r"ino (?P<ino>[0-9a-f]+) .*ofs=(?P<ofs>\d+)")
# the threads of QEMU's destination that place pages (-name ...,debug-threads=on)
PLACERS = ("mig/dst/", "postcopy/")


class Unavailable(Exception):
    pass


def _write(name: str, value: str):
    with open(os.path.join(TRACEFS, name), "w") as f:
        f.write(value)


class PageCacheTrace:
    """The two events, 2 MiB pages only, adds with their stacks."""

    def start(self):
        if not os.path.isdir(os.path.join(TRACEFS, "events")):
            subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            _write("tracing_on", "0")
            _write("buffer_size_kb", "16384")
            _write("trace", "")
            cond = "order == %d" % HUGE_ORDER
            for ev in EVENTS:
                _write("events/%s/filter" % ev, cond)
            _write("events/%s/trigger" % EVENTS[0], "stacktrace if " + cond)
            for ev in EVENTS:
                _write("events/%s/enable" % ev, "1")
            _write("tracing_on", "1")
        except OSError as e:
            raise Unavailable("tracefs at %s: %s" % (TRACEFS, e))

    def stop(self, path: str):
        """Stop, save the trace to path, and leave tracefs as it was."""
        try:
            _write("tracing_on", "0")
            with open(os.path.join(TRACEFS, "trace")) as f, open(path, "w") as out:
                out.write(f.read())
        finally:
            for ev in EVENTS:
                _write("events/%s/enable" % ev, "0")
                _write("events/%s/filter" % ev, "0")
            _write("events/%s/trigger" % EVENTS[0], "!stacktrace if order == %d" % HUGE_ORDER)
            _write("trace", "")


def parse(text: str) -> List[dict]:
    """Events in order: {"op": "add"/"delete", "comm", "tid", "ino", "ofs",
    "stack": [function, ...] (adds)}."""
    events: List[dict] = []
    last: Optional[dict] = None
    for ln in text.splitlines():
        if ln.startswith(" => "):
            if last is not None:
                last["stack"].append(ln[4:].strip())
            continue
        m = LINE.match(ln)
        if not m:
            continue
        if m.group("event") == "<stack trace>":
            continue            # its " => " lines follow: they go to `last`
        f = FIELDS.search(m.group("rest") or "")
        if not f:
            continue
        last = {"op": "add" if "add_to" in m.group("event") else "delete",
                "comm": m.group("comm").strip(), "tid": int(m.group("tid")),
                "ino": f.group("ino"), "ofs": int(f.group("ofs")), "stack": []}
        events.append(last)
    return events


def path_of(stack: List[str]) -> str:
    s = " ".join(stack)
    if "mfill_atomic" in s:
        return "uffdio_copy"
    if "hugetlbfs_fallocate" in s:
        return "fallocate"
    if "hugetlb_fault" in s or "handle_mm_fault" in s:
        return "fault"
    return "other: " + (stack[2] if len(stack) > 2 else "?")


def destination_adds(events: List[dict]) -> Dict[str, dict]:
    """For each file a destination thread placed pages into: pages deleted,
    and the adds after its first delete, by path; "strays" lists the adds
    after that delete that are not placements."""
    out: Dict[str, dict] = {}
    placed = {e["ino"] for e in events if e["op"] == "add"
              and path_of(e["stack"]) == "uffdio_copy" and e["comm"].startswith(PLACERS)}
    for ino in sorted(placed):
        evs = [e for e in events if e["ino"] == ino]
        first = next((i for i, e in enumerate(evs) if e["op"] == "delete"), len(evs))
        after = [e for e in evs[first:] if e["op"] == "add"]
        by: Dict[str, int] = {}
        for e in after:
            by[path_of(e["stack"])] = by.get(path_of(e["stack"]), 0) + 1
        out[ino] = {"deleted": sum(e["op"] == "delete" for e in evs), "adds_by_path": by,
                    "strays": [{"comm": e["comm"], "ofs": e["ofs"], "path": path_of(e["stack"]),
                                "stack": e["stack"][1:6]}
                               for e in after if path_of(e["stack"]) != "uffdio_copy"]}
    return out
