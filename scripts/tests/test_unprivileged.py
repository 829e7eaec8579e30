# SPDX-License-Identifier: GPL-2.0-or-later
"""Unit tests of --unprivileged (postcopy_demo/unprivileged.py and
scenarios/unprivileged.py): how QEMU opened userfaultfd, read from its
trace; what a run changed on a device node given back, by the run and by
the next one after a SIGKILL; the refusal expectation against stock
QEMU's words.  Run: python3 -m unittest discover -s scripts/tests."""

import json
import os
import re
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from postcopy_demo import unprivileged as up  # noqa: E402
from postcopy_demo.scenarios import unprivileged as scen  # noqa: E402

STOCK_REFUSAL = "Postcopy is not supported: Userfaultfd not available: Operation not permitted"
FIXED_REFUSAL = ("Postcopy is not supported: Userfaultfd not available: Operation not "
                 "permitted (/dev/userfaultfd: Permission denied; the userfaultfd system "
                 "call needs vm.unprivileged_userfaultfd=1 or CAP_SYS_PTRACE)")


def dead_pid() -> int:
    pid = 4194303
    while os.path.exists("/proc/%d" % pid):
        pid -= 1
    return pid


class OpenMode(unittest.TestCase):
    def mode_of(self, text):
        with tempfile.NamedTemporaryFile("w", suffix=".log", delete=False) as f:
            f.write(text)
        try:
            return up.uffd_open_mode(f.name)
        finally:
            os.unlink(f.name)

    def test_device(self):
        self.assertIn("through /dev/userfaultfd",
                      self.mode_of("qemu: x\n123@1.5:uffd_detect_open_mode 1\n"))

    def test_syscall(self):
        self.assertIn("syscall", self.mode_of("123@1.5:uffd_detect_open_mode 2\n"))

    def test_never_opened(self):
        self.assertIsNone(self.mode_of("123@1.5:postcopy_rs_discard_stats blocks 1\n"))


class RefusalExpectation(unittest.TestCase):
    def test_stock_refusal_does_not(self):
        # Stock QEMU names neither way in: the series' fix is what passes.
        self.assertIsNone(re.search(scen.REFUSAL_MUST_SAY, STOCK_REFUSAL))

    def test_fixed_refusal_matches(self):
        self.assertRegex(FIXED_REFUSAL, scen.REFUSAL_MUST_SAY)

    def test_both_names_needed(self):
        self.assertIsNone(re.search(scen.REFUSAL_MUST_SAY,
                                    FIXED_REFUSAL.replace("vm.unprivileged_userfaultfd", "x")))

    def test_other_failure_does_not(self):
        self.assertIsNone(re.search(scen.REFUSAL_MUST_SAY, "migration failed: Broken pipe"))


@unittest.skipUnless(os.geteuid() == 0, "chown needs root")
class Restore(unittest.TestCase):
    def setUp(self):
        self.dir = tempfile.mkdtemp()
        self.node = os.path.join(self.dir, "node")
        with open(self.node, "w"):
            pass
        os.chown(self.node, 0, 0)
        os.chmod(self.node, 0o600)
        self.said = []
        self.state_dir, up.STATE_DIR = up.STATE_DIR, self.dir

    def tearDown(self):
        up.STATE_DIR = self.state_dir
        for n in os.listdir(self.dir):
            os.unlink(os.path.join(self.dir, n))
        os.rmdir(self.dir)

    def test_set_and_restore(self):
        h = up.HostPrivileges(True, self.said.append)
        h.state = os.path.join(self.dir, "unprivileged-%d.json" % os.getpid())
        h._set_node(self.node, "none", 4242, 0o660)
        st = os.stat(self.node)
        self.assertEqual((st.st_gid, st.st_mode & 0o7777), (4242, 0o660))
        h.restore()
        st = os.stat(self.node)
        self.assertEqual((st.st_uid, st.st_gid, st.st_mode & 0o7777), (0, 0, 0o600))
        self.assertFalse(os.path.exists(h.state))

    def test_stale_run_is_given_back(self):
        os.chown(self.node, 0, 4242)
        os.chmod(self.node, 0o660)
        state = os.path.join(self.dir, "unprivileged-%d.json" % dead_pid())
        with open(state, "w") as f:
            json.dump({"saved": {self.node: {"uid": 0, "gid": 0, "mode": 0o600}},
                       "created": []}, f)
        up.HostPrivileges.restore_stale(self.said.append)
        st = os.stat(self.node)
        self.assertEqual((st.st_gid, st.st_mode & 0o7777), (0, 0o600))
        self.assertFalse(os.path.exists(state))

    def test_live_run_is_left_alone(self):
        state = os.path.join(self.dir, "unprivileged-%d.json" % os.getpid())
        with open(state, "w") as f:
            json.dump({"saved": {self.node: {"uid": 0, "gid": 0, "mode": 0o644}},
                       "created": []}, f)
        up.HostPrivileges.restore_stale(self.said.append)
        self.assertEqual(os.stat(self.node).st_mode & 0o7777, 0o600)
        self.assertTrue(os.path.exists(state))


class Identity(unittest.TestCase):
    def test_own_process(self):
        ident = up.process_identity(os.getpid())
        self.assertEqual(ident["uid"], os.geteuid())
        self.assertIn("cap_eff", ident)


if __name__ == "__main__":
    unittest.main()
