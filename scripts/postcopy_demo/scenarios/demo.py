# SPDX-License-Identifier: GPL-2.0-or-later
"""The main command's scenario: boot, check the guest on the source,
migrate with postcopy, check it on the destination."""

import os
import time

from ..options import ROOT, MigrateError, Options
from ..qmp import QMPError
from ..session import Session


def run_migration(opts: Options) -> dict:
    """Boot, migrate with postcopy, verify on the destination.  The result
    dict always has "verify_ok" (bool) and "error" (None or a message)."""
    t0 = time.monotonic()
    result = {"verify_ok": False, "error": None}
    try:
        with Session(opts) as s:
            result["logdir"] = s.logdir
            sb, db = (os.path.relpath(b, ROOT) for b in (s.src_binary, s.dst_binary))
            result["qemu"] = sb if sb == db else "source %s, destination %s" % (sb, db)
            result["driver"] = "QMP (qemu.qmp), two QEMUs started by this script"
            src = s.start_source()
            result["workload"] = src.workload
            if opts.verify_source:
                v = s.verify(src)
                result["source_verify"] = v["line"]
                s.out.say("source guest: %s" % (v["line"] or v["error"]))
                if not v["ok"]:
                    result["error"] = "the guest failed its own check before migrating: %s" % (
                        v["line"] or v["error"])
                    return result
            dst = s.start_destination()
            result.update(s.migrate(src, dst))
            if s.unpriv:
                result["extra_summary"] = s.unpriv.summary(src, dst)
            if result["status"] == "completed":
                v = s.verify(dst)
                result.update(verify=v["line"], verify_ok=v["ok"],
                              verify_seconds=v.get("seconds"))
                if not v["ok"]:
                    result["error"] = v["error"] or "guest memory check failed: %s" % v["line"]
            elif result.get("source_running"):
                # A failed migration must leave the source running, intact.
                v = s.verify(src)
                result["source_verify_after"] = v["line"] or v["error"]
    except (MigrateError, QMPError) as e:
        result["error"] = str(e)
    result["run_time_s"] = round(time.monotonic() - t0, 1)
    return result
