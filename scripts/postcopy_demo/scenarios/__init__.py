# SPDX-License-Identifier: GPL-2.0-or-later
"""What a run does with a Session.  A new scenario is a new module here: a
function that takes Options (or a Session) and returns a result dict with
at least "verify_ok"/"error", or raises scenarios.Failure/Skip in tests."""


class Failure(Exception):
    """A test scenario failed: the message says why."""


class Skip(Exception):
    """A test scenario cannot run here: the message says why."""


def migrate_verified(s, start):
    """Start both sides of Session `s` (through `start`, which turns set-up
    errors into Skip/Failure), migrate, and check the destination's RAM:
    (source VM, migration result, verification), or Failure."""
    src = start(s, s.start_source)
    dst = start(s, s.start_destination)
    r = s.migrate(src, dst)
    if r["status"] != "completed" or r["error"]:
        raise Failure("migration %s: %s" % (r["status"], r["error"]))
    v = s.verify(dst)
    if not v["ok"]:
        raise Failure(v["error"])
    return src, r, v
