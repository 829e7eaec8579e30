# SPDX-License-Identifier: GPL-2.0-or-later
"""Two network namespaces joined by a veth pair, with a one-way delay.

The delay is tc netem on both veth ends when the kernel has sch_netem;
otherwise a userspace proxy in the source namespace that holds every chunk
for the delay in each direction (same latency, no loss)."""

import ctypes
import os
import re
import select
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from typing import List

from .options import MiB, MigrateError
from .procs import kill_proc, register_cleanup, run, spawn
from .report import Out

CLONE_NEWNET = 0x40000000


def _libc():
    return ctypes.CDLL(None, use_errno=True)


# Private addresses used only inside the two network namespaces we create.
SUBNET = "10.254.77"
SRC_ADDR = SUBNET + ".1"
DST_ADDR = SUBNET + ".2"


class NetPair:
    PREFIX = "pcrs-mig-"
    # The namespaces' roles: "PREFIX<pid>-<role>"; remove_stale() takes these.
    ROLES = ("src", "dst")

    def __init__(self, delay_ms: float, out: Out, logdir: str):
        self.delay_ms = delay_ms
        self.out = out
        self.logdir = logdir
        tag = "%s%d" % (self.PREFIX, os.getpid())
        self.ns = {"src": tag + "-src", "dst": tag + "-dst"}
        self.veth = {"src": "pcrs%ds" % os.getpid(), "dst": "pcrs%dd" % os.getpid()}
        self.addr = {"src": SRC_ADDR, "dst": DST_ADDR}
        self.method = None
        self.method_text = ""
        self.proxies: List[subprocess.Popen] = []
        self.created: List[str] = []

    @classmethod
    def remove_stale(cls, out: Out):
        """Namespaces left by a run that was SIGKILLed."""
        r = run(["ip", "netns", "list"], check=False)
        for line in r.stdout.splitlines():
            name = line.split()[0] if line.split() else ""
            m = re.fullmatch(re.escape(cls.PREFIX) + r"(\d+)-(%s)" % "|".join(cls.ROLES), name)
            if m and not os.path.exists("/proc/%s" % m.group(1)):
                run(["ip", "netns", "del", name], check=False)
                out.say("removed stale network namespace %s" % name)

    def setup(self):
        if not shutil.which("ip"):
            raise MigrateError("--netem-delay needs `ip` (Debian package iproute2)")
        self.remove_stale(self.out)
        register_cleanup(self.cleanup)
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
        if self.delay_ms <= 0:
            self.method = self.method_text = "no delay"
            return
        errs = []
        for side in ("src", "dst"):
            r = run(["tc", "-n", self.ns[side], "qdisc", "add", "dev", self.veth[side],
                     "root", "netem", "delay", "%gms" % self.delay_ms], check=False)
            if r.returncode != 0:
                errs.append((r.stderr or r.stdout).strip())
        if not errs:
            self.method = "tc netem delay %g ms on both veth ends" % self.delay_ms
            self.method_text = self.method
            return
        for side in ("src", "dst"):
            run(["tc", "-n", self.ns[side], "qdisc", "del", "dev", self.veth[side], "root"],
                check=False)
        self.method = "proxy"
        self.method_text = ("%g ms each way by a userspace proxy in the source namespace "
                            "(this kernel has no sch_netem)" % self.delay_ms)
        self.out.warn("tc netem is not available (%s: this kernel lacks sch_netem, "
                      "CONFIG_NET_SCH_NETEM); delaying with a userspace TCP proxy "
                      "in the source namespace instead (%g ms each way)"
                      % (errs[0], self.delay_ms))

    def wrap(self, side: str, argv: List[str]) -> List[str]:
        return ["ip", "netns", "exec", self.ns[side]] + argv

    def source_uri(self, dst_port: int) -> str:
        """The URI the source migrates to for a destination on dst_port."""
        if self.method != "proxy":
            return "tcp:%s:%d" % (self.addr["dst"], dst_port)
        port = dst_port + 1000
        log = open(os.path.join(self.logdir, "delay-proxy-%d.log" % port), "wb")
        argv = self.wrap("src", [sys.executable, "-m", "postcopy_demo.netns",
                                 "127.0.0.1:%d" % port, "%s:%d" % (self.addr["dst"], dst_port),
                                 str(self.delay_ms)])
        env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(__file__)))
        p = spawn(argv, stdout=subprocess.PIPE, stderr=log, env=env)
        log.close()
        self.proxies.append(p)
        ready, _, _ = select.select([p.stdout], [], [], 10)
        line = p.stdout.readline().decode() if ready else ""
        if "LISTENING" not in line:
            raise MigrateError("the delay proxy did not start (see %s)" % log.name)
        return "tcp:127.0.0.1:%d" % port

    def set_link(self, up: bool):
        """The veth pair up or down on both ends.  Down, every packet
        between the namespaces is lost and neither QEMU is told: each finds
        out from its own TCP timers (retransmission, keepalive)."""
        for side in ("src", "dst"):
            run(["ip", "-n", self.ns[side], "link", "set", self.veth[side],
                 "up" if up else "down"])

    def set_sysctls(self, settings: dict):
        """net.* sysctls in both namespaces (they are per namespace)."""
        for side in ("src", "dst"):
            for key, value in settings.items():
                path = "/proc/sys/" + key.replace(".", "/")
                run(self.wrap(side, ["sh", "-c", 'echo "$1" > "$2"', "sh", str(value), path]))

    def listen_in(self, side: str, port: int) -> socket.socket:
        """A TCP listening socket in a side's namespace, on its address."""
        box = {}

        def inside():
            # setns moves only this thread; the socket keeps the namespace.
            try:
                with open("/var/run/netns/" + self.ns[side]) as f:
                    if _libc().setns(f.fileno(), CLONE_NEWNET) != 0:
                        raise OSError(ctypes.get_errno(), "setns(%s)" % self.ns[side])
                ls = socket.socket()
                ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                ls.bind((self.addr[side], port))
                ls.listen(4)
                box["sock"] = ls
            except OSError as e:
                box["err"] = e

        t = threading.Thread(target=inside)
        t.start()
        t.join()
        if "err" in box:
            raise MigrateError("listening on %s:%d in %s: %s"
                               % (self.addr[side], port, self.ns[side], box["err"]))
        return box["sock"]

    def transport(self, dst_port: int) -> str:
        return "TCP over a veth pair between two network namespaces (%s -> %s:%d), %s" % (
            SRC_ADDR, DST_ADDR, dst_port, self.method_text)

    def cleanup(self):
        for p in self.proxies:
            kill_proc(p)
        self.proxies = []
        for ns in self.created:
            run(["ip", "netns", "del", ns], check=False)
        self.created = []


def delay_proxy(listen: str, connect: str, delay_ms: float):
    """Forward TCP from listen to connect, holding data delay_ms each way."""
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


if __name__ == "__main__":
    delay_proxy(sys.argv[1], sys.argv[2], float(sys.argv[3]))
