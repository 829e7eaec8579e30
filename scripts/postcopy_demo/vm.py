# SPDX-License-Identifier: GPL-2.0-or-later
"""One QEMU: the one place that starts QEMU, for every driver and guest.

Its QMP monitor and the guest's serial console are unix sockets in the
session's socket directory; its stderr, with the library's postcopy_rs_*
trace events (its counters), goes to the session's log directory."""

import functools
import mmap
import os
import re
import subprocess
from typing import Dict, List, Optional

from .console import Console
from .options import MigrateError, RamBlock
from .procs import kill_proc, spawn
from .qmp import QMPError, QMPSession

TRACE_PATTERN = "postcopy_rs_*"
# A trace event's line from QEMU's log backend: the event first, after
# "pid@seconds:" with -msg timestamp=on.  The library's error messages
# ("qemu-system-x86_64: postcopy-rs: postcopy_rs_place_page: ...") are not.
TRACE_LINE = re.compile(r"(\d+@\d+\.\d+:)?postcopy_rs_\w+ ")


def stderr_lines(path: str) -> List[str]:
    """A QEMU's stderr without the library's trace events ([] if none)."""
    try:
        with open(path, "r", errors="replace") as f:
            return [ln.rstrip("\n") for ln in f if not TRACE_LINE.match(ln)]
    except OSError:
        return []


def why_paused(path: str) -> Optional[str]:
    """What a QEMU's stderr says of a failure: the library's first error,
    else the last line that says "error" or "fail"; None if neither."""
    lines = stderr_lines(path)
    for ln in lines:
        if "postcopy-rs:" in ln:
            return ln
    for ln in reversed(lines):
        if re.search(r"error|fail", ln, re.IGNORECASE):
            return ln
    return None


def trace_events(path: str, event: str) -> List[Dict[str, int]]:
    """Fields of every `event` trace line ("event k1 v1 k2 v2 ...") in a log."""
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


def parse_latency(path: str) -> Optional[dict]:
    """The destination library's fault-to-placement latency, from the last
    postcopy_rs_incoming_latency line ("pages N p50_us N p99_us N max_us N
    mean_us N untracked N abandoned N dist B0,B1,...,B23"; an older series
    has no untracked nor abandoned), or None (an older patched QEMU has no
    such line).  `dist` is the list of bucket counts: bucket i holds
    latencies of [2^i, 2^(i+1)) us, as QEMU's postcopy-latency-dist."""
    event = "postcopy_rs_incoming_latency "
    last = None
    try:
        with open(path, "r", errors="replace") as f:
            for line in f:
                i = line.find(event)
                if i >= 0:
                    last = line[i + len(event):].split()
    except OSError:
        return None
    if last is None:
        return None
    out: dict = {}
    for k, v in zip(last[0::2], last[1::2]):
        if v.isdigit():
            out[k] = int(v)
        elif k == "dist" and all(x.isdigit() for x in v.split(",")):
            out[k] = [int(x) for x in v.split(",")]
    return out


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


