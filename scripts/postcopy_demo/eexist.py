# SPDX-License-Identifier: GPL-2.0-or-later
"""What a destination's log says of a placement that found its page
already present (EEXIST), for scripts/eexist-repro.py.

Stock QEMU prints "postcopy_place_page: File exists copy host: 0x..."
(qemu_ufd_copy_ioctl failed); with the trace events postcopy_place_page*
and ram_discard_range on, the same log says whether QEMU had asked for
that placement before and how many ranges were discarded."""

import re
from typing import Dict, List

# error_report() of postcopy_place_page(): strerror, then the host address
EEXIST = re.compile(r"File exists copy host: (0x[0-9a-f]+)")
# the library's refusal (0016): "... already present ..."
LIBRARY = re.compile(r"postcopy-rs:.*already present")


def read_log(text: str) -> Dict[str, object]:
    """{"hosts": host addresses that met EEXIST, "placed_before": for each,
    whether a postcopy_place_page* trace line named it earlier,
    "library": the library's refusals, "discards": ram_discard_range lines}."""
    hosts: List[str] = []
    for h in EEXIST.findall(text):
        if h not in hosts:
            hosts.append(h)
    before = []
    for h in hosts:
        first = text.find("File exists copy host: " + h)
        before.append(bool(re.search(r"postcopy_place_page\w* host=%s\b" % re.escape(h),
                                     text[:first])))
    return {"hosts": hosts, "placed_before": before,
            "library": len(LIBRARY.findall(text)),
            "discards": len(re.findall(r"\bram_discard_range ", text))}
