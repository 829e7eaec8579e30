# SPDX-License-Identifier: GPL-2.0-or-later
"""The guest's serial console: a unix socket QEMU serves, read by a thread
that keeps every line (and logs the raw bytes)."""

import re
import socket
import subprocess
import threading
import time
from typing import List, Optional

from .options import MigrateError
from .qmp import connect_when_listening

# A guest that never ends its line (QEMU's boot block prints 'B' per pass)
# gets its output cut into lines of this many bytes.
MAX_LINE = 4096


class Console:
    def __init__(self, path: str, proc: subprocess.Popen, name: str, log_path: str,
                 timeout=30.0):
        self.name = name
        self.lines: List[str] = []
        self.cond = threading.Condition()
        self.closed = False
        self.partial = ""             # the current line, not yet ended

        def connect():
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                s.connect(path)
            except OSError:
                s.close()
                raise
            return s
        try:
            self.sock = connect_when_listening(connect, path, proc, name, "console socket",
                                               timeout)
        except OSError as e:
            raise MigrateError("%s QEMU: cannot connect to its console: %s" % (name, e))
        self.log = open(log_path, "ab", buffering=0)
        self.thread = threading.Thread(target=self._reader, name="console-" + name,
                                       daemon=True)
        self.thread.start()

    def _reader(self):
        partial = b""
        try:
            while True:
                data = self.sock.recv(65536)
                if not data:
                    break
                self.log.write(data)
                partial += data
                *full, partial = partial.split(b"\n")
                while len(partial) > MAX_LINE:
                    full.append(partial[:MAX_LINE])
                    partial = partial[MAX_LINE:]
                with self.cond:
                    for ln in full:
                        self.lines.append(ln.decode("utf-8", "replace").rstrip("\r"))
                    self.partial = partial.decode("utf-8", "replace").rstrip("\r")
                    self.cond.notify_all()
        except OSError:
            pass
        with self.cond:
            if partial:
                self.lines.append(partial.decode("utf-8", "replace").rstrip("\r"))
            self.partial = ""
            self.closed = True
            self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.lines)

    def wait_for(self, pattern: str, timeout: float, since: int = 0, alive=None,
                 partial: bool = False) -> Optional[re.Match]:
        """First line from index `since` matching pattern (with partial, the
        unfinished line too), or None on timeout, closed console, or when
        alive() turns false."""
        rx = re.compile(pattern)
        deadline = time.monotonic() + timeout
        i = since
        with self.cond:
            while True:
                while i < len(self.lines):
                    m = rx.search(self.lines[i])
                    i += 1
                    if m:
                        return m
                if partial and self.partial:
                    m = rx.search(self.partial)
                    if m:
                        return m
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    return None
                if alive is not None and not alive():
                    self.cond.wait(0.2)     # one last look at what arrived
                    if i >= len(self.lines):
                        return None
                    continue
                self.cond.wait(min(left, 0.5))

    def send(self, line: str):
        self.sock.sendall(line.encode() + b"\n")

    def since(self, mark: int) -> List[str]:
        """The complete lines from index mark (a mark() value) on."""
        with self.cond:
            return self.lines[mark:]

    def tail(self, n=25) -> List[str]:
        with self.cond:
            if self.partial:
                return (self.lines + [self.partial + " <no newline yet>"])[-n:]
            return self.lines[-n:]

    def count(self, text: str) -> int:
        """How often text came so far, the unfinished line included (the
        boot block's 'B' per pass ends no line)."""
        with self.cond:
            return sum(ln.count(text) for ln in self.lines) + self.partial.count(text)

    def wait_count(self, text: str, more_than: int, timeout: float) -> bool:
        """Wait until count(text) > more_than; False on timeout or a closed
        console."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if self.count(text) > more_than:
                    return True
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    return False
                self.cond.wait(min(left, 0.5))

    def last(self, pattern: str) -> Optional[str]:
        rx = re.compile(pattern)
        with self.cond:
            for ln in reversed(self.lines):
                if rx.search(ln):
                    return ln
        return None

    def guest_dirty_rate(self) -> Optional[float]:
        """Pages/s the workload dirtied between its last two PROGRESS lines."""
        rx = re.compile(r"^PROGRESS t=(\d+)s dirtied=(\d+)")
        found = []
        with self.cond:
            for ln in reversed(self.lines):
                m = rx.match(ln)
                if m:
                    found.append((int(m.group(1)), int(m.group(2))))
                    if len(found) == 2:
                        break
        if len(found) < 2 or found[0][0] <= found[1][0]:
            return None
        return (found[0][1] - found[1][1]) / float(found[0][0] - found[1][0])

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(2)
        self.log.close()
