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
from typing import Dict, List, Optional, Tuple

TRACEFS = "/sys/kernel/tracing"
EVENTS = ("filemap/mm_filemap_add_to_page_cache", "filemap/mm_filemap_delete_from_page_cache")
HUGE_ORDER = 9          # 2 MiB pages on x86-64
COND = "order == %d" % HUGE_ORDER
# "  CPU 0/TCG-4242   [001] d..2.  3705.028604: mm_filemap_delete_from_page_cache: ..."
# (with options/record-tgid, "(   4240)" before the CPU)
LINE = re.compile(r"^\s*(?P<comm>.+?)-(?P<tid>\d+)\s+(?:\(\s*[\d-]+\)\s+)?\[(?P<cpu>\d+)\]\s+"
                  r"(?:\S+\s+)?[\d.]+: (?P<event>mm_filemap_(?:add_to|delete_from)_page_cache"
                  r"|<stack trace>)(?::\s+(?P<rest>.*))?$")
FIELDS = re.compile(r"dev (?P<dev>\d+:\d+) ino (?P<ino>[0-9a-f]+) .*ofs=(?P<ofs>\d+)")
# the threads of QEMU's destination that place pages (-name ...,debug-threads=on)
PLACERS = ("mig/dst/", "postcopy/")
# settings start() changes and stop() puts back
SAVED = ("tracing_on", "buffer_size_kb", "saved_cmdlines_size")


class Unavailable(Exception):
    pass


def _path(name: str) -> str:
    return os.path.join(TRACEFS, name)


def _write(name: str, value: str):
    with open(_path(name), "w") as f:
        f.write(value)


def _read(name: str) -> str:
    with open(_path(name)) as f:
        return f.read().strip()


class PageCacheTrace:
    """The two events, 2 MiB pages only, adds with their stacks; tracefs's
    settings are put back by stop(), or by start() when it fails."""

    def __init__(self):
        self.saved = {}

    def start(self):
        if not os.path.isdir(_path("events")):
            subprocess.run(["mount", "-t", "tracefs", "nodev", TRACEFS],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            # buffer_size_kb reads "7 (expanded: 1408)" before first use
            self.saved = {k: _read(k).split()[0] for k in SAVED}
            _write("tracing_on", "0")
            self._clear()
            _write("buffer_size_kb", "16384")
            # thread names for every thread of both QEMUs (default 128)
            _write("saved_cmdlines_size", "8192")
            _write("trace", "")
            for ev in EVENTS:
                _write("events/%s/filter" % ev, COND)
            _write("events/%s/trigger" % EVENTS[0], "stacktrace if " + COND)
            for ev in EVENTS:
                _write("events/%s/enable" % ev, "1")
            _write("tracing_on", "1")
        except OSError as e:
            self._restore()
            raise Unavailable("tracefs at %s: %s" % (TRACEFS, e))

    def stop(self, path: str) -> int:
        """Stop, save the trace to path, put tracefs back; returns the events
        the ring buffer lost (overruns), 0 when the trace is whole."""
        try:
            _write("tracing_on", "0")
            with open(_path("trace")) as f, open(path, "w") as out:
                out.write(f.read())
            lost = 0
            for cpu in os.listdir(_path("per_cpu")):
                with open(_path("per_cpu/%s/stats" % cpu)) as f:
                    for ln in f:
                        if ln.startswith("overrun:"):
                            lost += int(ln.split()[1])
            return lost
        finally:
            self._restore()

    @staticmethod
    def _clear():
        for ev in EVENTS:
            try:
                _write("events/%s/enable" % ev, "0")
                _write("events/%s/filter" % ev, "0")
            except OSError:
                pass
        try:       # a trigger a killed run left would make the next write fail
            _write("events/%s/trigger" % EVENTS[0], "!stacktrace")
        except OSError:
            pass

    def _restore(self):
        self._clear()
        try:
            _write("trace", "")
        except OSError:
            pass
        for k in SAVED:
            if k in self.saved:
                try:
                    _write(k, self.saved[k])
                except OSError:
                    pass


def parse(text: str) -> Tuple[List[dict], int]:
    """Events in order: {"op": "add"/"delete", "comm", "tid", "file" (dev:ino),
    "ofs", "stack": [function, ...] (adds)}; and the lines that were neither
    an event, a stack, a comment nor blank (a shape this does not read).

    The stack is a record of its own, which the merged output may print
    after another CPU's events: it goes to the last event of its CPU and
    thread."""
    events: List[dict] = []
    pending: Dict[Tuple[int, int], dict] = {}
    current: Optional[dict] = None
    unread = 0
    for ln in text.splitlines():
        if ln.startswith(" => "):
            if current is not None:
                current["stack"].append(ln[4:].strip())
            continue
        if not ln.strip() or ln.startswith("#"):
            continue
        m = LINE.match(ln)
        if not m:
            unread += 1
            current = None
            continue
        key = (int(m.group("cpu")), int(m.group("tid")))
        if m.group("event") == "<stack trace>":
            current = pending.pop(key, None)
            continue
        current = None
        f = FIELDS.search(m.group("rest") or "")
        if not f:
            unread += 1
            continue
        ev = {"op": "add" if "add_to" in m.group("event") else "delete",
              "comm": m.group("comm").strip(), "tid": key[1],
              "file": "%s:%s" % (f.group("dev"), f.group("ino")),
              "ofs": int(f.group("ofs")), "stack": []}
        events.append(ev)
        if ev["op"] == "add":
            pending[key] = ev
    return events, unread


def path_of(stack: List[str]) -> str:
    s = " ".join(stack)
    if "mfill_atomic" in s:
        return "uffdio_copy"
    if "hugetlbfs_fallocate" in s:
        return "fallocate"
    if "hugetlb_fault" in s or "handle_mm_fault" in s:
        return "fault"
    if not stack:
        return "no stack"
    # [0] the tracepoint, [1] __filemap_add_folio, [2] hugetlb_add_to_page_cache
    return "other: " + (stack[3] if len(stack) > 3 else stack[-1])


def destination_adds(events: List[dict]) -> Dict[str, dict]:
    """For each file a destination thread placed pages into: its adds
    before the first delete (precopy), pages deleted, and the adds after
    that delete by path; "strays" lists those that are not placements."""
    out: Dict[str, dict] = {}
    placed = {e["file"] for e in events if e["op"] == "add"
              and path_of(e["stack"]) == "uffdio_copy" and e["comm"].startswith(PLACERS)}
    for fl in sorted(placed):
        evs = [e for e in events if e["file"] == fl]
        first = next((i for i, e in enumerate(evs) if e["op"] == "delete"), len(evs))
        after = [(e, path_of(e["stack"])) for e in evs[first:] if e["op"] == "add"]
        by: Dict[str, int] = {}
        for _, path in after:
            by[path] = by.get(path, 0) + 1
        out[fl] = {"added_before": sum(e["op"] == "add" for e in evs[:first]),
                   "deleted": sum(e["op"] == "delete" for e in evs), "adds_by_path": by,
                   "strays": [{"comm": e["comm"], "ofs": e["ofs"], "path": path,
                               "stack": e["stack"][1:8]}
                              for e, path in after if path != "uffdio_copy"]}
    return out
