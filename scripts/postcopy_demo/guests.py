# SPDX-License-Identifier: GPL-2.0-or-later
"""The guests a VM can run, and the accelerator for them.

  LinuxGuest      scripts/guest-build.sh's kernel + initramfs: guest/workload.c
                  fills most of RAM with self-describing pages, keeps
                  dirtying them, and checks every page on the console
                  command `verify` (answer: VERIFY OK|FAIL ...).
  BootBlockGuest  QEMU's own migration-test boot sector
                  (tests/qtest/migration/i386/a-b-bootblock.h of the fetched
                  QEMU tree): it increments the first byte of every 4 KiB
                  page from 1 to 100 MiB forever and prints 'B' after each
                  pass; its RAM is checked as migration-test's
                  check_guests_ram() does (pmemsave, then one value per page
                  with at most one step down where the guest was stopped).
  FirmwareGuest   nothing to boot: the firmware alone, for a check that
                  needs a running VM and not what it runs (or its RAM).

A guest gives QEMU arguments, waits until it runs, and verifies itself; the
VM (vm.py) is the one place that starts QEMU."""

import fcntl
import glob
import os
import re
import time
from typing import List, Tuple

from .options import ROOT, MigrateError, repo_path

MEM_START, MEM_END, PAGE = 1 << 20, 100 << 20, 4096   # the boot block's range


def kvm_usable() -> Tuple[bool, str]:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return False, "/dev/kvm: %s" % e.strerror
    try:
        ver = fcntl.ioctl(fd, 0xAE00)  # KVM_GET_API_VERSION
        if ver != 12:
            return False, "/dev/kvm API version %d, not 12" % ver
    except OSError as e:
        return False, "/dev/kvm: KVM_GET_API_VERSION failed: %s" % e.strerror
    finally:
        os.close(fd)
    return True, "/dev/kvm works"


def kvm_if_usable(requested: str) -> Tuple[str, str]:
    """(accel, note) for a guest that runs on any KVM (kvm-pvm included),
    as a boot sector or the firmware alone do: auto is KVM where usable."""
    if requested != "auto":
        return requested, requested.upper() + " (asked for)"
    ok, why = kvm_usable()
    return ("kvm", "KVM") if ok else ("tcg", "TCG: %s" % why)


