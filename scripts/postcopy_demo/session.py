# SPDX-License-Identifier: GPL-2.0-or-later
"""A session owns every resource of a run: its QEMUs, hugepage
reservations, network namespaces, sockets and logs; close() (or leaving
`with`) frees them all, on every path.

    with Session(Options(guest="bootblock", smp=1, mem=256)) as s:
        src = s.start_source()              # booted, guest running
        dst = s.start_destination()         # listening (-incoming defer)
        r = s.migrate(src, dst)             # never raises for a failed one
        assert r["status"] == "completed" and s.verify(dst)["ok"]

A scenario (scenarios/) is a function of a Session; new ones (a benchmark,
network cuts with postcopy recovery) add a module there and reuse
start_source/start_destination/migrate/verify, or the pieces of
migration.py, without starting QEMU themselves."""

import os
import shutil
import tempfile
import time
from typing import List, Optional

from . import migration
from .guests import make_guest
from .hugepages import HugePages
from .netns import NetPair
from .options import ROOT, MigrateError, Options, parse_ram_spec, ram_spec_str, repo_path, side_ram
from .procs import SignalGuard, register_cleanup, unregister_cleanup
from .report import Out
from .unprivileged import HostPrivileges, Unprivileged
from .vm import VM


class Session:
    def __init__(self, opts: Options, out: Optional[Out] = None):
        self.opts = opts
        self.out = out or Out(opts.progress, opts.progress_interval, opts.quiet)
        self.vms: List[VM] = []
        self.net: Optional[NetPair] = None
        self.hugepages = HugePages(self.out)
        self.ndst = 0
        self.accel = None
        self.accel_note = ""
        self.guest = None
        self._guard = SignalGuard()
        self._closed = False
        self.sockdir = None
        self.logdir = None
        self.unpriv: Optional[Unprivileged] = None   # --unprivileged

    def __enter__(self):
        self._guard.__enter__()
        try:
            self.open()
        except BaseException:
            self.close()
            self._guard.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc):
        self.close()
        self._guard.__exit__(*exc)
        return False

    def open(self):
        o = self.opts
        if os.geteuid() != 0:
            raise MigrateError(
                "this must run as root: it reserves hugepages (/sys/kernel/mm/hugepages), "
                "creates network namespaces, uses userfaultfd for postcopy and /dev/kvm "
                "(run it with sudo, or as root)")
        register_cleanup(self.close)
        self.src_binary, self.dst_binary = repo_path(o.src_binary), repo_path(o.dst_binary)
        for b in {self.src_binary, self.dst_binary}:
            if not os.access(b, os.X_OK):
                raise MigrateError("QEMU binary %s is missing or not executable (build it: "
                                   "make demo, or scripts/qemu-build.sh)" % b)
        if o.switch_after < 0:
            raise MigrateError("--switch-after must be >= 0")
        self.src_ram, self.dst_ram = side_ram(o, "src"), side_ram(o, "dst")
        self.logdir = repo_path(o.logdir) if o.logdir else os.path.join(
            ROOT, "build", "migrate-runs", time.strftime("%Y%m%d-%H%M%S") + "-%d" % os.getpid())
        os.makedirs(self.logdir, exist_ok=True)
        # unix socket paths must be short: keep them out of the log dir
        self.sockdir = tempfile.mkdtemp(prefix="pcrs-mig-")
        self.guest = make_guest(o, self.logdir)
        if o.unprivileged:
            self.unpriv = Unprivileged(o.uffd_access, self.out.say)
            self.unpriv.setup()
            self.unpriv.give_dir(self.sockdir)
            self.unpriv.check_files(self)
        self.accel, self.accel_note = self.guest.choose_accel(o.accel)
        # Leftovers of runs that were SIGKILLed (their QEMUs died with them).
        self.hugepages.release_stale()
        HostPrivileges.restore_stale(self.out.say)
        if shutil.which("ip"):
            NetPair.remove_stale(self.out)
        if o.netem_delay is not None:
            if o.netem_delay < 0:
                raise MigrateError("--netem-delay must be >= 0")
            self.net = NetPair(o.netem_delay, self.out, self.logdir)
            self.net.setup()
            self.out.say("network: namespaces %s and %s joined by a veth pair (%s <-> %s), %s"
                         % (self.net.ns["src"], self.net.ns["dst"], self.net.addr["src"],
                            self.net.addr["dst"], self.net.method_text))

    def hugepages_run_total(self, ps: str) -> int:
        """Pages of size ps the source and one destination need together."""
        return sum(b.pages for b in self.src_ram + self.dst_ram if b.pagesize == ps)

    def close(self):
        if self._closed:
            return
        self._closed = True
        unregister_cleanup(self.close)
        for vm in self.vms:
            try:
                vm.stop()
            except Exception:
                pass
        if self.net:
            self.net.cleanup()
            unregister_cleanup(self.net.cleanup)
        self.hugepages.release()
        if self.unpriv:
            self.unpriv.restore()
        if self.sockdir:
            shutil.rmtree(self.sockdir, ignore_errors=True)

    # -- VMs ---------------------------------------------------------------

    def _boot_timeout(self) -> float:
        return self.opts.boot_timeout or self.guest.boot_timeout(self.accel)

    def start_source(self, ram: Optional[str] = None, binary: Optional[str] = None) -> VM:
        """Start the guest on a new source QEMU; returns once it runs."""
        blocks = parse_ram_spec(ram) if ram else self.src_ram
        self.out.say("guest: %d MiB (%s), %d vCPUs, %s" % (
            sum(b.mib for b in blocks), ram_spec_str(blocks), self.opts.smp, self.accel_note))
        try:
            return self._boot_source(blocks, binary, self._boot_timeout())
        except MigrateError as e:
            if self.opts.accel != "auto" or self.accel != "kvm":
                raise
            self.out.warn("the guest did not boot under KVM (%s); falling back to TCG"
                          % str(e).splitlines()[0])
            self.accel, self.accel_note = "tcg", "TCG: the guest did not boot under KVM here"
            return self._boot_source(blocks, binary, self.guest.boot_timeout("tcg"))

    def _boot_source(self, blocks, binary, timeout) -> VM:
        nsrc = sum(v.role == "source" for v in self.vms)
        vm = VM(self, "source", "src%d" % nsrc if nsrc else "src", binary or self.src_binary,
                blocks, incoming=False)
        self.vms.append(vm)
        t0 = time.monotonic()
        vm.start()
        vm.qmp.cmd("cont")
        self.out.say("booting the guest on the source (%s) ..." % os.path.relpath(vm.binary, ROOT))
        try:
            what = self.guest.wait_ready(vm, timeout)
        except MigrateError:
            vm.stop()
            raise
        vm.workload = what
        self.out.say("guest up in %.1f s: %s" % (time.monotonic() - t0, what))
        return vm

    def start_destination(self, ram: Optional[str] = None, binary: Optional[str] = None) -> VM:
        """A new destination QEMU listening for the migration (-incoming defer)."""
        blocks = parse_ram_spec(ram) if ram else self.dst_ram
        self.ndst += 1
        vm = VM(self, "destination", "dst%d" % self.ndst, binary or self.dst_binary, blocks,
                incoming=True)
        self.vms.append(vm)
        vm.start()
        migration.listen(self, vm)
        return vm

    def stop(self, vm: VM):
        vm.stop()

    def migrate(self, src: VM, dst: VM, switch_after: Optional[int] = None,
                hooks: migration.Hooks = migration.Hooks()) -> dict:
        """Migrate src to dst with postcopy (migration.migrate); hooks act
        around the switch."""
        return migration.migrate(self, src, dst, switch_after, hooks)

    def verify(self, vm: VM, timeout: Optional[float] = None) -> dict:
        """The guest checks its memory: {"ok", "line", "error", ...}."""
        if not vm.alive():
            return {"ok": False, "line": None,
                    "error": "%s QEMU is not running (status %s)" % (vm.name, vm.proc.returncode)}
        return self.guest.verify(vm, timeout or self.opts.verify_timeout)
