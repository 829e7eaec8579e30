#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Live-migrate a real Linux guest with postcopy between two QEMUs.

The guest is scripts/guest-build.sh's (build/guest/): a Debian kernel and an
initramfs running guest/workload.c, which fills most of guest RAM with
self-describing pages, keeps dirtying them, and checks every page on the
console command ``verify``.

    scripts/migrate.py [--mem MiB] [--rate PAGES/S] [--switch-after MiB]
                       [--hugepages 2M|1G] [--netem-delay MS] ...

What it does: boots the guest on the source QEMU (serial console and QMP on
unix sockets), starts the destination with ``-incoming defer``, enables
postcopy-ram on both (and postcopy-blocktime on the destination), migrates,
waits until --switch-after MiB are sent, switches to postcopy, polls
query-migrate with a live progress line, then types ``verify`` on the
destination's console and prints a summary (times, bytes, page requests,
blocktime, the library's counters from the ``postcopy_rs_*`` trace events,
the guest's verdict).  Exit status 0 only on ``VERIFY OK``.

No QEMU, proxy or network namespace outlives the script: everything it
starts is killed on every exit path (finally, atexit, SIGTERM/SIGHUP/SIGINT,
and PR_SET_PDEATHSIG through setpriv if the script itself is killed).

As a module (for end-to-end tests)::

    import migrate
    opts = migrate.Options(mem=512, dst_ram="512M@2M")
    result = migrate.run_migration(opts)          # one migration, verified
    assert result["verify_ok"], result["error"]

    with migrate.Session(migrate.Options(src_ram="512M@4K")) as s:
        src = s.start_source()
        bad = s.start_destination(ram="512M@2M")
        r = s.migrate(src, bad)                   # fails: page sizes differ
        assert r["status"] == "failed" and r["source_running"]
        assert s.verify(src)["ok"]                # source memory intact
        s.stop(bad)
        good = s.start_destination(ram="512M@4K")
        r = s.migrate(src, good)
        assert r["status"] == "completed" and s.verify(good)["ok"]

Everything raises MigrateError (with a message fit for a user) on setup
problems; migrate() itself never raises for a failed migration, it returns
the errors of both sides in its result.
"""

import argparse
import atexit
import dataclasses
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from typing import Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MiB = 1 << 20
PAGE_SIZES = {"4K": 4 << 10, "2M": 2 << 20, "1G": 1 << 30}
TRACE_PATTERN = "postcopy_rs_*"
DEFAULT_BINARY = os.path.join("build", "qemu-patched", "qemu-system-x86_64")

# Private addresses used only inside the two network namespaces we create.
NETNS_SUBNET = "10.254.77"
NETNS_SRC_ADDR = NETNS_SUBNET + ".1"
NETNS_DST_ADDR = NETNS_SUBNET + ".2"


class MigrateError(Exception):
    """A problem the user must fix (or at least read); the message says what."""


# ---------------------------------------------------------------------------
# options


@dataclasses.dataclass
class Options:
    mem: int = 512                   # MiB of guest RAM (when no RAM spec)
    smp: int = 2
    rate: str = "5000"               # pages/s the guest dirties ("max", "0")
    switch_after: int = 64           # MiB sent before migrate-start-postcopy
    workload_mb: Optional[int] = None  # default: the guest takes 80% of free
    hugepages: Optional[str] = None  # "2M"/"1G" backing on both sides
    src_pagesize: Optional[str] = None
    dst_pagesize: Optional[str] = None
    mixed: bool = False              # two RAM blocks: 4K + hugepage-backed
    src_ram: Optional[str] = None    # full RAM spec, e.g. "256M@4K,256M@2M"
    dst_ram: Optional[str] = None
    netem_delay: Optional[float] = None  # ms, each way
    src_binary: str = DEFAULT_BINARY
    dst_binary: str = DEFAULT_BINARY
    accel: str = "auto"              # auto | kvm | tcg
    kernel: str = os.path.join("build", "guest", "vmlinuz")
    initrd: str = os.path.join("build", "guest", "initramfs.cpio.gz")
    logdir: Optional[str] = None     # default build/migrate-runs/<stamp>
    timeout: float = 240.0           # seconds for the migration itself
    boot_timeout: Optional[float] = None  # default 60 (KVM) / 180 (TCG)
    verify_timeout: float = 120.0
    max_bandwidth: Optional[int] = None       # MiB/s, precopy (QEMU: 128)
    postcopy_bandwidth: Optional[int] = None  # MiB/s (QEMU: unlimited)
    verify_source: bool = True       # verify on the source before migrating
    progress: str = "auto"           # auto | tty | lines | none
    progress_interval: float = 2.0   # seconds between lines when not a tty
    qemu_args: List[str] = dataclasses.field(default_factory=list)
    quiet: bool = False              # no output at all (API use)


@dataclasses.dataclass
class RamBlock:
    mib: int
    pagesize: str                    # 4K | 2M | 1G

    @property
    def pages(self) -> int:
        return self.mib * MiB // PAGE_SIZES[self.pagesize]


def norm_pagesize(s: str) -> str:
    t = s.strip().upper().replace("IB", "").replace("B", "")
    t = {"4": "4K", "4096": "4K", "2048K": "2M", "1024M": "1G"}.get(t, t)
    if t not in PAGE_SIZES:
        raise MigrateError("unknown page size %r (use 4K, 2M or 1G)" % s)
    return t


def parse_size_mib(s: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([MmGg]?)(?:i?[Bb])?\s*", s)
    if not m:
        raise MigrateError("bad size %r (e.g. 512, 512M, 1G)" % s)
    return int(m.group(1)) * (1024 if m.group(2).upper() == "G" else 1)


def parse_ram_spec(spec: str) -> List[RamBlock]:
    """"512M@2M" or "256M@4K,256M@2M": one RAM block (a NUMA node) each."""
    blocks = []
    for part in spec.split(","):
        if "@" in part:
            size, ps = part.split("@", 1)
        else:
            size, ps = part, "4K"
        blocks.append(RamBlock(parse_size_mib(size), norm_pagesize(ps)))
    if not blocks:
        raise MigrateError("empty RAM spec")
    for b in blocks:
        if b.mib <= 0 or (b.mib * MiB) % PAGE_SIZES[b.pagesize]:
            raise MigrateError("RAM block of %d MiB is not a whole number of %s pages"
                               % (b.mib, b.pagesize))
    return blocks


def ram_spec_str(blocks: List[RamBlock]) -> str:
    return ",".join("%dM@%s" % (b.mib, b.pagesize) for b in blocks)


def side_ram(opts: Options, side: str) -> List[RamBlock]:
    """The RAM layout of one side from the shortcuts in opts."""
    spec = opts.src_ram if side == "src" else opts.dst_ram
    if spec:
        return parse_ram_spec(spec)
    ps = opts.src_pagesize if side == "src" else opts.dst_pagesize
    huge = norm_pagesize(opts.hugepages) if opts.hugepages else None
    if opts.mixed:
        second = norm_pagesize(ps) if ps else (huge or "2M")
        half = opts.mem // 2
        return parse_ram_spec("%dM@4K,%dM@%s" % (opts.mem - half, half, second))
    return parse_ram_spec("%dM@%s" % (opts.mem, norm_pagesize(ps) if ps else (huge or "4K")))


# ---------------------------------------------------------------------------
# output


class Out:
    """Progress and messages: a live line on a tty, periodic lines otherwise."""

    def __init__(self, mode: str, interval: float, quiet: bool):
        self.quiet = quiet
        tty = sys.stdout.isatty()
        self.mode = "none" if quiet else ("tty" if (mode == "auto" and tty) else
                                          ("lines" if mode == "auto" else mode))
        self.interval = interval
        self.live = False
        self.last_line = 0.0
        self.last_key = None

    def say(self, msg: str = ""):
        if self.quiet:
            return
        if self.live:
            sys.stdout.write("\r\x1b[K")
            self.live = False
        print(msg, flush=True)

    def warn(self, msg: str):
        self.say("WARNING: " + msg)

    def progress(self, line: str, key=None, force=False):
        if self.mode == "none":
            return
        if self.mode == "tty":
            sys.stdout.write("\r\x1b[K" + line)
            sys.stdout.flush()
            self.live = True
            return
        now = time.monotonic()
        if force or key != self.last_key or now - self.last_line >= self.interval:
            print(line, flush=True)
            self.last_line = now
            self.last_key = key

    def end_progress(self):
        if self.live:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.live = False


def fmt_bytes(n) -> str:
    if n is None:
        return "-"
    n = float(n)
    for unit, div in (("GiB", 1 << 30), ("MiB", MiB), ("KiB", 1024)):
        if n >= div:
            return "%.1f %s" % (n / div, unit)
    return "%d B" % n


def fmt_ms(ms) -> str:
    if ms is None:
        return "-"
    return "%d ms" % ms if ms < 10000 else "%.1f s" % (ms / 1000.0)


# ---------------------------------------------------------------------------
# processes and cleanup

_LIVE_PROCS: List[subprocess.Popen] = []
_CLEANUPS: List = []      # callables, run last-in first-out
_LOCK = threading.RLock()


def _register_cleanup(fn):
    with _LOCK:
        _CLEANUPS.append(fn)


def _unregister_cleanup(fn):
    with _LOCK:
        if fn in _CLEANUPS:
            _CLEANUPS.remove(fn)


def kill_proc(p: subprocess.Popen, grace: float = 3.0):
    """SIGTERM, then SIGKILL: only this process (and its own session)."""
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


def spawn(argv: List[str], stdout, stderr, stdin=subprocess.DEVNULL) -> subprocess.Popen:
    """Start a child in its own session, killed (PR_SET_PDEATHSIG) if we die."""
    pre = []
    if shutil.which("setpriv"):
        pre = ["setpriv", "--pdeathsig", "KILL", "--"]
    p = subprocess.Popen(pre + argv, stdin=stdin, stdout=stdout, stderr=stderr,
                         start_new_session=True, close_fds=True)
    with _LOCK:
        _LIVE_PROCS.append(p)
    return p


def run(argv: List[str], check=True) -> subprocess.CompletedProcess:
    r = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True)
    if check and r.returncode != 0:
        raise MigrateError("%s failed (exit %d): %s" % (" ".join(argv), r.returncode,
                                                        (r.stderr or r.stdout).strip()))
    return r


class _SignalGuard:
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
        return False


# ---------------------------------------------------------------------------
# QMP


class QMPError(Exception):
    def __init__(self, cmd, desc):
        super().__init__("%s: %s" % (cmd, desc))
        self.cmd = cmd
        self.desc = desc


def connect_unix(path, proc, name, what, timeout):
    """Connect to QEMU's unix socket `path` once QEMU has created it, or
    fail if QEMU exits or `timeout` passes first."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise MigrateError("%s QEMU exited (status %s) before its %s was up"
                               % (name, proc.returncode, what))
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            return s
        except OSError:
            s.close()
            if time.monotonic() > deadline:
                raise MigrateError("%s QEMU: no %s at %s after %.0fs"
                                   % (name, what, path, timeout))
            time.sleep(0.05)


