# SPDX-License-Identifier: GPL-2.0-or-later
"""`--unprivileged --deny-userfaultfd`: QEMU's user may not open
/dev/userfaultfd (root:root 0600, as Debian ships it) and
vm.unprivileged_userfaultfd is 0, so the destination cannot have
postcopy.  The run passes only if

  1. the migration is refused before the switch to postcopy: the
     destination refuses the postcopy-ram capability, or the migration
     fails, and neither side ever reaches a postcopy state;
  2. the source still runs the guest, and the guest verifies its memory
     there after the refusal;
  3. the refusal says what REFUSAL_MUST_SAY asks (the one message
     expectation, below).

The summary also says whether the message names the sysctl and the
device, whatever REFUSAL_MUST_SAY asks."""

import re
import time

from ..migration import set_capabilities
from ..options import MigrateError, Options
from ..qmp import QMPError
from ..session import Session
from ..unprivileged import SYSCTL, UFFD_DEV

# THE MESSAGE EXPECTATION: a regular expression the refusal must match.
# Stock QEMU 10.0.13 and 10.2.2 (postcopy_ram_supported_by_host() on the
# destination, from migrate-set-capabilities) say only
#   "Postcopy is not supported: Userfaultfd not available: Operation not permitted"
# (uffd_open() falls back to the system call when the device cannot be
# opened, and the system call's EPERM is all that was reported).  The
# series' stock fix "util/userfaultfd: name the device and the sysctl
# when both refuse" adds why the device failed and what the system call
# needs; the refusal must name both.
REFUSAL_MUST_SAY = (r"(?s)Postcopy is not supported: Userfaultfd not available"
                    r"(?=.*/dev/userfaultfd)(?=.*vm\.unprivileged_userfaultfd)")

# States in which the source has stopped the guest for postcopy.
POSTCOPY_STATES = ("postcopy-active", "postcopy-paused", "postcopy-recover-setup",
                   "postcopy-recover", "device")


def run_denied(opts: Options) -> dict:
    t0 = time.monotonic()
    res = {"verify_ok": False, "error": None, "status": None, "postcopy_started": False}
    try:
        with Session(opts) as s:
            res["logdir"] = s.logdir
            res["driver"] = "QMP (qemu.qmp), two QEMUs as %s" % s.unpriv.user
            src = s.start_source()
            res["workload"] = src.workload
            v = s.verify(src)
            res["source_verify"] = v["line"] or v["error"]
            s.out.say("source guest: %s" % res["source_verify"])
            if not v["ok"]:
                res["error"] = "the guest failed its own check before migrating: %s" % (
                    res["source_verify"])
                return res
            _refuse(s, src, res)
            res["extra_summary"] = s.unpriv.summary(*s.vms) + res.get("extra_summary", [])
    except (MigrateError, QMPError) as e:
        res["error"] = str(e)
    res["run_time_s"] = round(time.monotonic() - t0, 1)
    return res


def _refuse(s: Session, src, res: dict):
    refusal, where = None, None
    try:
        dst = s.start_destination()
    except QMPError as e:
        # migration.listen: migrate-set-capabilities on the destination.
        refusal, where = e.desc, "destination, migrate-set-capabilities postcopy-ram"
        dst = next((vm for vm in s.vms if vm.role == "destination"), None)
    if refusal is None:
        # The destination took the capability: the refusal must come
        # from the migration, before postcopy.
        r = s.migrate(src, dst, switch_after=1 << 30)
        res.update({k: r[k] for k in ("status", "postcopy_started", "transport") if k in r})
        if r["status"] == "completed":
            res["error"] = ("the migration completed although %s may not open %s"
                            % (s.unpriv.user, UFFD_DEV))
            return
        refusal, where = r["error"], "migration (%s)" % r["status"]
    res["status"] = "refused"
    res["refusal"] = refusal
    s.out.say("refused at %s: %s" % (where, refusal))
    # The source needs no userfaultfd for postcopy: QEMU checks only on
    # the destination (its runstate inmigrate).  Shown, not assumed.
    try:
        set_capabilities(src, ["postcopy-ram"])
        src_caps = "accepted (the source needs no userfaultfd)"
    except QMPError as e:
        src_caps = "refused: %s" % e.desc
    info = src.query_migrate()
    state = info.get("status", "none")
    res["source_migration_state"] = state
    res["source_running"] = src.alive() and src.run_state() == "running"
    v = s.verify(src)
    res["source_verify_after"] = v["line"] or v["error"]
    names = {SYSCTL: SYSCTL in refusal, UFFD_DEV: UFFD_DEV in refusal}
    res["extra_summary"] = [
        ("refused at", where),
        ("refusal", refusal),
        ("names the sysctl", "yes" if names[SYSCTL] else "NO (%s)" % SYSCTL),
        ("names the device", "yes" if names[UFFD_DEV] else "NO (%s)" % UFFD_DEV),
        ("source postcopy-ram", "migrate-set-capabilities " + src_caps),
        ("source migration state", state),
        ("destination", "running" if dst is not None and dst.alive() else "exited"),
    ]
    problems = []
    if res.get("postcopy_started") or state in POSTCOPY_STATES:
        problems.append("postcopy started (source state %s)" % state)
    if not res["source_running"]:
        problems.append("the source is not running the guest")
    if not v["ok"]:
        problems.append("the guest on the source failed its check: %s"
                        % res["source_verify_after"])
    if not re.search(REFUSAL_MUST_SAY, refusal):
        problems.append("the refusal does not say what REFUSAL_MUST_SAY (scenarios/"
                        "unprivileged.py) asks: %r" % REFUSAL_MUST_SAY)
    if problems:
        res["error"] = "; ".join(problems)
    else:
        res["verify_ok"] = True
        res["verdict"] = ("REFUSED AS EXPECTED: no postcopy without %s; the source runs the "
                          "guest, %s" % (UFFD_DEV, res["source_verify_after"]))