class LinuxGuest:
    name = "linux"

    def __init__(self, opts):
        self.opts = opts
        self.kernel, self.initrd = repo_path(opts.kernel), repo_path(opts.initrd)
        for f, what in ((self.kernel, "kernel"), (self.initrd, "initramfs")):
            if not os.path.isfile(f):
                raise MigrateError("guest %s %s is missing: run scripts/guest-build.sh"
                                   % (what, f))

    def choose_accel(self, requested: str) -> Tuple[str, str]:
        """(accel, note).  auto: KVM if it can boot a Linux guest here, else TCG."""
        if requested == "tcg":
            return "tcg", "TCG (asked for with --tcg)"
        ok, why = kvm_usable()
        if requested == "kvm":
            if not ok:
                raise MigrateError("--kvm: KVM is not usable: %s" % why)
            return "kvm", "KVM (asked for with --kvm)"
        if not ok:
            return "tcg", "TCG: KVM is not usable (%s); TCG is much slower" % why
        if os.path.isdir("/sys/module/kvm_pvm"):
            return "tcg", ("TCG: this host's KVM is kvm-pvm (nested, paging-based), which "
                           "does not boot a stock Linux kernel (it hangs in the "
                           "decompressor); --kvm forces a try")
        return "kvm", "KVM"

    def boot_timeout(self, accel: str) -> float:
        return 60.0 if accel == "kvm" else 180.0

    def cmdline(self) -> str:
        o = self.opts
        append = ["console=ttyS0", "panic=-1", "workload.rate=%s" % o.rate,
                  "workload.report=1"]
        if o.workload_mb:
            append.append("workload.mb=%d" % o.workload_mb)
        return " ".join(append + list(o.guest_args))

    def qemu_args(self, accel: str) -> List[str]:
        return (["-cpu", "host"] if accel == "kvm" else []) + [
            "-kernel", self.kernel, "-initrd", self.initrd, "-append", self.cmdline()]

    def wait_ready(self, vm, timeout: float) -> str:
        """Wait for the workload's READY; what it says about itself."""
        m = vm.console.wait_for(r"^READY (\d+)", timeout, alive=vm.alive)
        if not m:
            why = vm.why_not_ready("no READY from the workload within %.0f s" % timeout)
            panic = vm.console.last(r"Kernel panic")
            if panic:
                why = "the guest kernel panicked (%s); %s" % (
                    re.sub(r"^\[[ 0-9.]*\] ", "", panic), why)
            if vm.accel == "kvm" and os.path.isdir("/sys/module/kvm_pvm"):
                why += (" (this host's KVM is kvm-pvm, which hangs booting a stock Linux "
                        "kernel: use --tcg)")
            raise MigrateError("the guest did not boot: %s\n%s\n%s"
                               % (why, vm.console_excerpt(), vm.stderr_excerpt()))
        vm.pages = int(m.group(1))
        return (vm.console.last(r"^WORKLOAD mb=") or "").replace("WORKLOAD ", "workload ")

    @staticmethod
    def command(vm, line: str, answer: str, timeout: float):
        """Type line on the console: (the answer's match or None, the index
        of the first console line after the command)."""
        mark = vm.console.mark()
        vm.console.send(line)
        return vm.console.wait_for(answer, timeout, since=mark, alive=vm.alive), mark

    def stalls(self, vm, timeout: float = 30.0) -> dict:
        """The workload's `stalls`: {"threads": [per-thread dict], "total":
        dict}, each parse_stalls() of one STALLS line (guest/README.md)."""
        m, mark = self.command(vm, "stalls", r"^STALLS total\b", timeout)
        if not m:
            raise MigrateError("no 'STALLS total' from the guest on %s within %.0f s\n%s"
                               % (vm.name, timeout, vm.console_excerpt(15)))
        lines = [ln for ln in vm.console.since(mark) if ln.startswith("STALLS thread=")]
        return {"threads": [parse_stalls(ln) for ln in lines],
                "total": parse_stalls(m.string)}

    def verify(self, vm, timeout: float) -> dict:
        """Type `verify` on the console; the guest checks every page."""
        t0 = time.monotonic()
        m, _ = self.command(vm, "verify", r"^VERIFY (OK|FAIL)\b.*", timeout)
        if not m:
            return {"ok": False, "line": None,
                    "error": "no VERIFY answer from the guest on %s within %.0f s\n%s"
                    % (vm.name, timeout, vm.console_excerpt(15))}
        return {"ok": m.group(1) == "OK", "line": m.group(0).strip(),
                "seconds": round(time.monotonic() - t0, 2), "error": None}