class QMP:
    def __init__(self, path: str, proc: subprocess.Popen, name: str, timeout=30.0):
        self.name = name
        self.events: List[dict] = []
        self._id = 0
        self.sock = connect_unix(path, proc, name, "QMP socket", timeout)
        self.sock.settimeout(timeout)
        self.rfile = self.sock.makefile("rb")
        greeting = self._read()
        if "QMP" not in greeting:
            raise MigrateError("%s: unexpected QMP greeting %r" % (name, greeting))
        self.cmd("qmp_capabilities")

    def _read(self) -> dict:
        line = self.rfile.readline()
        if not line:
            raise ConnectionError("%s QEMU closed its QMP socket" % self.name)
        return json.loads(line.decode("utf-8", "replace"))

    def cmd(self, name: str, args: Optional[dict] = None, timeout: float = 30.0):
        self._id += 1
        msg = {"execute": name, "id": self._id}
        if args is not None:
            msg["arguments"] = args
        self.sock.settimeout(timeout)
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            r = self._read()
            if "event" in r:
                self.events.append(r)
                continue
            if r.get("id") != self._id:
                continue
            if "error" in r:
                raise QMPError(name, r["error"].get("desc", str(r["error"])))
            return r.get("return")

    def close(self):
        try:
            self.rfile.close()
            self.sock.close()
        except OSError:
            pass


# ---------------------------------------------------------------------------
# serial console


class Console:
    """The guest's serial console: a reader thread keeps every line."""

    def __init__(self, path: str, proc: subprocess.Popen, name: str, log_path: str,
                 timeout=30.0):
        self.name = name
        self.lines: List[str] = []
        self.cond = threading.Condition()
        self.closed = False
        self.partial = ""             # the current line, not yet ended
        self.log = open(log_path, "ab", buffering=0)
        self.sock = connect_unix(path, proc, name, "console socket", timeout)
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
                with self.cond:
                    for ln in full:
                        self.lines.append(ln.decode("utf-8", "replace").rstrip("\r"))
                    self.partial = partial.decode("utf-8", "replace").rstrip("\r")
                    if full:
                        self.cond.notify_all()
        except OSError:
            pass
        with self.cond:
            if partial:
                self.lines.append(partial.decode("utf-8", "replace").rstrip("\r"))
            self.closed = True
            self.cond.notify_all()

    def mark(self) -> int:
        with self.cond:
            return len(self.lines)

    def wait_for(self, pattern: str, timeout: float, since: int = 0,
                 alive=None) -> Optional[re.Match]:
        """First line from index `since` matching pattern, or None on timeout,
        closed console, or when alive() turns false."""
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
                left = deadline - time.monotonic()
                if left <= 0 or self.closed:
                    return None
                if alive is not None and not alive():
                    # One last look at what arrived.
                    self.cond.wait(0.2)
                    if i >= len(self.lines):
                        return None
                    continue
                self.cond.wait(min(left, 0.5))

    def send(self, line: str):
        self.sock.sendall(line.encode() + b"\n")

    def tail(self, n=25) -> List[str]:
        with self.cond:
            return (self.lines + [self.partial + " <no newline yet>"])[-n:] \
                if self.partial else self.lines[-n:]

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


