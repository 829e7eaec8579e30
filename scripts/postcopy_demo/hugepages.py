# SPDX-License-Identifier: GPL-2.0-or-later
"""Hugepage reservations: raise nr_hugepages as QEMUs need pages, give back
exactly what we added.

What was added is also written to STATE_DIR/hugepages-<pid>.json, so a
later run gives back what a SIGKILLed one could not."""

import json
import os
import re
import sys
from typing import Dict

from .options import PAGE_SIZES, HugepagesUnavailable, MigrateError
from .report import Out, fmt_bytes


class HugePages:
    STATE_DIR = "/run/postcopy-rs-migrate"

    def __init__(self, out: Out):
        self.out = out
        self.added: Dict[str, int] = {}
        self.state = os.path.join(self.STATE_DIR, "hugepages-%d.json" % os.getpid())

    def _save(self):
        try:
            os.makedirs(self.STATE_DIR, exist_ok=True)
            with open(self.state, "w") as f:
                json.dump(self.added, f)
        except OSError:
            pass

    def release_stale(self):
        """Give back what runs that died without cleaning up had added."""
        try:
            names = os.listdir(self.STATE_DIR)
        except OSError:
            return
        for n in names:
            m = re.fullmatch(r"hugepages-(\d+)\.json", n)
            if not m or os.path.exists("/proc/%s" % m.group(1)):
                continue
            path = os.path.join(self.STATE_DIR, n)
            try:
                with open(path) as f:
                    added = json.load(f)
                for ps, cnt in added.items():
                    if ps in PAGE_SIZES and int(cnt) > 0:
                        nr = self._get(ps, "nr_hugepages")
                        self._set_nr(ps, max(0, nr - int(cnt)))
                        self.out.say("gave back %d x %s hugepages left by a killed run (pid %s)"
                                     % (int(cnt), ps, m.group(1)))
                os.unlink(path)
            except (OSError, ValueError):
                pass

    @staticmethod
    def _dir(ps: str) -> str:
        return "/sys/kernel/mm/hugepages/hugepages-%dkB" % (PAGE_SIZES[ps] // 1024)

    def _get(self, ps: str, what: str) -> int:
        with open(os.path.join(self._dir(ps), what)) as f:
            return int(f.read().strip())

    def _set_nr(self, ps: str, n: int):
        with open(os.path.join(self._dir(ps), "nr_hugepages"), "w") as f:
            f.write("%d\n" % n)

    def available(self, ps: str) -> int:
        return self._get(ps, "free_hugepages") - self._get(ps, "resv_hugepages")

    def ensure(self, ps: str, need: int, run_total: int):
        """Make `need` more pages of size ps available (free, not reserved)."""
        if need <= 0:
            return
        if not os.path.isdir(self._dir(ps)):
            raise HugepagesUnavailable("the kernel offers no %s hugepages (%s is missing)"
                                       % (ps, self._dir(ps)))
        avail = self.available(ps)
        if avail >= need:
            return
        want = need - avail
        nr0 = self._get(ps, "nr_hugepages")
        try:
            self._set_nr(ps, nr0 + want)
        except OSError as e:
            raise MigrateError("could not raise %s/nr_hugepages: %s" % (self._dir(ps), e))
        nr1 = self._get(ps, "nr_hugepages")
        granted = max(0, nr1 - nr0)
        self.added[ps] = self.added.get(ps, 0) + granted
        self._save()
        if granted:
            self.out.say("reserved %d x %s hugepages (nr_hugepages %d -> %d)"
                         % (granted, ps, nr0, nr1))
        if granted < want:
            raise HugepagesUnavailable(
                "not enough %s hugepages: this QEMU needs %d (%s; the whole run needs %d), "
                "%d were available and the kernel granted only %d of the %d more asked for "
                "(nr_hugepages %d -> %d; memory too fragmented or too little free RAM: "
                "free some memory, or try a smaller --mem)"
                % (ps, need, fmt_bytes(need * PAGE_SIZES[ps]), run_total, avail,
                   granted, want, nr0, nr1))

    def release(self):
        for ps, n in list(self.added.items()):
            if n <= 0:
                continue
            try:
                nr = self._get(ps, "nr_hugepages")
                self._set_nr(ps, max(0, nr - n))
                self.out.say("gave back %d x %s hugepages (nr_hugepages %d -> %d)"
                             % (n, ps, nr, self._get(ps, "nr_hugepages")))
            except OSError as e:
                print("WARNING: could not give back %d x %s hugepages: %s" % (n, ps, e),
                      file=sys.stderr)
            self.added[ps] = 0
        try:
            os.unlink(self.state)
        except OSError:
            pass
