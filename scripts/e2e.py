#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""End-to-end postcopy tests that QEMU's qtests lack: hugepage-backed guest
RAM (host page != target page), two RAM blocks of different page sizes, and
mismatched page sizes between source and destination; plus a blocktime
benchmark, patched against unpatched QEMU.

The guest is QEMU's own migration-test boot sector (taken from the fetched
QEMU tree, tests/qtest/migration/i386/a-b-bootblock.h): it increments the
first byte of every 4 KiB page from 1 MiB to 100 MiB, forever, and prints
'B' on the serial port after each pass.  So it dirties memory through
precopy and the switch to postcopy (leaving partly dirty host pages on
hugepage-backed RAM), and its RAM can be checked exactly as
migration-test's check_guests_ram() does: every page one value, except
one step down where the guest was interrupted.

Usage:
  e2e.py test  [--only NAME ...]     the scenarios; "N passed, N failed"
  e2e.py blocktime [--runs N]        postcopy-blocktime, patched vs
                                     unpatched, 4 KiB and 2 MiB backing
Needs root (hugepage reservations), KVM where /dev/kvm works (else TCG).
Every QEMU started is killed on every exit path; hugepage reservations are
given back.
"""

import argparse
import atexit
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build"
MEM_START = 1 << 20  # X86_TEST_MEM_START
MEM_END = 100 << 20  # X86_TEST_MEM_END
PAGE = 4096  # TEST_MEM_PAGE_SIZE
GUEST_MB = 256
KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

LIVE = []  # QEMU processes to kill on exit


def kill_all():
    for p in LIVE:
        if p.poll() is None:
            p.kill()
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
    LIVE.clear()


atexit.register(kill_all)
for _sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, lambda *_: sys.exit(130))


class Failure(Exception):
    """A scenario failed: the message says why."""


class Skip(Exception):
    """A scenario cannot run here: the message says why."""


# --- hugepages ---------------------------------------------------------------


class HugePages:
    """Reserve `count` more pages of `size` for the duration of a `with`."""

    def __init__(self, size, count):
        self.size, self.count = size, count
        self.dir = Path(f"/sys/kernel/mm/hugepages/hugepages-{size // KIB}kB")
        self.prev = None

    def __enter__(self):
        nr = self.dir / "nr_hugepages"
        if not nr.exists():
            raise Skip(f"the kernel has no {human(self.size)} hugepages ({nr} missing)")
        if os.geteuid() != 0:
            raise Failure(f"reserving {human(self.size)} hugepages needs root")
        self.prev = int(nr.read_text())
        try:
            nr.write_text(str(self.prev + self.count))
        except OSError as e:
            self.prev = None
            raise Skip(f"cannot reserve {self.count} x {human(self.size)} hugepages: {e}")
        free = int((self.dir / "free_hugepages").read_text())
        if free < self.count:
            self.__exit__()
            raise Skip(
                f"the kernel granted only {free} of {self.count} "
                f"{human(self.size)} hugepages (memory too fragmented or too small)"
            )
        return self

    def __exit__(self, *exc):
        if self.prev is not None:
            (self.dir / "nr_hugepages").write_text(str(self.prev))
            self.prev = None


def human(size):
    for unit, div in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size % div == 0:
            return f"{size // div} {unit}"
    return f"{size} bytes"


# --- QEMU and QMP ------------------------------------------------------------


class QMP:
    def __init__(self, path):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(60)
        self.sock.connect(str(path))
        self.f = self.sock.makefile("rw")
        json.loads(self.f.readline())
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            line = self.f.readline()
            if not line:
                raise Failure(f"QMP connection closed during {name}")
            r = json.loads(line)
            if "return" in r:
                return r["return"]
            if "error" in r:
                raise Failure(f"QMP {name}: {r['error'].get('desc')}")


class VM:
    """One QEMU: guest RAM on `backends` (a list of (size, page_size)),
    QMP and serial in a work directory, stderr (with the library's trace)
    kept for the counters."""

    def __init__(self, name, binary, workdir, backends, incoming=False):
        self.name, self.dir = name, workdir
        self.qmp_path = workdir / f"{name}.qmp"
        self.serial = workdir / f"{name}.serial"
        self.stderr = workdir / f"{name}.stderr"
        args = [str(binary), "-machine", "pc", "-nographic", "-display", "none",
                "-monitor", "none", "-qmp", f"unix:{self.qmp_path},server=on,wait=off",
                "-serial", f"file:{self.serial}", "-trace", "postcopy_rs_*",
                "-drive", f"file={workdir / 'bootsect.raw'},format=raw,if=ide",
                "-smp", "1", "-accel", "kvm", "-accel", "tcg"]
        total = sum(size for size, _ in backends)
        args += ["-m", f"{total // MIB}M"]
        for i, (size, ps) in enumerate(backends):
            opts = f"memory-backend-memfd,id=m{i},size={size // MIB}M"
            if ps != 4 * KIB:
                opts += f",hugetlb=on,hugetlbsize={ps // KIB}K"
            args += ["-object", opts]
        if len(backends) == 1:
            args[2] = "pc,memory-backend=m0"
        else:
            for i in range(len(backends)):
                args += ["-numa", f"node,memdev=m{i}"]
        if incoming:
            args += ["-incoming", "defer"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL,
                                     stderr=open(self.stderr, "w"))
        LIVE.append(self.proc)
        deadline = time.time() + 20
        while not self.qmp_path.exists():
            if self.proc.poll() is not None or time.time() > deadline:
                raise Failure(f"{name}: QEMU did not start: {self.tail()}")
            time.sleep(0.05)
        self.qmp = QMP(self.qmp_path)

    def tail(self):
        try:
            return self.stderr.read_text()[-800:].strip()
        except OSError:
            return ""

    def status(self):
        return self.qmp.cmd("query-status")["status"]

    def wait_running(self, timeout=30):
        """Wait for the boot sector's 'A' and then its first pass's 'B'
        (SeaBIOS's banner before it has a B of its own)."""
        deadline = time.time() + timeout
        text = ""
        while time.time() < deadline:
            if self.serial.exists():
                text = self.serial.read_text(errors="replace")
                if "AB" in text:
                    return
            time.sleep(0.1)
        raise Failure(f"{self.name}: the guest never ran its loop (serial: {text[-80:]!r})")

    def check_ram(self):
        """check_guests_ram(): stop the VM, dump 1..100 MiB, check it."""
        self.qmp.cmd("stop")
        dump = self.dir / f"{self.name}.ram"
        self.qmp.cmd("pmemsave", val=MEM_START, size=MEM_END - MEM_START, filename=str(dump))
        data = dump.read_bytes()
        dump.unlink()
        if len(data) != MEM_END - MEM_START:
            raise Failure(f"{self.name}: pmemsave returned {len(data)} bytes")
        first = last = data[0]
        hit_edge, bad = False, []
        for off in range(PAGE, len(data), PAGE):
            b = data[off]
            if b != last:
                if (b + 1) % 256 == last and not hit_edge:
                    hit_edge = True
                else:
                    bad.append(f"{MEM_START + off:#x}: {b:#x} after {last:#x}")
            last = b
        if bad:
            raise Failure(f"{self.name}: guest RAM inconsistent at {len(bad)} pages "
                          f"(first byte {first:#x}): {bad[:5]}")
        return (MEM_END - MEM_START) // PAGE

    def counters(self, event):
        """The last postcopy_rs_<event> trace line's numbers, as a dict."""
        last = None
        for line in self.stderr.read_text(errors="replace").splitlines():
            m = re.search(rf"postcopy_rs_{event} (.*)", line)
            if m:
                last = m.group(1)
        if last is None:
            return {}
        words = last.split()
        return {k: int(v) for k, v in zip(words[::2], words[1::2]) if v.isdigit()}

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def migrate(src, dst, workdir, postcopy_after=8 * MIB, expect_failure=False, timeout=120):
    """Postcopy-migrate src to dst.  Returns (src info, dst info) from
    query-migrate at the end; raises Failure if the outcome is not the one
    expected."""
    uri = f"unix:{workdir / ('mig-' + dst.name + '.sock')}"
    caps = [{"capability": "postcopy-ram", "state": True}]
    src.qmp.cmd("migrate-set-capabilities", capabilities=caps)
    dst.qmp.cmd("migrate-set-capabilities",
                capabilities=caps + [{"capability": "postcopy-blocktime", "state": True}])
    # Keep precopy from converging so that the switch is ours to make.
    src.qmp.cmd("migrate-set-parameters", **{"downtime-limit": 1, "max-bandwidth": 100 * MIB})
    dst.qmp.cmd("migrate-incoming", uri=uri)
    src.qmp.cmd("migrate", uri=uri)
    deadline = time.time() + timeout
    switched = False
    while True:
        info = src.qmp.cmd("query-migrate")
        st = info.get("status")
        if st in ("failed", "cancelled"):
            if expect_failure:
                return info, None
            raise Failure(f"migration {st}: source says {info.get('error-desc')!r}; "
                          f"destination: {dst.tail()[-400:]!r}")
        if st == "completed":
            break
        if (st == "active" and not switched
                and info.get("ram", {}).get("transferred", 0) >= postcopy_after):
            src.qmp.cmd("migrate-start-postcopy")
            switched = True
        if time.time() > deadline:
            raise Failure(f"migration still {st} after {timeout}s")
        time.sleep(0.05)
    if expect_failure:
        raise Failure("the migration completed, but it had to fail")
    # The destination finishes postcopy (and stops its fault thread) a
    # little after the source sees "completed".
    while True:
        dinfo = dst.qmp.cmd("query-migrate")
        if dinfo.get("status") == "completed" and dst.status() == "running":
            break
        if time.time() > deadline:
            raise Failure(f"destination still {dinfo.get('status')}/{dst.status()}")
        time.sleep(0.05)
    return info, dinfo


def workdir_with_bootsect():
    header = BUILD / "qemu-src" / "tests/qtest/migration/i386/a-b-bootblock.h"
    if not header.exists():
        raise Failure(f"{header} missing: run scripts/qemu-fetch.sh first")
    text = header.read_text()
    body = text[text.index("{") + 1:text.index("}")]
    boot = bytes(int(x, 16) for x in re.findall(r"0x[0-9a-fA-F]{2}", body))
    if len(boot) != 512:
        raise Failure(f"boot sector is {len(boot)} bytes, not 512")
    d = Path(tempfile.mkdtemp(prefix="e2e-", dir=BUILD))
    (d / "bootsect.raw").write_bytes(boot)
    return d


BINARIES = {}  # --patched / --unpatched overrides


def qemu(kind):
    b = BINARIES.get(kind) or BUILD / f"qemu-{kind}" / "qemu-system-x86_64"
    if not b.exists():
        raise Failure(f"{b} missing: run scripts/qemu-test.sh (or qemu-build.sh) first")
    return b


# --- scenarios ---------------------------------------------------------------


def postcopy_on(src_backends, dst_backends, need_bits_set):
    """Boot, migrate with postcopy, check the destination's RAM and the
    library's counters on both sides."""
    wd = workdir_with_bootsect()
    try:
        src = VM("src", qemu("patched"), wd, src_backends)
        dst = VM("dst", qemu("patched"), wd, dst_backends, incoming=True)
        src.wait_running()
        _, dinfo = migrate(src, dst, wd)
        pages = dst.check_ram()
        disc = src.counters("discard_stats")
        inc = dst.counters("incoming_stats")  # traced when postcopy ended
        if not disc.get("runs"):
            raise Failure(f"the library sent no discard runs: {disc}")
        if not inc.get("placed"):
            raise Failure(f"the library placed no pages: {inc}")
        if need_bits_set and not disc.get("hostpage_bits_set"):
            raise Failure(f"no partly dirty host page was canonicalised: {disc}")
        return (f"{pages} pages verified; blocktime {dinfo.get('postcopy-blocktime')} ms; "
                f"discard {disc}; incoming {inc}")
    finally:
        kill_all()


def t_hugepages_2m():
    with HugePages(2 * MIB, 2 * GUEST_MB // 2):
        return postcopy_on([(GUEST_MB * MIB, 2 * MIB)], [(GUEST_MB * MIB, 2 * MIB)], True)


def t_hugepages_1g():
    with HugePages(GIB, 2):
        return postcopy_on([(GIB, GIB)], [(GIB, GIB)], True)


def t_two_blocks():
    # The boot sector dirties 1..100 MiB: node 0, 2 MiB-backed.
    backends = [(128 * MIB, 2 * MIB), (128 * MIB, 4 * KIB)]
    with HugePages(2 * MIB, 2 * 64):
        return postcopy_on(backends, backends, True)


def mismatch(src_ps, dst_ps):
    """A postcopy migration between different page sizes must fail with an
    error naming both, leave the source running with its RAM intact, and a
    retry to a matching destination must then succeed."""
    huge = 2 * MIB
    wd = workdir_with_bootsect()
    try:
        with HugePages(huge, 2 * GUEST_MB // 2):
            src = VM("src", qemu("patched"), wd, [(GUEST_MB * MIB, src_ps)])
            bad = VM("bad", qemu("patched"), wd, [(GUEST_MB * MIB, dst_ps)], incoming=True)
            src.wait_running()
            info, _ = migrate(src, bad, wd, expect_failure=True)
            err = info.get("error-desc", "")
            for size in (src_ps, dst_ps):
                if human(size) not in err:
                    raise Failure(f"the source's error does not name {human(size)}: {err!r}")
            if src.status() != "running":
                raise Failure(f"the source VM is {src.status()} after the failed migration")
            bad.kill()
            pages = src.check_ram()
            src.qmp.cmd("cont")
            good = VM("good", qemu("patched"), wd, [(GUEST_MB * MIB, src_ps)], incoming=True)
            migrate(src, good, wd)
            good.check_ram()
            return f"source error: {err!r}; source RAM intact ({pages} pages); retry verified"
    finally:
        kill_all()


def t_mismatch_4k_to_2m():
    return mismatch(4 * KIB, 2 * MIB)


def t_mismatch_2m_to_4k():
    return mismatch(2 * MIB, 4 * KIB)


TESTS = {
    "hugepages-2M": t_hugepages_2m,
    "hugepages-1G": t_hugepages_1g,
    "two-blocks-4K-2M": t_two_blocks,
    "mismatch-4K-to-2M": t_mismatch_4k_to_2m,
    "mismatch-2M-to-4K": t_mismatch_2m_to_4k,
}
# Skipping these is allowed (said loudly); the others must run.
MAY_SKIP = {"hugepages-1G"}


def run_tests(only):
    if os.geteuid() != 0:
        print("ERROR: the end-to-end tests need root (hugepages, KVM)", file=sys.stderr)
        return 1
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        print("WARNING: /dev/kvm is not usable: guests run under TCG (slower)", file=sys.stderr)
    passed = failed = skipped = 0
    for name, fn in TESTS.items():
        if only and name not in only:
            continue
        t0 = time.time()
        try:
            detail = fn()
            print(f"PASS  {name} ({time.time() - t0:.0f}s): {detail}", flush=True)
            passed += 1
        except Skip as e:
            if name in MAY_SKIP:
                print(f"SKIPPED  {name}: {e}", flush=True)
                print(f"==== SKIPPED {name}: {e} ====", file=sys.stderr)
                skipped += 1
            else:
                print(f"FAIL  {name}: cannot run: {e}", flush=True)
                failed += 1
        except Failure as e:
            print(f"FAIL  {name} ({time.time() - t0:.0f}s): {e}", flush=True)
            failed += 1
    print(f"{passed} passed, {failed} failed" + (f", {skipped} skipped" if skipped else ""))
    return 1 if failed else 0


# --- blocktime benchmark -----------------------------------------------------


def run_blocktime(runs):
    rows = []
    for ps in (4 * KIB, 2 * MIB):
        for kind in ("unpatched", "patched"):
            samples = []
            for _ in range(runs):
                wd = workdir_with_bootsect()
                try:
                    with HugePages(2 * MIB, 2 * GUEST_MB // 2 if ps != 4 * KIB else 0):
                        src = VM("src", qemu(kind), wd, [(GUEST_MB * MIB, ps)])
                        dst = VM("dst", qemu(kind), wd, [(GUEST_MB * MIB, ps)], incoming=True)
                        src.wait_running()
                        t0 = time.time()
                        _, dinfo = migrate(src, dst, wd)
                        total = time.time() - t0
                        dst.check_ram()
                        samples.append((dinfo.get("postcopy-blocktime", 0), total))
                finally:
                    kill_all()
            rows.append((ps, kind, samples))
    print("| backing | QEMU | runs | postcopy-blocktime ms (median) | min-max | migration s (median) |")
    print("|---|---|---:|---:|---:|---:|")
    med = {}
    for ps, kind, s in rows:
        bt = [x[0] for x in s]
        med[(ps, kind)] = statistics.median(bt)
        print(f"| {human(ps)} | {kind} | {len(s)} | {statistics.median(bt):.0f} | "
              f"{min(bt)}-{max(bt)} | {statistics.median(x[1] for x in s):.1f} |")
    for ps in (4 * KIB, 2 * MIB):
        u, p = med[(ps, "unpatched")], med[(ps, "patched")]
        ratio = f"{p / u:.2f}x" if u else "n/a"
        print(f"\n{human(ps)}: patched / unpatched blocktime = {ratio}")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for kind in ("patched", "unpatched"):
        ap.add_argument(f"--{kind}", type=Path, help=f"{kind} qemu-system-x86_64 "
                        f"(default build/qemu-{kind}/qemu-system-x86_64)")
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("test")
    t.add_argument("--only", nargs="*", default=[], choices=list(TESTS))
    b = sub.add_parser("blocktime")
    b.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    BINARIES.update({k: v for k, v in (("patched", a.patched), ("unpatched", a.unpatched)) if v})
    try:
        if a.cmd == "test":
            return run_tests(set(a.only))
        return run_blocktime(a.runs)
    finally:
        kill_all()


if __name__ == "__main__":
    sys.exit(main())
