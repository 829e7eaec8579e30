# SPDX-License-Identifier: GPL-2.0-or-later
"""The harness's reading of a QEMU's stderr, and its wait for QMP.

Needs qemu.qmp (scripts/demo-deps.sh's venv; scripts/test.sh runs these
with its python)."""

import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from qemu.qmp import ConnectError  # noqa: E402

from postcopy_demo import qmp, vm  # noqa: E402
from postcopy_demo.options import MigrateError  # noqa: E402

PLACE_ERROR = ("qemu-system-x86_64: postcopy-rs: postcopy_rs_place_page: UFFDIO_COPY of "
               "0x1000 bytes at 0x7f0000001000: the page is already present (errno 17)")
STDERR = [
    "1234@1700000000.000001:postcopy_rs_incoming_stats faults 3 requests 2",
    "postcopy_rs_incoming_latency pages 2 p50_us 64",
    "qemu-system-x86_64: warning: host doesn't support requested feature",
    PLACE_ERROR,
    "qemu-system-x86_64: load of migration failed: Input/output error",
    "1234@1700000000.000002:postcopy_rs_incoming_stats faults 4 requests 2",
]


class Stderr(unittest.TestCase):
    def write(self, lines):
        f = tempfile.NamedTemporaryFile("w", suffix=".log", delete=False)
        self.addCleanup(os.unlink, f.name)
        f.write("".join(ln + "\n" for ln in lines))
        f.close()
        return f.name

    def test_trace_events_are_left_out_and_the_library_errors_kept(self):
        self.assertEqual(vm.stderr_lines(self.write(STDERR)), STDERR[2:5])

    def test_the_library_error_is_the_cause_even_before_a_later_failure(self):
        self.assertEqual(vm.why_paused(self.write(STDERR)), PLACE_ERROR)

    def test_without_a_library_error_the_last_failure_is_the_cause(self):
        lines = [ln for ln in STDERR if ln != PLACE_ERROR]
        self.assertEqual(vm.why_paused(self.write(lines)), STDERR[4])

    def test_nothing_said_of_a_failure_gives_none(self):
        self.assertIsNone(vm.why_paused(self.write(STDERR[:3])))
        self.assertIsNone(vm.why_paused("/nonexistent/qemu.log"))
        self.assertEqual(vm.stderr_lines("/nonexistent/qemu.log"), [])


class FakeProc:
    def __init__(self, exits_after=None):
        self.polls = 0
        self.exits_after = exits_after
        self.returncode = None

    def poll(self):
        self.polls += 1
        if self.exits_after is not None and self.polls > self.exits_after:
            self.returncode = 1
        return self.returncode


def connect_failing_with(*errors):
    """A connect() that raises `errors` in turn, then returns "mon"."""
    left = list(errors)

    def connect():
        if left:
            raise left.pop(0)
        return "mon"
    return connect


def wait(connect, proc=None, timeout=5.0):
    return qmp.connect_when_listening(connect, "/run/qmp.sock", proc or FakeProc(),
                                      "destination", "QMP socket", timeout)


class ConnectWhenListening(unittest.TestCase):
    def test_not_yet_bound_then_not_yet_listening_is_waited_for(self):
        connect = connect_failing_with(
            FileNotFoundError(2, "No such file or directory"),
            ConnectError("connect", FileNotFoundError(2, "No such file or directory")),
            ConnectError("connect", ConnectionRefusedError(111, "Connection refused")),
            ConnectionRefusedError(111, "Connection refused"))
        self.assertEqual(wait(connect), "mon")

    def test_any_other_error_is_raised_at_once(self):
        proc = FakeProc()
        with self.assertRaises(ConnectError):
            wait(connect_failing_with(ConnectError("connect", PermissionError(13, "denied"))),
                 proc)
        with self.assertRaises(PermissionError):
            wait(connect_failing_with(PermissionError(13, "denied")), proc)
        self.assertEqual(proc.polls, 0)

    def test_a_qemu_that_exits_is_not_waited_for(self):
        connect = connect_failing_with(*[FileNotFoundError(2, "gone")] * 100)
        with self.assertRaisesRegex(MigrateError, "destination QEMU exited .status 1. "
                                    "before its QMP socket was up"):
            wait(connect, FakeProc(exits_after=2))

    def test_a_socket_that_never_listens_times_out(self):
        def connect():
            raise ConnectionRefusedError(111, "Connection refused")
        with self.assertRaisesRegex(MigrateError, "no QMP socket listening at "
                                    "/run/qmp.sock after 0s .*Connection refused"):
            wait(connect, timeout=0.1)


if __name__ == "__main__":
    unittest.main()
