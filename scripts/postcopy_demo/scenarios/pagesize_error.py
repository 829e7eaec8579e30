# SPDX-License-Identifier: GPL-2.0-or-later
"""scripts/qemu-test.sh's page-size check (scripts/e2e.py check pagesize):
a postcopy migration from 4 KiB-page RAM (the source build) to 2 MiB
hugetlbfs RAM (the destination build), nothing booted on either.

It must fail at once, leave the source VM running, and the source's
error must be stock QEMU's (nothing new reaches the source: there is no
new message on the wire).  The destination (migrate-incoming with
exit-on-error=false, so that it stays up to be asked) must say in its
query-migrate error-desc what EXPECTATIONS says for the expectation
asked for: the one place that says what the error must say.  One
attempt: a run whose error lacks the words fails."""

import dataclasses
from typing import Callable, List, Tuple

from ..options import Options
from ..session import Session

SRC_RAM, DST_RAM = "64M@4K", "64M@2M"


def names_both(err: str) -> bool:
    """The error names both page sizes in words."""
    return "4 KiB" in err and "2 MiB" in err


@dataclasses.dataclass(frozen=True)
class Expectation:
    what: str                       # the PASS/FAIL line
    holds: Callable[[str], bool]    # of the destination's error ("" if none)


EXPECTATIONS = {
    "words": Expectation("the destination's error-desc names both page sizes in words",
                         names_both),
    # Stock QEMU: 10.1+ gives its hex summaries ("(s=1000 d=201000)"),
    # 10.0 only "load of migration failed: Operation not permitted".
    "old": Expectation("the destination's error-desc is QEMU's old one (no page sizes "
                       "in words)", lambda err: bool(err) and not names_both(err)),
}


def stock_source_error(err: str) -> bool:
    """The source's own words vary with timing ("Sibling indicated error
    1", or "ram_save_setup failed" when the destination's failure
    overtakes the setup); what matters is that it failed and that nothing
    new reached it."""
    return bool(err) and not names_both(err)


def options(src: str, dst: str, logdir: str) -> Options:
    return Options(
        guest="none", smp=1, src_ram=SRC_RAM, dst_ram=DST_RAM, src_binary=src, dst_binary=dst,
        # The mismatch fails the postcopy advise, at the start: no switch.
        switch_after=1 << 30, timeout=60, verify_source=False, progress="none",
        quiet=True, logdir=logdir)


def check(label: str, src: str, dst: str, expect: str, logdir: str,
          out=print) -> List[Tuple[str, bool]]:
    """Run the migration; (criterion, met) per criterion."""
    exp = EXPECTATIONS[expect]
    with Session(options(src, dst, logdir)) as s:
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
        ("the source's error is stock QEMU's (no page sizes in words)",
         stock_source_error(errors["source"])),
        (exp.what, exp.holds(errors["destination"])),
    ]
