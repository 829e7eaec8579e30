# SPDX-License-Identifier: GPL-2.0-or-later
"""What a run does with a Session.  A new scenario is a new module here: a
function that takes Options (or a Session) and returns a result dict with
at least "verify_ok"/"error", or raises scenarios.Failure/Skip in tests."""


class Failure(Exception):
    """A test scenario failed: the message says why."""


class BugSeen(Failure):
    """A test scenario saw the very bug it is there to catch (not merely
    a run it could not judge): what a stock QEMU without the fix must
    show, for `e2e.py test --expect-bug`."""


class Skip(Exception):
    """A test scenario cannot run here: the message says why."""


def migrate_verified(s, start, hooks=None):
    """Start both sides of Session `s` (through `start`, which turns set-up
    errors into Skip/Failure), migrate (with migration.Hooks `hooks`, if
    given), and check the destination's RAM: (source VM, destination VM,
    migration result, verification), or Failure."""
    src = start(s, s.start_source)
    dst = start(s, s.start_destination)
    r = s.migrate(src, dst) if hooks is None else s.migrate(src, dst, hooks=hooks)
    if r["status"] != "completed" or r["error"]:
        raise Failure("migration %s: %s" % (r["status"], r["error"]))
    v = s.verify(dst)
    if not v["ok"]:
        raise Failure(v["error"])
    return src, dst, r, v


def preempt_migrations(ctx, name: str, session, start, ram: str, attempts: int,
                       postcopy_bandwidth: int, qemu_args, count):
    """Migrate with postcopy-preempt up to `attempts` times, checking the
    destination's RAM; per migration, yield (attempt, verification, the
    counts `count` reads from the source's stderr, their running totals)."""
    total: dict = {}
    for attempt in range(1, attempts + 1):
        with session(ctx, "%s-%d" % (name, attempt), src_ram=ram, dst_ram=ram,
                     capabilities=["postcopy-preempt"], postcopy_bandwidth=postcopy_bandwidth,
                     qemu_args=qemu_args) as s:
            src, _, _, v = migrate_verified(s, start)
            with open(src.stderr_path, errors="replace") as f:
                c = count(f)
        for k in c:
            total[k] = total.get(k, 0) + c[k]
        yield attempt, v, c, total
