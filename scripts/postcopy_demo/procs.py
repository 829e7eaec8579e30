# SPDX-License-Identifier: GPL-2.0-or-later
"""Child processes and cleanup: nothing we start outlives us.

Every child runs in its own session (so a kill reaches only it), is killed
by the kernel if we die (PR_SET_PDEATHSIG through setpriv), and is killed
on every exit path (finally, atexit, SIGTERM/SIGHUP through SignalGuard).
Setup steps that must be undone register a cleanup callable."""

import atexit
import shutil
import signal
import subprocess
import sys
import threading
from typing import List

from .options import MigrateError

_LIVE_PROCS: List[subprocess.Popen] = []
_CLEANUPS: List = []      # callables, run last-in first-out
_LOCK = threading.RLock()


def register_cleanup(fn):
    with _LOCK:
        _CLEANUPS.append(fn)


def unregister_cleanup(fn):
    with _LOCK:
        if fn in _CLEANUPS:
            _CLEANUPS.remove(fn)


def kill_proc(p: subprocess.Popen, grace: float = 3.0):
    """SIGTERM, then SIGKILL: only this process."""
    if p.poll() is None:
        try:
            p.terminate()
            p.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                p.kill()
                p.wait(5)
            except (subprocess.TimeoutExpired, OSError):
                pass
        except OSError:
            pass
    with _LOCK:
        if p in _LIVE_PROCS:
            _LIVE_PROCS.remove(p)


def cleanup_all():
    """Kill every process we started and undo every setup step."""
    with _LOCK:
        procs = list(_LIVE_PROCS)
        fns = list(reversed(_CLEANUPS))
        _CLEANUPS.clear()
    for p in procs:
        kill_proc(p)
    for fn in fns:
        try:
            fn()
        except Exception as e:  # keep cleaning up
            print("WARNING: cleanup step failed: %s" % e, file=sys.stderr)


atexit.register(cleanup_all)


def spawn(argv: List[str], stdout, stderr, stdin=subprocess.DEVNULL, env=None) -> subprocess.Popen:
    """Start a child in its own session, killed (PR_SET_PDEATHSIG) if we die."""
    pre = ["setpriv", "--pdeathsig", "KILL", "--"] if shutil.which("setpriv") else []
    p = subprocess.Popen(pre + argv, stdin=stdin, stdout=stdout, stderr=stderr, env=env,
                         start_new_session=True, close_fds=True)
    with _LOCK:
        _LIVE_PROCS.append(p)
    return p


def run(argv: List[str], check=True, **kw) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, **kw)
    if check and r.returncode != 0:
        raise MigrateError("%s failed (exit %d): %s" % (" ".join(argv), r.returncode,
                                                        (r.stderr or r.stdout).strip()))
    return r


class SignalGuard:
    """SIGTERM/SIGHUP raise SystemExit, so finally blocks and __exit__ run."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self):
        self.old = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                try:
                    self.old[s] = signal.signal(s, self._handler)
                except (ValueError, OSError):
                    pass
        return self

    @staticmethod
    def _handler(signum, frame):
        raise SystemExit("killed by signal %d" % signum)

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)
        self.old = {}
        return False
