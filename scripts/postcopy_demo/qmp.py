# SPDX-License-Identifier: GPL-2.0-or-later
"""The QMP session with one QEMU, through QEMU's own client library
(qemu.qmp, its synchronous QEMUMonitorProtocol wrapper).

What is ours: waiting for QEMU to listen on its socket (or die first), one
exception type for a refused command, and a timeout per command."""

import asyncio
import subprocess
import time
from typing import Optional

from qemu.qmp import ConnectError, ExecuteError
from qemu.qmp import QMPError as LibQMPError
from qemu.qmp.legacy import QEMUMonitorProtocol

from .options import MigrateError


class QMPError(Exception):
    """QEMU refused a command, or the session broke; desc says why."""

    def __init__(self, cmd: str, desc: str):
        super().__init__("%s: %s" % (cmd, desc))
        self.cmd = cmd
        self.desc = desc


def connect_when_listening(connect, path: str, proc, name: str, what: str,
                           timeout: float):
    """connect() to QEMU's unix socket `path` once QEMU listens on it.
    QEMU creates the file at bind(), a moment before listen(): until then
    a connect fails with ENOENT, then ECONNREFUSED (seen under load).  Both
    are retried while QEMU runs, for `timeout` seconds; any other error is
    raised as it is."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return connect()
        except (ConnectError, OSError) as e:
            cause = e.exc if isinstance(e, ConnectError) else e
            if not isinstance(cause, (FileNotFoundError, ConnectionRefusedError)):
                raise
            if proc.poll() is not None:
                raise MigrateError("%s QEMU exited (status %s) before its %s was up"
                                   % (name, proc.returncode, what))
            if time.monotonic() > deadline:
                raise MigrateError("%s QEMU: no %s listening at %s after %.0fs (%s)"
                                   % (name, what, path, timeout, cause))
        time.sleep(0.05)


class QMPSession:
    def __init__(self, path: str, proc: subprocess.Popen, name: str, timeout=30.0):
        self.name = name
        def connect():
            mon = QEMUMonitorProtocol(path, nickname=name)
            mon.connect()                # greeting and qmp_capabilities
            return mon
        try:
            self._mon = connect_when_listening(connect, path, proc, name, "QMP socket",
                                               timeout)
        except (ConnectError, OSError) as e:
            raise MigrateError("%s QEMU: QMP connection failed: %s" % (name, e))
        self._open = True

    def cmd(self, name: str, args: Optional[dict] = None, timeout: float = 30.0):
        """Run a command; its return value, or QMPError."""
        self._mon.settimeout(timeout)
        try:
            return self._mon.cmd(name, **(args or {}))
        except ExecuteError as e:
            raise QMPError(name, str(e))
        except (LibQMPError, OSError, EOFError) as e:
            why = str(e) or type(e).__name__
            raise QMPError(name, "%s QEMU: QMP session broke: %s" % (self.name, why))
        except asyncio.TimeoutError:
            raise QMPError(name, "%s QEMU did not answer within %.0f s" % (self.name, timeout))

    def send_fd(self, name: str, fd: int):
        """Pass fd to QEMU (SCM_RIGHTS), named name for fd:name URIs."""
        try:
            self._mon.send_fd_scm(fd)
        except (LibQMPError, OSError) as e:
            raise QMPError("getfd", "%s QEMU: could not pass a file descriptor: %s"
                           % (self.name, e))
        self.cmd("getfd", {"fdname": name})

    def cmd_oob(self, name: str, args: Optional[dict] = None, timeout: float = 30.0):
        """An out-of-band command (exec-oob): QEMU runs it in the monitor's
        I/O thread, even while its main thread is blocked."""
        self._oob_id = getattr(self, "_oob_id", 0) + 1
        self._mon.settimeout(timeout)
        try:
            r = self._mon.cmd_obj({"exec-oob": name, "arguments": args or {},
                                   "id": "oob-%d" % self._oob_id})
        except (LibQMPError, OSError, EOFError, asyncio.TimeoutError) as e:
            raise QMPError(name, "%s QEMU: no answer to exec-oob: %s"
                           % (self.name, str(e) or type(e).__name__))
        if "error" in r:
            raise QMPError(name, r["error"].get("desc", str(r["error"])))
        return r.get("return")

    def events(self):
        """The events received so far (and forget them)."""
        return self._mon.get_events(wait=False)

    def close(self):
        if self._open:
            self._open = False
            try:
                self._mon.close()
            except Exception:  # QEMU died under us: nothing left to close
                pass