# ---------------------------------------------------------------------------
# hugepages


class HugePages:
    """Reserve hugepages as QEMUs need them; give back exactly what we added.

    What was added is also written to STATE_DIR/hugepages-<pid>.json, so a
    later run gives back what a SIGKILLed one could not."""

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
            raise MigrateError("the kernel offers no %s hugepages (%s is missing)"
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
            raise MigrateError(
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


# ---------------------------------------------------------------------------
# network namespaces with a delay


class NetPair:
    """Two network namespaces joined by a veth pair, with a one-way delay.

    The delay is tc netem on both veth ends when the kernel has sch_netem;
    otherwise a userspace proxy in the source namespace that holds every
    chunk for the delay in each direction (same latency, no loss)."""

    PREFIX = "pcrs-mig-"

    def __init__(self, delay_ms: float, out: Out, logdir: str):
        self.delay_ms = delay_ms
        self.out = out
        self.logdir = logdir
        tag = "%s%d" % (self.PREFIX, os.getpid())
        self.ns = {"src": tag + "-src", "dst": tag + "-dst"}
        self.veth = {"src": "pcrs%ds" % os.getpid(), "dst": "pcrs%dd" % os.getpid()}
        self.addr = {"src": NETNS_SRC_ADDR, "dst": NETNS_DST_ADDR}
        self.method = None
        self.proxies: List[subprocess.Popen] = []
        self.created: List[str] = []

    @classmethod
    def remove_stale(cls, out: Out):
        """Namespaces left by a run that was SIGKILLed."""
        r = run(["ip", "netns", "list"], check=False)
        for line in r.stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            m = re.fullmatch(re.escape(cls.PREFIX) + r"(\d+)-(src|dst)", name)
            if m and not os.path.exists("/proc/%s" % m.group(1)):
                run(["ip", "netns", "del", name], check=False)
                out.say("removed stale network namespace %s" % name)

    def setup(self):
        if not shutil.which("ip"):
            raise MigrateError("--netem-delay needs `ip` (Debian package iproute2)")
        self.remove_stale(self.out)
        _register_cleanup(self.cleanup)
        for side in ("src", "dst"):
            run(["ip", "netns", "add", self.ns[side]])
            self.created.append(self.ns[side])
        run(["ip", "link", "add", self.veth["src"], "type", "veth", "peer", "name",
             self.veth["dst"]])
        for side in ("src", "dst"):
            ns, dev = self.ns[side], self.veth[side]
            run(["ip", "link", "set", dev, "netns", ns])
            run(["ip", "-n", ns, "addr", "add", self.addr[side] + "/24", "dev", dev])
            run(["ip", "-n", ns, "link", "set", dev, "up"])
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
        if self.delay_ms > 0:
            errs = []
            for side in ("src", "dst"):
                r = run(["tc", "-n", self.ns[side], "qdisc", "add", "dev", self.veth[side],
                         "root", "netem", "delay", "%gms" % self.delay_ms], check=False)
                if r.returncode != 0:
                    errs.append((r.stderr or r.stdout).strip())
            if not errs:
                self.method = "tc netem delay %g ms on both veth ends" % self.delay_ms
                self.method_text = self.method
            else:
                for side in ("src", "dst"):
                    run(["tc", "-n", self.ns[side], "qdisc", "del", "dev", self.veth[side],
                         "root"], check=False)
                self.method = "proxy"
                self.method_text = "%g ms each way by a userspace proxy" % self.delay_ms
                self.out.warn("tc netem is not available (%s: this kernel lacks sch_netem, "
                              "CONFIG_NET_SCH_NETEM); delaying with a userspace TCP proxy "
                              "in the source namespace instead (%g ms each way)"
                              % (errs[0], self.delay_ms))
        else:
            self.method = self.method_text = "no delay"

    def wrap(self, side: str, argv: List[str]) -> List[str]:
        return ["ip", "netns", "exec", self.ns[side]] + argv

    def source_uri(self, dst_port: int) -> str:
        """The URI the source migrates to for a destination on dst_port."""
        if self.method != "proxy":
            return "tcp:%s:%d" % (self.addr["dst"], dst_port)
        port = dst_port + 1000
        log = open(os.path.join(self.logdir, "delay-proxy-%d.log" % port), "wb")
        argv = self.wrap("src", [sys.executable, os.path.abspath(__file__),
                                 "--internal-delay-proxy", "127.0.0.1:%d" % port,
                                 "%s:%d" % (self.addr["dst"], dst_port), str(self.delay_ms)])
        p = spawn(argv, stdout=subprocess.PIPE, stderr=log)
        log.close()
        self.proxies.append(p)
        ready, _, _ = select.select([p.stdout], [], [], 10)
        line = p.stdout.readline().decode() if ready else ""
        if "LISTENING" not in line:
            raise MigrateError("the delay proxy did not start (see %s)" % log.name)
        return "tcp:127.0.0.1:%d" % port

    def cleanup(self):
        for p in self.proxies:
            kill_proc(p)
        self.proxies = []
        for ns in self.created:
            run(["ip", "netns", "del", ns], check=False)
        self.created = []


def delay_proxy_main(listen: str, connect: str, delay_ms: float):
    """--internal-delay-proxy: forward TCP, holding data delay_ms each way."""
    delay = delay_ms / 1000.0
    lh, lp = listen.rsplit(":", 1)
    ch, cp = connect.rsplit(":", 1)
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((lh, int(lp)))
    ls.listen(8)
    print("LISTENING %s" % listen, flush=True)
    limit = 64 * MiB

    def pump(a: socket.socket, b: socket.socket):
        q = deque()
        cond = threading.Condition()
        state = {"bytes": 0}

        def reader():
            while True:
                try:
                    data = a.recv(1 << 18)
                except OSError:
                    data = b""
                with cond:
                    while state["bytes"] > limit:
                        cond.wait()
                    q.append((time.monotonic() + delay, data))
                    state["bytes"] += len(data)
                    cond.notify_all()
                if not data:
                    return

        threading.Thread(target=reader, daemon=True).start()
        while True:
            with cond:
                while not q:
                    cond.wait()
                due, data = q.popleft()
                state["bytes"] -= len(data)
                cond.notify_all()
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            try:
                if not data:
                    b.shutdown(socket.SHUT_WR)
                    return
                b.sendall(data)
            except OSError:
                return

    while True:
        c, _ = ls.accept()
        u = socket.create_connection((ch, int(cp)))
        for s in (c, u):
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        threading.Thread(target=pump, args=(c, u), daemon=True).start()
        threading.Thread(target=pump, args=(u, c), daemon=True).start()


# ---------------------------------------------------------------------------
# accelerator


def kvm_usable() -> Tuple[bool, str]:
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError as e:
        return False, "/dev/kvm: %s" % e.strerror
    try:
        import fcntl
        ver = fcntl.ioctl(fd, 0xAE00)  # KVM_GET_API_VERSION
        if ver != 12:
            return False, "/dev/kvm API version %d, not 12" % ver
    except OSError as e:
        return False, "/dev/kvm: KVM_GET_API_VERSION failed: %s" % e.strerror
    finally:
        os.close(fd)
    return True, "/dev/kvm works"


def choose_accel(requested: str) -> Tuple[str, str]:
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
        return "tcg", ("TCG: this host's KVM is kvm-pvm (nested, paging-based), which does "
                       "not boot a stock Linux kernel (it hangs in the decompressor); "
                       "--kvm forces a try")
    return "kvm", "KVM"


# ---------------------------------------------------------------------------
# a QEMU


def trace_events(path: str, event: str) -> List[Dict[str, int]]:
    """Fields of every `event` trace line ("event k1 v1 k2 v2 ...") in a
    QEMU's stderr log, in order."""
    found = []
    try:
        with open(path, "r", errors="replace") as f:
            for line in f:
                i = line.find(event + " ")
                if i < 0:
                    continue
                toks = line[i + len(event):].split()
                found.append({k: int(v) for k, v in zip(toks[0::2], toks[1::2]) if v.isdigit()})
    except OSError:
        pass
    return found


def parse_trace(path: str, event: str, skip: int = 0) -> Optional[Dict[str, int]]:
    """The last `event` line after the first `skip` ones, or None.  The
    library's counters are process-wide: when an earlier line exists (a
    source that migrated before), the difference to it is returned."""
    found = trace_events(path, event)
    if len(found) <= skip:
        return None
    last = found[-1]
    if skip > 0:
        prev = found[skip - 1]
        if all(last.get(k, 0) >= v for k, v in prev.items()):
            return {k: v - prev.get(k, 0) for k, v in last.items()}
    return last


class VM:
    def __init__(self, session: "Session", role: str, name: str, binary: str,
                 ram: List[RamBlock], accel: str, incoming: bool):
        self.session = session
        self.role = role              # "source" | "destination"
        self.name = name              # unique: src, dst1, dst2...
        self.binary = binary
        self.ram = ram
        self.accel = accel
        self.incoming = incoming
        self.proc: Optional[subprocess.Popen] = None
        self.qmp: Optional[QMP] = None
        self.console: Optional[Console] = None
        sd = session.sockdir
        self.qmp_path = os.path.join(sd, name + ".qmp")
        self.con_path = os.path.join(sd, name + ".con")
        self.stderr_path = os.path.join(session.logdir, name + ".stderr.log")
        self.console_path = os.path.join(session.logdir, name + ".console.log")
        self.port = None              # TCP port (netns) or None (unix socket)
        self.mig_path = os.path.join(sd, name + ".mig")

    def argv(self) -> List[str]:
        o = self.session.opts
        total = sum(b.mib for b in self.ram)
        args = [self.binary, "-name", "%s,debug-threads=on" % self.name,
                "-accel", self.accel]
        if self.accel == "kvm":
            args += ["-cpu", "host"]
        mach = "pc"
        objs = []
        for i, b in enumerate(self.ram):
            if b.pagesize == "4K":
                objs += ["-object", "memory-backend-ram,id=mem%d,size=%dM" % (i, b.mib)]
            else:
                objs += ["-object", "memory-backend-memfd,id=mem%d,size=%dM,hugetlb=on,"
                         "hugetlbsize=%s" % (i, b.mib, b.pagesize)]
        if len(self.ram) == 1:
            mach += ",memory-backend=mem0"
        args += ["-machine", mach, "-m", "%dM" % total, "-smp", str(o.smp)] + objs
        if len(self.ram) > 1:
            for i in range(len(self.ram)):
                node = "node,nodeid=%d,memdev=mem%d" % (i, i)
                for c in range(o.smp):
                    if c % len(self.ram) == i:
                        node += ",cpus=%d" % c
                args += ["-numa", node]
        append = ["console=ttyS0", "panic=-1", "workload.rate=%s" % o.rate,
                  "workload.report=1"]
        if o.workload_mb:
            append.append("workload.mb=%d" % o.workload_mb)
        args += ["-nodefaults", "-display", "none", "-no-reboot",
                 "-kernel", self.session.kernel, "-initrd", self.session.initrd,
                 "-append", " ".join(append),
                 "-chardev", "socket,id=qmp,path=%s,server=on,wait=off" % self.qmp_path,
                 "-mon", "chardev=qmp,mode=control",
                 "-chardev", "socket,id=con0,path=%s,server=on,wait=off" % self.con_path,
                 "-serial", "chardev:con0",
                 "-trace", TRACE_PATTERN]
        if self.incoming:
            args += ["-incoming", "defer"]
        else:
            args += ["-S"]
        args += list(o.qemu_args)
        return args

    def start(self):
        s = self.session
        for b in self.ram:
            if b.pagesize != "4K":
                s.hugepages.ensure(b.pagesize, b.pages, s.hugepages_run_total(b.pagesize))
        argv = self.argv()
        if s.net:
            argv = s.net.wrap("src" if self.role == "source" else "dst", argv)
        with open(os.path.join(s.logdir, self.name + ".cmdline"), "w") as f:
            f.write(" ".join(argv) + "\n")
        err = open(self.stderr_path, "wb")
        self.proc = spawn(argv, stdout=err, stderr=err)
        err.close()
        try:
            self.qmp = QMP(self.qmp_path, self.proc, self.name)
            self.console = Console(self.con_path, self.proc, self.name, self.console_path)
        except MigrateError as e:
            raise MigrateError("%s\n%s" % (e, self.stderr_excerpt()))

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stderr_excerpt(self, n=15) -> str:
        try:
            with open(self.stderr_path, "r", errors="replace") as f:
                lines = [ln.rstrip("\n") for ln in f if TRACE_PATTERN[:-1] not in ln]
        except OSError:
            return ""
        if not lines:
            return "  (%s QEMU printed nothing on stderr)" % self.name
        return "\n".join("  %s stderr| %s" % (self.name, ln) for ln in lines[-n:])

    def console_excerpt(self, n=25) -> str:
        if not self.console:
            return ""
        if not self.console.tail(1):
            return "  (%s console: no output at all)" % self.name
        return "\n".join("  %s console| %s" % (self.name, ln) for ln in self.console.tail(n))

    def query_migrate(self) -> dict:
        try:
            return self.qmp.cmd("query-migrate", timeout=10) or {}
        except (OSError, ConnectionError, QMPError, ValueError) as e:
            return {"_qmp_error": str(e)}

    def run_state(self) -> Optional[str]:
        try:
            return (self.qmp.cmd("query-status", timeout=10) or {}).get("status")
        except (OSError, ConnectionError, QMPError, ValueError):
            return None

    def stop(self):
        if self.qmp:
            self.qmp.close()
        if self.proc:
            kill_proc(self.proc)
        if self.console:
            self.console.close()
        self.qmp = None


# ---------------------------------------------------------------------------
# the session


class Session:
    """Owns every resource of a run; close() (or `with`) frees them all."""

    def __init__(self, opts: Options):
        self.opts = opts
        self.out = Out(opts.progress, opts.progress_interval, opts.quiet)
        self.vms: List[VM] = []
        self.net: Optional[NetPair] = None
        self.hugepages = HugePages(self.out)
        self.ndst = 0
        self.accel = None
        self.accel_note = ""
        self._guard = _SignalGuard()
        self._closed = False
        self.sockdir = None
        self.logdir = None

    # -- setup ------------------------------------------------------------

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
                "migrate.py must run as root: it reserves hugepages (/sys/kernel/mm/hugepages), "
                "creates network namespaces, uses userfaultfd for postcopy and /dev/kvm "
                "(run it with sudo, or as root)")
        _register_cleanup(self.close)

        def path(p):
            # relative to the current directory if it is there, else to the repo
            if os.path.isabs(p):
                return p
            return os.path.abspath(p) if os.path.exists(p) else os.path.join(ROOT, p)

        self.kernel, self.initrd = path(o.kernel), path(o.initrd)
        for f, what in ((self.kernel, "kernel"), (self.initrd, "initramfs")):
            if not os.path.isfile(f):
                raise MigrateError("guest %s %s is missing: run scripts/guest-build.sh" % (what, f))
        self.src_binary, self.dst_binary = path(o.src_binary), path(o.dst_binary)
        for b in {self.src_binary, self.dst_binary}:
            if not os.access(b, os.X_OK):
                raise MigrateError("QEMU binary %s is missing or not executable (build it: "
                                   "make demo, or scripts/qemu-build.sh)" % b)
        if o.switch_after < 0:
            raise MigrateError("--switch-after must be >= 0")
        self.src_ram, self.dst_ram = side_ram(o, "src"), side_ram(o, "dst")
        self.logdir = path(o.logdir) if o.logdir else os.path.join(
            ROOT, "build", "migrate-runs", time.strftime("%Y%m%d-%H%M%S") + "-%d" % os.getpid())
        os.makedirs(self.logdir, exist_ok=True)
        # unix socket paths must be short: keep them out of the log dir
        self.sockdir = tempfile.mkdtemp(prefix="pcrs-mig-")
        self.accel, self.accel_note = choose_accel(o.accel)
        # Leftovers of runs that were SIGKILLed (their QEMUs died with them).
        self.hugepages.release_stale()
        if shutil.which("ip"):
            NetPair.remove_stale(self.out)
        if o.netem_delay is not None:
            if o.netem_delay < 0:
                raise MigrateError("--netem-delay must be >= 0")
            self.net = NetPair(o.netem_delay, self.out, self.logdir)
            self.net.setup()
            self.out.say("network: namespaces %s and %s joined by a veth pair (%s <-> %s), %s"
                         % (self.net.ns["src"], self.net.ns["dst"], NETNS_SRC_ADDR,
                            NETNS_DST_ADDR, self.net.method_text))

    def hugepages_run_total(self, ps: str) -> int:
        """Pages of size ps the source and one destination need together."""
        return sum(b.pages for b in self.src_ram + self.dst_ram if b.pagesize == ps)

    def close(self):
        if self._closed:
            return
        self._closed = True
        _unregister_cleanup(self.close)
        for vm in self.vms:
            try:
                vm.stop()
            except Exception:
                pass
        if self.net:
            self.net.cleanup()
            _unregister_cleanup(self.net.cleanup)
        self.hugepages.release()
        if self.sockdir:
            shutil.rmtree(self.sockdir, ignore_errors=True)

    # -- VMs ---------------------------------------------------------------

    def _boot_timeout(self) -> float:
        if self.opts.boot_timeout:
            return self.opts.boot_timeout
        return 60.0 if self.accel == "kvm" else 180.0

    def start_source(self, ram: Optional[str] = None, binary: Optional[str] = None) -> VM:
        """Boot the guest on a new source QEMU; returns once the workload is READY."""
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
            return self._boot_source(blocks, binary, 180.0)

    def _boot_source(self, blocks, binary, timeout) -> VM:
        vm = VM(self, "source", "src" if not any(v.role == "source" for v in self.vms)
                else "src%d" % len(self.vms), binary or self.src_binary, blocks, self.accel,
                incoming=False)
        self.vms.append(vm)
        t0 = time.monotonic()
        vm.start()
        vm.qmp.cmd("cont")
        self.out.say("booting the guest on the source (%s) ..." % os.path.relpath(vm.binary, ROOT))
        m = vm.console.wait_for(r"^READY (\d+)", timeout, alive=vm.alive)
        if not m:
            try:
                vm.proc.wait(2)     # the console closes just before QEMU exits
            except subprocess.TimeoutExpired:
                pass
            why = ("QEMU exited with status %s" % vm.proc.returncode if not vm.alive()
                   else "no READY from the workload within %.0f s" % timeout)
            panic = vm.console.last(r"Kernel panic")
            if panic:
                why = "the guest kernel panicked (%s); %s" % (
                    re.sub(r"^\[[ 0-9.]*\] ", "", panic), why)
            if self.accel == "kvm" and os.path.isdir("/sys/module/kvm_pvm"):
                why += (" (this host's KVM is kvm-pvm, which hangs booting a stock Linux "
                        "kernel: use --tcg)")
            msg = "the guest did not boot: %s\n%s\n%s" % (why, vm.console_excerpt(),
                                                         vm.stderr_excerpt())
            vm.stop()
            raise MigrateError(msg)
        vm.pages = int(m.group(1))
        wl = vm.console.last(r"^WORKLOAD mb=") or ""
        self.out.say("guest up in %.1f s: %s" % (time.monotonic() - t0, wl.replace("WORKLOAD ", "workload ")))
        return vm

    def start_destination(self, ram: Optional[str] = None, binary: Optional[str] = None) -> VM:
        """A new destination QEMU listening for the migration (-incoming defer)."""
        blocks = parse_ram_spec(ram) if ram else self.dst_ram
        self.ndst += 1
        vm = VM(self, "destination", "dst%d" % self.ndst, binary or self.dst_binary, blocks,
                self.accel, incoming=True)
        self.vms.append(vm)
        vm.start()
        vm.qmp.cmd("migrate-set-capabilities", {"capabilities": [
            {"capability": "postcopy-ram", "state": True},
            {"capability": "postcopy-blocktime", "state": True}]})
        if self.net:
            vm.port = 4440 + self.ndst
            uri = "tcp:%s:%d" % (NETNS_DST_ADDR, vm.port)
        else:
            uri = "unix:" + vm.mig_path
        # exit-on-error false: keep it up after a failure, to ask for the error
        vm.qmp.cmd("migrate-incoming", {"uri": uri, "exit-on-error": False})
        vm.listen_uri = uri
        return vm

    def stop(self, vm: VM):
        vm.stop()

    # -- migration ---------------------------------------------------------

    def migrate(self, src: VM, dst: VM, switch_after: Optional[int] = None) -> dict:
        """Migrate src to dst with postcopy.  Never raises for a failed
        migration: the result carries status and both sides' errors."""
        o = self.opts
        switch_mib = o.switch_after if switch_after is None else switch_after
        res = {"status": None, "error": None, "source_error": None,
               "destination_error": None, "postcopy_started": False,
               "switch_at_bytes": None, "source": src.name, "destination": dst.name,
               "src_ram": ram_spec_str(src.ram), "dst_ram": ram_spec_str(dst.ram),
               "accel": self.accel, "accel_note": self.accel_note,
               "transport": None, "logdir": self.logdir}
        src.qmp.cmd("migrate-set-capabilities", {"capabilities": [
            {"capability": "postcopy-ram", "state": True}]})
        params = {}
        if o.max_bandwidth:
            params["max-bandwidth"] = o.max_bandwidth * MiB
        if o.postcopy_bandwidth:
            params["max-postcopy-bandwidth"] = o.postcopy_bandwidth * MiB
        if params:
            src.qmp.cmd("migrate-set-parameters", params)
        if self.net:
            uri = self.net.source_uri(dst.port)
            res["transport"] = "TCP over a veth pair between two network namespaces " \
                "(%s -> %s:%d), %s" % (
                    NETNS_SRC_ADDR, NETNS_DST_ADDR, dst.port,
                    self.net.method if self.net.method != "proxy" else
                    "%g ms each way by a userspace proxy in the source namespace (this "
                    "kernel has no sch_netem)" % self.net.delay_ms)
        else:
            uri = "unix:" + dst.mig_path
            res["transport"] = "unix socket"
        self.out.say("migrating %s (%s) -> %s (%s) over %s; migrate-start-postcopy after "
                     "%d MiB" % (src.name, res["src_ram"], dst.name, res["dst_ram"],
                                 res["transport"], switch_mib))
        # The source's counters are per process: count this attempt's only.
        discard_lines_before = len(trace_events(src.stderr_path, "postcopy_rs_discard_stats"))
        t0 = time.monotonic()
        try:
            src.qmp.cmd("migrate", {"uri": uri})
        except QMPError as e:
            res.update(status="failed", error="migrate refused: %s" % e.desc,
                       source_error=e.desc)
            return res
        info = {}
        last_status = None
        dst_dead_since = None
        while True:
            info = src.query_migrate()
            if "_qmp_error" in info:
                res.update(status="failed", error="source QEMU stopped answering: %s"
                           % info["_qmp_error"])
                break
            st = info.get("status")
            ram = info.get("ram", {})
            sent = ram.get("transferred", 0)
            guest = dst if res["postcopy_started"] or st == "completed" else src
            if st != last_status and last_status is not None:
                self.out.progress(self._progress_line(t0, info, guest), key=st, force=True)
            last_status = st
            if (not res["postcopy_started"] and st == "active" and sent >= switch_mib * MiB):
                try:
                    src.qmp.cmd("migrate-start-postcopy")
                    res["postcopy_started"] = True
                    res["switch_at_bytes"] = sent
                    res["switch_at_s"] = round(time.monotonic() - t0, 2)
                    self.out.say("switching to postcopy at %s sent (%.1f s)"
                                 % (fmt_bytes(sent), time.monotonic() - t0))
                except QMPError as e:
                    self.out.warn("migrate-start-postcopy: %s" % e.desc)
            self.out.progress(self._progress_line(t0, info, guest), key=st)
            if st in ("completed", "failed", "cancelled"):
                res["status"] = st
                break
            if st == "postcopy-paused":
                res["status"] = "failed"
                res["error"] = "postcopy paused (the channel broke during postcopy)"
                break
            if not dst.alive():
                dst_dead_since = dst_dead_since or time.monotonic()
                if time.monotonic() - dst_dead_since > 15:
                    res.update(status="failed", error="destination QEMU exited (status %s)"
                               % dst.proc.returncode)
                    break
            if time.monotonic() - t0 > o.timeout:
                res.update(status="failed", error="migration did not finish in %.0f s"
                           % o.timeout)
                if st == "active":
                    try:
                        src.qmp.cmd("migrate_cancel")
                    except QMPError:
                        pass
                break
            time.sleep(0.25)
        self.out.end_progress()
        res["wall_time_s"] = round(time.monotonic() - t0, 2)
        ram = info.get("ram", {})
        res.update({
            "source_info": info,
            "total_time_ms": info.get("total-time"),
            "downtime_ms": info.get("downtime"),
            "setup_time_ms": info.get("setup-time"),
            "transferred_bytes": ram.get("transferred"),
            "precopy_bytes": ram.get("precopy-bytes"),
            "postcopy_bytes": ram.get("postcopy-bytes"),
            "downtime_bytes": ram.get("downtime-bytes"),
            "postcopy_requests": ram.get("postcopy-requests"),
            "guest_ram_bytes": ram.get("total"),
        })
        if info.get("error-desc"):
            res["source_error"] = info["error-desc"]
        # the destination's view
        dinfo = {}
        if dst.alive():
            deadline = time.monotonic() + (20 if res["status"] == "completed" else 5)
            while True:
                dinfo = dst.query_migrate()
                if dinfo.get("status") in ("completed", "failed") or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        res["destination_info"] = dinfo
        res["destination_status"] = dinfo.get("status")
        if dinfo.get("error-desc"):
            res["destination_error"] = dinfo["error-desc"]
        res["blocktime_ms"] = dinfo.get("postcopy-blocktime")
        res["vcpu_blocktime_ms"] = dinfo.get("postcopy-vcpu-blocktime")
        # the library's counters, from the trace events
        res["library_source"] = parse_trace(src.stderr_path, "postcopy_rs_discard_stats",
                                            skip=discard_lines_before)
        lib_dst = None
        if res["postcopy_started"]:
            deadline = time.monotonic() + 10
            while True:
                lib_dst = parse_trace(dst.stderr_path, "postcopy_rs_incoming_stats")
                if lib_dst is not None or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        res["library_destination"] = lib_dst
        res["source_running"] = src.alive() and src.run_state() == "running"
        res["destination_running"] = dst.alive() and dst.run_state() == "running"
        if res["status"] != "completed":
            errs = []
            if res["error"]:
                errs.append(res["error"])
            if res["source_error"]:
                errs.append("source: " + res["source_error"])
            if res["destination_error"]:
                errs.append("destination: " + res["destination_error"])
            if not errs:
                errs.append("migration %s" % res["status"])
            res["error"] = "; ".join(errs)
            res["source_stderr"] = src.stderr_excerpt()
            res["destination_stderr"] = dst.stderr_excerpt()
        elif res["destination_status"] != "completed":
            res["error"] = "the source completed but the destination says %r" % (
                res["destination_status"],)
        return res

    def _progress_line(self, t0: float, info: dict, guest: VM) -> str:
        ram = info.get("ram", {})
        st = info.get("status", "?")
        parts = ["[%5.1fs] %-15s" % (time.monotonic() - t0, st)]
        if ram:
            parts.append("sent %s" % fmt_bytes(ram.get("transferred", 0)))
            parts.append("remaining %s" % fmt_bytes(ram.get("remaining", 0)))
            # QEMU's dirty-pages-rate is only measured at a bitmap sync (the
            # end of a precopy pass); the guest's own count is always there.
            rate = ram.get("dirty-pages-rate", 0)
            grate = guest.console.guest_dirty_rate() if guest.console else None
            if rate:
                parts.append("dirty %d pages/s" % rate)
            elif grate is not None:
                parts.append("guest dirties %d pages/s" % grate)
            parts.append("%.0f Mbit/s" % ram.get("mbps", 0))
            parts.append("postcopy requests %d" % ram.get("postcopy-requests", 0))
        return " ".join(parts[:1]) + " " + ", ".join(parts[1:])

    def verify(self, vm: VM, timeout: Optional[float] = None) -> dict:
        """Type `verify` on vm's console; the guest checks every page."""
        timeout = timeout or self.opts.verify_timeout
        if not vm.alive():
            return {"ok": False, "line": None,
                    "error": "%s QEMU is not running (status %s)" % (vm.name, vm.proc.returncode)}
        mark = vm.console.mark()
        t0 = time.monotonic()
        vm.console.send("verify")
        m = vm.console.wait_for(r"^VERIFY (OK|FAIL)\b.*", timeout, since=mark, alive=vm.alive)
        if not m:
            return {"ok": False, "line": None,
                    "error": "no VERIFY answer from the guest on %s within %.0f s\n%s"
                    % (vm.name, timeout, vm.console_excerpt(15))}
        return {"ok": m.group(1) == "OK", "line": m.group(0).strip(),
                "seconds": round(time.monotonic() - t0, 2), "error": None}


# ---------------------------------------------------------------------------
# the whole thing


def run_migration(opts: Options) -> dict:
    """Boot, migrate with postcopy, verify on the destination.  The result
    dict always has "verify_ok" (bool) and "error" (None or a message)."""
    t0 = time.monotonic()
    result = {"verify_ok": False, "error": None}
    try:
        with Session(opts) as s:
            result["logdir"] = s.logdir
            result["binaries"] = (s.src_binary, s.dst_binary)
            src = s.start_source()
            result["workload"] = src.console.last(r"^WORKLOAD mb=")
            if opts.verify_source:
                v = s.verify(src)
                result["source_verify"] = v["line"]
                s.out.say("source guest: %s" % (v["line"] or v["error"]))
                if not v["ok"]:
                    result["error"] = "the guest failed its own check before migrating: %s" % (
                        v["line"] or v["error"])
                    return result
            dst = s.start_destination()
            result.update(s.migrate(src, dst))
            if result["status"] == "completed":
                v = s.verify(dst)
                result["verify"] = v["line"]
                result["verify_ok"] = v["ok"]
                result["verify_seconds"] = v.get("seconds")
                if not v["ok"]:
                    result["error"] = v["error"] or "guest memory check failed: %s" % v["line"]
                prog = dst.console.last(r"^PROGRESS ")
                result["guest_last_progress"] = prog
            elif result.get("source_running"):
                # A failed migration must leave the source running, intact.
                v = s.verify(src)
                result["source_verify_after"] = v["line"] or v["error"]
            result["logdir"] = s.logdir
    except (MigrateError, QMPError) as e:
        result["error"] = str(e)
    result["run_time_s"] = round(time.monotonic() - t0, 1)
    return result


def print_summary(r: dict, out=sys.stdout):
    def p(label, value):
        print("  %-24s %s" % (label, value), file=out)

    print("", file=out)
    if r.get("status") is None:
        # It never got to migrate: only the error matters.
        print("ERROR: " + (r.get("error") or "unknown"), file=out)
        print("FAILED", file=out)
        return
    print("==== postcopy migration summary ====", file=out)
    if r.get("binaries"):
        sb, db = (os.path.relpath(b) if b.startswith(os.getcwd()) else b for b in r["binaries"])
        p("QEMU", sb if sb == db else "source %s, destination %s" % (sb, db))
    if r.get("accel_note"):
        p("accelerator", r["accel_note"])
    if r.get("workload"):
        p("guest workload", r["workload"].replace("WORKLOAD ", ""))
    if r.get("src_ram"):
        p("guest RAM", "source %s -> destination %s" % (r["src_ram"], r["dst_ram"]))
    if r.get("transport"):
        p("transport", r["transport"])
    if r.get("status"):
        p("result", r["status"] + (
            "  (postcopy never started: precopy finished first)"
            if r["status"] == "completed" and not r.get("postcopy_started") else ""))
        if r["status"] != "completed":
            p("source after failure", "running, guest intact" if r.get("source_running") and
              (r.get("source_verify_after") or "").startswith("VERIFY OK") else
              "running" if r.get("source_running") else "NOT running")
    if r.get("total_time_ms") is not None:
        p("total time", "%s (QEMU), setup %s" % (fmt_ms(r["total_time_ms"]),
                                                 fmt_ms(r.get("setup_time_ms"))))
    if r.get("downtime_ms") is not None:
        p("downtime", fmt_ms(r["downtime_ms"]))
    if r.get("transferred_bytes") is not None:
        sw = r.get("switch_at_bytes")
        p("precopy", "%s%s" % (fmt_bytes(r.get("precopy_bytes")),
                               "  (switched to postcopy at %s sent, %.1f s in)"
                               % (fmt_bytes(sw), r.get("switch_at_s", 0)) if sw else ""))
        p("postcopy", fmt_bytes(r.get("postcopy_bytes")))
        p("while stopped", fmt_bytes(r.get("downtime_bytes")))
        p("total sent", fmt_bytes(r.get("transferred_bytes")))
    if r.get("postcopy_requests") is not None:
        p("page requests", "%d received by the source" % r["postcopy_requests"])
    ld = r.get("library_destination")
    if ld:
        p("dst fault thread", "faults %s, reads %s, pages requested %s, deduped %s, pauses %s"
          % (ld.get("faults"), ld.get("reads"), ld.get("requested"), ld.get("deduped"),
             ld.get("pauses")))
    if r.get("blocktime_ms") is not None:
        vb = r.get("vcpu_blocktime_ms")
        p("postcopy blocktime", "%s with every vCPU blocked at once%s" % (
            fmt_ms(r["blocktime_ms"]),
            "; per vCPU %s" % ", ".join(fmt_ms(x) for x in vb) if vb else ""))
    elif r.get("postcopy_started"):
        p("postcopy blocktime", "not reported by the destination")
    ls = r.get("library_source")
    if ls is not None or r.get("postcopy_started"):
        p("library (source)", "discard: blocks %s, runs %s, pages %s, hostpage bits set %s"
          % (ls.get("blocks"), ls.get("runs"), ls.get("pages"), ls.get("hostpage_bits_set"))
          if ls else "no postcopy_rs_discard_stats trace line (not a patched QEMU?)")
    if ld or r.get("postcopy_started"):
        p("library (destination)", "placed %s pages (+%s zero), EEXIST handled %s"
          % (ld.get("placed"), ld.get("zero"), ld.get("eexist"))
          if ld else "no postcopy_rs_incoming_stats trace line (not a patched QEMU?)")
    if r.get("source_verify"):
        p("guest before", r["source_verify"] + " (on the source)")
    if r.get("source_verify_after"):
        p("guest after failure", r["source_verify_after"] + " (on the source)")
    if r.get("verify"):
        p("guest verdict", r["verify"] + " (on the destination, after %.1f s)"
          % (r.get("verify_seconds") or 0))
    if r.get("run_time_s") is not None:
        p("wall time", "%.1f s for the whole run" % r["run_time_s"])
    if r.get("logdir"):
        p("logs", os.path.relpath(r["logdir"]) if r["logdir"].startswith(os.getcwd())
          else r["logdir"])
    if r.get("error"):
        print("", file=out)
        print("ERROR: " + r["error"], file=out)
        for k in ("source_stderr", "destination_stderr"):
            if r.get(k):
                print(r[k], file=out)
    print("", file=out)
    print("VERIFY OK: postcopy migration preserved every guest page" if r.get("verify_ok")
          else "FAILED", file=out)


def build_parser() -> argparse.ArgumentParser:
    d = Options()
    ap = argparse.ArgumentParser(
        prog="migrate.py",
        description="Live-migrate a Linux guest with postcopy between two QEMUs and verify "
                    "its memory.",
        epilog="RAM specs: SIZE@PAGESIZE[,SIZE@PAGESIZE...], e.g. 512M@2M, or 256M@4K,256M@2M "
               "(one RAM block, and guest NUMA node, each).")
    ap.add_argument("--mem", type=int, default=d.mem, help="guest RAM, MiB (default %(default)s)")
    ap.add_argument("--smp", type=int, default=d.smp, help="vCPUs (default %(default)s)")
    ap.add_argument("--rate", default=d.rate,
                    help="pages/s the guest dirties; 0 none, max flat out (default %(default)s)")
    ap.add_argument("--switch-after", type=int, default=d.switch_after, metavar="MiB",
                    help="MiB sent before migrate-start-postcopy (default %(default)s)")
    ap.add_argument("--workload-mb", type=int, help="MiB the guest workload uses "
                    "(default: 80%% of the guest's free memory)")
    ap.add_argument("--hugepages", choices=["2M", "1G"],
                    help="back guest RAM with hugetlbfs pages of this size on both sides")
    ap.add_argument("--src-pagesize", choices=["4K", "2M", "1G"],
                    help="page size of the source's RAM (overrides --hugepages)")
    ap.add_argument("--dst-pagesize", choices=["4K", "2M", "1G"],
                    help="page size of the destination's RAM (overrides --hugepages)")
    ap.add_argument("--mixed", action="store_true",
                    help="two RAM blocks (two guest NUMA nodes): half 4K-backed, half "
                         "hugepage-backed (--hugepages size, default 2M)")
    ap.add_argument("--src-ram", metavar="SPEC", help="source RAM layout (overrides the above)")
    ap.add_argument("--dst-ram", metavar="SPEC", help="destination RAM layout")
    ap.add_argument("--netem-delay", type=float, metavar="MS",
                    help="migrate over TCP between two network namespaces, MS delay each way")
    ap.add_argument("--src-binary", default=d.src_binary,
                    help="source qemu-system-x86_64 (default %(default)s)")
    ap.add_argument("--dst-binary", default=d.dst_binary,
                    help="destination qemu-system-x86_64 (default %(default)s)")
    ap.add_argument("--binary", help="both QEMUs")
    g = ap.add_mutually_exclusive_group()
    g.add_argument("--kvm", dest="accel", action="store_const", const="kvm",
                   help="KVM (default: KVM where it can boot the guest, else TCG)")
    g.add_argument("--tcg", dest="accel", action="store_const", const="tcg", help="TCG")
    ap.add_argument("--max-bandwidth", type=int, metavar="MiB/s",
                    help="precopy bandwidth limit (QEMU's default: 128)")
    ap.add_argument("--postcopy-bandwidth", type=int, metavar="MiB/s",
                    help="postcopy bandwidth limit (QEMU's default: none)")
    ap.add_argument("--timeout", type=float, default=d.timeout,
                    help="seconds for the migration (default %(default)s)")
    ap.add_argument("--boot-timeout", type=float, help="seconds for the guest to boot "
                    "(default 60 with KVM, 180 with TCG)")
    ap.add_argument("--kernel", default=d.kernel, help="guest kernel (default %(default)s)")
    ap.add_argument("--initrd", default=d.initrd, help="guest initramfs (default %(default)s)")
    ap.add_argument("--no-verify-source", action="store_true",
                    help="skip the guest's memory check on the source before migrating")
    ap.add_argument("--logdir", help="where logs go (default build/migrate-runs/<time>-<pid>)")
    ap.add_argument("--progress", choices=["auto", "tty", "lines", "none"], default="auto",
                    help="live line on a terminal, periodic lines otherwise (default auto)")
    ap.add_argument("--json", metavar="FILE", help="also write the result dict as JSON")
    ap.add_argument("--qemu-arg", action="append", default=[], metavar="ARG",
                    help="extra argument for both QEMUs (repeatable)")
    ap.add_argument("--internal-delay-proxy", nargs=3, help=argparse.SUPPRESS)
    return ap


def options_from_args(a: argparse.Namespace) -> Options:
    return Options(
        mem=a.mem, smp=a.smp, rate=str(a.rate), switch_after=a.switch_after,
        workload_mb=a.workload_mb, hugepages=a.hugepages, src_pagesize=a.src_pagesize,
        dst_pagesize=a.dst_pagesize, mixed=a.mixed, src_ram=a.src_ram, dst_ram=a.dst_ram,
        netem_delay=a.netem_delay, src_binary=a.binary or a.src_binary,
        dst_binary=a.binary or a.dst_binary, accel=a.accel or "auto",
        max_bandwidth=a.max_bandwidth, postcopy_bandwidth=a.postcopy_bandwidth,
        timeout=a.timeout, boot_timeout=a.boot_timeout,
        verify_source=not a.no_verify_source, logdir=a.logdir, progress=a.progress,
        kernel=a.kernel, initrd=a.initrd,
        qemu_args=a.qemu_arg)


def main(argv=None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if a.internal_delay_proxy:
        delay_proxy_main(a.internal_delay_proxy[0], a.internal_delay_proxy[1],
                         float(a.internal_delay_proxy[2]))
        return 0
    if not re.fullmatch(r"\d+|max", str(a.rate)):
        ap.error("--rate: a number of pages/s, or max")
    opts = options_from_args(a)
    try:
        side_ram(opts, "src")
        side_ram(opts, "dst")
    except MigrateError as e:
        ap.error(str(e))
    with _SignalGuard():
        try:
            r = run_migration(opts)
        except KeyboardInterrupt:
            cleanup_all()
            print("\ninterrupted; QEMUs stopped", file=sys.stderr)
            return 130
        finally:
            cleanup_all()
    print_summary(r)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2, default=str)
    return 0 if r.get("verify_ok") else 1


if __name__ == "__main__":
    sys.exit(main())
