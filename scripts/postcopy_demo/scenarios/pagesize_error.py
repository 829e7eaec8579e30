# SPDX-License-Identifier: GPL-2.0-or-later
"""scripts/qemu-test.sh's page-size check (scripts/e2e.py check pagesize):
a postcopy migration from 4 KiB-page RAM (the source build) to 2 MiB
hugetlbfs RAM (the destination build), nothing booted on either, with
postcopy-page-size-report on the sides named and on no other.

It must fail at once and leave the source VM running, and the error must
be what EXPECTATIONS says for the expectation asked for: the one place
that says which side's error is read and what it must say.  One attempt:
a run whose error lacks the words fails."""

import dataclasses
from typing import Callable, List, Tuple

from ..migration import PAGE_SIZE_REPORT
from ..options import Options
from ..session import Session

SRC_RAM, DST_RAM = "64M@4K", "64M@2M"


def names_both(err: str) -> bool:
    """The error names both page sizes in words."""
    return "4 KiB" in err and "2 MiB" in err


@dataclasses.dataclass(frozen=True)
class Expectation:
    side: str                       # whose query-migrate error-desc: source | destination
    what: str                       # the PASS/FAIL line
    holds: Callable[[str], bool]    # of that error ("" if the migration did not fail)


EXPECTATIONS = {
    "words": Expectation("source", "the source's error names both page sizes in words",
                         names_both),
    # An older source's own words vary with timing ("Sibling indicated
    # error 1", or "ram_save_setup failed" when the destination's failure
    # overtakes the setup): what matters is that nothing new reached it.
    "sibling": Expectation("source",
                           "the source's error is QEMU's old one (no page sizes in words)",
                           lambda err: bool(err) and not names_both(err)),
}


def options(src: str, dst: str, src_cap: bool, dst_cap: bool, logdir: str) -> Options:
    return Options(
        guest="none", smp=1, src_ram=SRC_RAM, dst_ram=DST_RAM, src_binary=src, dst_binary=dst,
        src_capabilities=[PAGE_SIZE_REPORT] if src_cap else [],
        dst_capabilities=[PAGE_SIZE_REPORT] if dst_cap else [],
        optional_capabilities=False,
        # The mismatch fails the postcopy advise, at the start: no switch.
        switch_after=1 << 30, timeout=60, verify_source=False, progress="none",
        quiet=True, logdir=logdir)


def check(label: str, src: str, dst: str, src_cap: bool, dst_cap: bool, expect: str,
          logdir: str, out=print) -> List[Tuple[str, bool]]:
    """Run the migration; (criterion, met) per criterion."""
    exp = EXPECTATIONS[expect]
    with Session(options(src, dst, src_cap, dst_cap, logdir)) as s:
        vm_src = s.start_source()
        vm_dst = s.start_destination()
        r = s.migrate(vm_src, vm_dst)
        state = vm_src.run_state()
    errors = {side: (r[side + "_error"] or "") if r["status"] == "failed" else ""
              for side in ("source", "destination")}
    out("  %s: migration %s; source VM %s; source error: %r"
        % (label, r["status"], state, errors["source"]))
    out("  %s: destination error: %r" % (label, errors["destination"]))
    return [
        ("the migration fails", r["status"] == "failed"),
        ("the source VM keeps running", bool(r.get("source_running"))),
        (exp.what, exp.holds(errors[exp.side])),
    ]
