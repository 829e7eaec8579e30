# SPDX-License-Identifier: GPL-2.0-or-later
"""What a destination's log says of a placement that found its page
already present (EEXIST), for scripts/eexist-repro.py.

Stock QEMU 10.x prints "uffd_copy_page() failed: dst_addr=0x... ...
errno=17" or "uffd_zero_page() failed: addr=0x... errno=17"
(util/userfaultfd.c; older QEMU: "postcopy_place_page: File
exists copy host: 0x..."); with the trace events postcopy_place_page*
and ram_discard_range on, the same log says whether a placement of that
page had succeeded and been traced before (the trace follows the ioctl,
so a racing placement in another thread may be logged after the error)
and how many ranges were discarded."""

import re
from typing import Dict, List

# error_report() of uffd_copy_page() (10.x), or of postcopy_place_page() (before)
EEXIST = re.compile(r"uffd_(?:copy_page\(\) failed: dst_addr|zero_page\(\) failed: addr)="
                    r"(0x[0-9a-f]+)\b.*errno=17\b|File exists copy host: (0x[0-9a-f]+)")
# the library's refusal (0016): "... already present ..."
LIBRARY = re.compile(r"postcopy-rs:.*already present")


def read_log(text: str) -> Dict[str, object]:
    """{"hosts": host addresses that met EEXIST, "placed_before": for each,
    whether a postcopy_place_page* trace line named it earlier,
    "library": the library's refusals, "discards": ram_discard_range lines}."""
    hosts: List[str] = []
    firsts: List[int] = []
    for m in EEXIST.finditer(text):
        h = m.group(1) or m.group(2)
        if h not in hosts:
            hosts.append(h)
            firsts.append(m.start())
    before = [bool(re.search(r"postcopy_place_page\w* host=%s\b" % re.escape(h), text[:first]))
              for h, first in zip(hosts, firsts)]
    return {"hosts": hosts, "placed_before": before,
            "library": len(LIBRARY.findall(text)),
            "discards": len(re.findall(r"\bram_discard_range ", text))}