class BootBlockGuest:
    name = "bootblock"
    HEADER = os.path.join("tests", "qtest", "migration", "i386", "a-b-bootblock.h")

    def __init__(self, opts, workdir: str):
        if opts.bootblock:
            header = repo_path(opts.bootblock)
            if not os.path.exists(header):
                raise MigrateError("boot block header %s is missing" % header)
        else:
            # Any fetched tree has it (the patch series do not touch it):
            # the demo's, or one of scripts/qemu-test.sh's per version
            # (scripts/test-sanitizers.sh fetches 10.2.2's alone).
            trees = [os.path.join(ROOT, "build", t) for t in ("qemu-src", "qemu-src-patched")]
            trees += sorted(glob.glob(os.path.join(ROOT, "build", "qemu-*", "src*")))
            found = [os.path.join(t, self.HEADER) for t in trees
                     if os.path.exists(os.path.join(t, self.HEADER))]
            if not found:
                raise MigrateError("%s missing from build/qemu-src{,-patched} and "
                                   "build/qemu-*/src*: run scripts/qemu-fetch.sh first"
                                   % self.HEADER)
            header = found[0]
        with open(header) as f:
            text = f.read()
        body = text[text.index("{") + 1:text.index("}")]
        boot = bytes(int(x, 16) for x in re.findall(r"0x[0-9a-fA-F]{2}", body))
        if len(boot) != 512:
            raise MigrateError("boot sector is %d bytes, not 512" % len(boot))
        self.image = os.path.join(workdir, "bootsect.raw")
        with open(self.image, "wb") as f:
            f.write(boot)
        self.workdir = workdir

    def choose_accel(self, requested: str) -> Tuple[str, str]:
        return kvm_if_usable(requested)

    def boot_timeout(self, accel: str) -> float:
        return 30.0

    def qemu_args(self, accel: str) -> List[str]:
        return ["-drive", "file=%s,format=raw,if=ide" % self.image]

    def wait_ready(self, vm, timeout: float) -> str:
        """Wait for the 'A' at start and the 'B' of the first pass."""
        if not vm.console.wait_for(r"AB", timeout, alive=vm.alive, partial=True):
            raise MigrateError("%s: the guest never ran its loop (%s)\n%s" % (
                vm.name, vm.why_not_ready("no 'AB' within %.0f s" % timeout),
                vm.console_excerpt(3)))
        return "QEMU's migration-test boot block (1..100 MiB dirtied, one byte per page)"

    def verify(self, vm, timeout: float) -> dict:
        """check_guests_ram(): stop the VM, dump 1..100 MiB, check, resume."""
        was = vm.run_state()
        vm.qmp.cmd("stop")
        dump = os.path.join(self.workdir, vm.name + ".ram")
        vm.qmp.cmd("pmemsave", {"val": MEM_START, "size": MEM_END - MEM_START,
                                "filename": dump}, timeout=timeout)
        with open(dump, "rb") as f:
            data = f.read()
        os.unlink(dump)
        if was == "running":
            vm.qmp.cmd("cont")
        if len(data) != MEM_END - MEM_START:
            return {"ok": False, "line": None,
                    "error": "%s: pmemsave returned %d bytes" % (vm.name, len(data))}
        first = last = data[0]
        hit_edge, bad = False, []
        for off in range(PAGE, len(data), PAGE):
            b = data[off]
            if b != last:
                if (b + 1) % 256 == last and not hit_edge:
                    hit_edge = True
                else:
                    bad.append("%#x: %#x after %#x" % (MEM_START + off, b, last))
            last = b
        pages = len(data) // PAGE
        if bad:
            return {"ok": False, "line": "RAM FAIL %d of %d pages" % (len(bad), pages),
                    "error": "%s: guest RAM inconsistent at %d pages (first byte %#x): %s"
                    % (vm.name, len(bad), first, bad[:5])}
        return {"ok": True, "line": "RAM OK pages=%d" % pages, "error": None}


class FirmwareGuest:
    """No boot device: the firmware finds nothing to boot and halts (QEMU's
    default reboot-timeout is -1: it does not retry), the VM running."""
    name = "none"

    def __init__(self, opts):
        self.opts = opts

    def choose_accel(self, requested: str) -> Tuple[str, str]:
        return kvm_if_usable(requested)

    def boot_timeout(self, accel: str) -> float:
        return 30.0

    def qemu_args(self, accel: str) -> List[str]:
        return []

    def wait_ready(self, vm, timeout: float) -> str:
        state = vm.run_state()
        if state != "running":
            raise MigrateError("%s: the VM is %s, not running (%s)"
                               % (vm.name, state, vm.why_not_ready("no answer")))
        return "no guest: the firmware alone"

    def verify(self, vm, timeout: float) -> dict:
        return {"ok": False, "line": None,
                "error": "%s: no guest, nothing to verify" % vm.name}


def parse_stalls(line: str) -> dict:
    """One STALLS line: its key=value fields (numbers as float), "hist" as
    {bucket: count}."""
    out = {}
    for tok in line.split()[1:]:
        k, eq, v = tok.partition("=")
        if not eq:
            continue
        if k == "hist":
            out[k] = {int(b): int(c) for b, c in
                      (kv.split(":") for kv in v.split(",") if kv)}
            continue
        try:
            out[k] = float(v)
        except ValueError:
            out[k] = v
    return out


def make_guest(opts, workdir: str):
    if opts.guest == "linux":
        return LinuxGuest(opts)
    if opts.guest == "bootblock":
        return BootBlockGuest(opts, workdir)
    if opts.guest == "none":
        return FirmwareGuest(opts)
    raise MigrateError("unknown guest %r (linux, bootblock or none)" % opts.guest)