@functools.lru_cache(maxsize=None)
def _has_trace_event(binary: str, mtime: float, event: str) -> bool:
    try:
        with open(binary, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as m:
            return m.find(event.encode() + b"\0") >= 0
    except (OSError, ValueError):
        return True        # cannot tell: assume it may trace it


def has_trace_event(binary: str, event: str) -> bool:
    """Whether the QEMU binary knows the trace event (a stock QEMU knows no
    postcopy_rs_* event, so waiting for one is waiting for nothing)."""
    try:
        mtime = os.stat(binary).st_mtime
    except OSError:
        return True
    return _has_trace_event(binary, mtime, event)


class VM:
    def __init__(self, session, role: str, name: str, binary: str, ram: List[RamBlock],
                 incoming: bool):
        self.session = session
        self.role = role              # "source" | "destination"
        self.name = name              # unique: src, dst1, dst2...
        self.binary = binary
        self.ram = ram
        self.accel = session.accel
        self.incoming = incoming
        self.proc: Optional[subprocess.Popen] = None
        self.qmp: Optional[QMPSession] = None
        self.console: Optional[Console] = None
        self.pages = None             # what the guest says it checks
        sd, ld = session.sockdir, session.logdir
        self.qmp_path = os.path.join(sd, name + ".qmp")
        self.con_path = os.path.join(sd, name + ".con")
        self.mig_path = os.path.join(sd, name + ".mig")
        self.stderr_path = os.path.join(ld, name + ".stderr.log")
        self.console_path = os.path.join(ld, name + ".console.log")
        self.port = None              # TCP port (netns) or None (unix socket)
        self.listen_uri = None
        self.identity = None          # with --unprivileged: whom it runs as

    def argv(self) -> List[str]:
        o = self.session.opts
        total = sum(b.mib for b in self.ram)
        args = [self.binary, "-name", "%s,debug-threads=on" % self.name, "-accel", self.accel]
        objs = []
        for i, b in enumerate(self.ram):
            if b.pagesize == "4K":
                objs += ["-object", "memory-backend-ram,id=mem%d,size=%dM" % (i, b.mib)]
            else:
                objs += ["-object", "memory-backend-memfd,id=mem%d,size=%dM,hugetlb=on,"
                         "hugetlbsize=%s" % (i, b.mib, b.pagesize)]
        mach = "pc,memory-backend=mem0" if len(self.ram) == 1 else "pc"
        args += ["-machine", mach, "-m", "%dM" % total, "-smp", str(o.smp)] + objs
        if len(self.ram) > 1:
            for i in range(len(self.ram)):
                cpus = "".join(",cpus=%d" % c for c in range(o.smp) if c % len(self.ram) == i)
                args += ["-numa", "node,nodeid=%d,memdev=mem%d%s" % (i, i, cpus)]
        args += ["-nodefaults", "-display", "none", "-no-reboot",
                 "-chardev", "socket,id=qmp,path=%s,server=on,wait=off" % self.qmp_path,
                 "-mon", "chardev=qmp,mode=control",
                 "-chardev", "socket,id=con0,path=%s,server=on,wait=off" % self.con_path,
                 "-serial", "chardev:con0",
                 "-trace", TRACE_PATTERN]
        args += self.session.guest.qemu_args(self.accel)
        # A source starts stopped, so that nothing the guest prints is missed.
        args += ["-incoming", "defer"] if self.incoming else ["-S"]
        return args + list(o.qemu_args)

    def start(self):
        s = self.session
        for b in self.ram:
            if b.pagesize != "4K":
                s.hugepages.ensure(b.pagesize, b.pages, s.hugepages_run_total(b.pagesize))
        argv = self.argv()
        unpriv = getattr(s, "unpriv", None)
        if unpriv:
            argv = unpriv.wrap(argv)
        if s.net:
            argv = s.net.wrap("src" if self.role == "source" else "dst", argv)
        with open(os.path.join(s.logdir, self.name + ".cmdline"), "w") as f:
            f.write(" ".join(argv) + "\n")
        with open(self.stderr_path, "wb") as err:
            self.proc = spawn(argv, stdout=err, stderr=err)
        try:
            self.qmp = QMPSession(self.qmp_path, self.proc, self.name)
            self.console = Console(self.con_path, self.proc, self.name, self.console_path)
        except MigrateError as e:
            raise MigrateError("%s\n%s" % (e, self.stderr_excerpt()))
        if unpriv:
            self.identity = unpriv.check_process(self.proc.pid, self.name)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def why_not_ready(self, otherwise: str) -> str:
        try:
            self.proc.wait(2)     # the console closes just before QEMU exits
        except subprocess.TimeoutExpired:
            pass
        return "QEMU exited with status %s" % self.proc.returncode if not self.alive() \
            else otherwise

    def stderr_excerpt(self, n=15) -> str:
        lines = stderr_lines(self.stderr_path)
        if not lines:
            return "  (%s QEMU printed nothing on stderr)" % self.name
        return "\n".join("  %s stderr| %s" % (self.name, ln) for ln in lines[-n:])

    def console_excerpt(self, n=25) -> str:
        if not self.console:
            return ""
        if not self.console.tail(1):
            return "  (%s console: no output at all)" % self.name
        return "\n".join("  %s console| %s" % (self.name, ln[-200:])
                         for ln in self.console.tail(n))

    def query_migrate(self) -> dict:
        try:
            return self.qmp.cmd("query-migrate", timeout=10) or {}
        except QMPError as e:
            return {"_qmp_error": str(e)}

    def run_state(self) -> Optional[str]:
        try:
            return (self.qmp.cmd("query-status", timeout=10) or {}).get("status")
        except QMPError:
            return None

    def counters(self, event: str, skip: int = 0) -> Optional[Dict[str, int]]:
        """The library's postcopy_rs_<event> counters from this QEMU's trace."""
        return parse_trace(self.stderr_path, "postcopy_rs_" + event, skip)

    def latency(self) -> Optional[dict]:
        """The library's fault-to-placement latency from this QEMU's trace."""
        return parse_latency(self.stderr_path)

    def stop(self):
        if self.qmp:
            self.qmp.close()
        if self.proc:
            kill_proc(self.proc)
        if self.console:
            self.console.close()
        self.qmp = None
