# SPDX-License-Identifier: GPL-2.0-or-later
"""Two libvirt daemons on one machine, standing for two hosts.

Each libvirtd runs in its own mount and UTS namespace (unshare --mount
--uts): its own hostname (pcrs-src / pcrs-dst), and per-daemon directories
bind-mounted over the paths a privileged libvirtd hard-codes (/etc/libvirt,
/run/libvirt, /var/lib/libvirt, /var/log/libvirt, /var/cache/libvirt).  So
the two have separate configuration, state, runtime directories, domain
logs and capability caches, and a same path (e.g. a console socket in the
domain XML) names a different file on each "host", as it would on two
machines.  Each has its own host UUID (host_uuid): libvirt refuses a
migration to a destination that reports the source's host UUID (older
versions compared hostnames too).  Their sockets are in unix_sock_dir outside those directories,
so virsh (and the source daemon) reach both with
qemu+unix:///system?socket=...; QEMU's migration stream goes over TCP on
the loopback (both share the network namespace).

qemu.conf: QEMU runs as root (user/group "root"), security_driver "none",
no dynamic ownership, no cgroups, no private /dev namespace: libvirt's
defaults (QEMU as libvirt-qemu under AppArmor, with file ownership and
cgroup rules set per domain) assume a system installation, here the
patched QEMU runs from the build tree and the daemons are throwaway.  With
--unprivileged, qemu.conf is closer to libvirt's defaults: user and group
pcrs-qemu and kvm, dynamic_ownership = 1 (libvirt chowns what QEMU opens
to that user for the domain's life, and back after), and QEMU in its own
mount namespace with a private /dev, which must list /dev/userfaultfd
(UNPRIVILEGED_DEVICE_ACL says why).  QEMU's
stderr (the library's postcopy_rs_* trace) goes to the domain log file
(stdio_handler "file", no virtlogd).

Nothing outlives a run: close() destroys the domains, kills any QEMU left
from its pid file, stops the daemons (their namespaces and mounts vanish
with them) and removes the directories."""

import glob
import os
import re
import shutil
import subprocess
import time
import uuid
from typing import Dict, List, Optional

from .options import MigrateError
from .procs import kill_proc, register_cleanup, run, spawn, unregister_cleanup

BASE_PREFIX = "/tmp/pcrs-lv-"
# Paths a privileged libvirtd uses, each overlaid with a per-daemon directory.
OVERLAID = {"etc": "/etc/libvirt", "run": "/run/libvirt", "lib": "/var/lib/libvirt",
            "log": "/var/log/libvirt", "cache": "/var/cache/libvirt"}

QEMU_CONF = """\
# postcopy-rs demo: a throwaway daemon running the patched QEMU from the
# build tree as {user} (see scripts/postcopy_demo/libvirt.py for why).
user = "{user}"
group = "{group}"
security_driver = "none"
dynamic_ownership = {dynamic_ownership}
remember_owner = 0
cgroup_controllers = [ ]
namespaces = [{namespaces}]
{device_acl}seccomp_sandbox = 0
stdio_handler = "file"
lock_manager = "nop"
migration_port_min = {port_min}
migration_port_max = {port_max}
"""

# With --unprivileged QEMU gets libvirt's private /dev (namespaces
# "mount", its default), populated from this list.  libvirt 9.0's built-in
# list lacks /dev/userfaultfd (newer libvirt has it): without the last
# entry QEMU cannot open the device and falls back to the syscall, which
# vm.unprivileged_userfaultfd=0 refuses, and the destination refuses
# postcopy at migrate-set-capabilities.
UNPRIVILEGED_DEVICE_ACL = """\
cgroup_device_acl = [ "/dev/null", "/dev/full", "/dev/zero", "/dev/random", "/dev/urandom",
                      "/dev/ptmx", "/dev/kvm", "/dev/userfaultfd" ]
"""

LIBVIRTD_CONF = """\
unix_sock_dir = "{sock_dir}"
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
host_uuid = "{host_uuid}"
log_outputs = "3:file:{log}"
"""


class Daemon:
    """One libvirtd: a "host" named pcrs-<name>."""

    def __init__(self, base: str, name: str, port_min: int, qemu_user: Optional[str] = None,
                 qemu_group: Optional[str] = None):
        self.name = name
        self.qemu_user, self.qemu_group = qemu_user, qemu_group
        self.hostname = "pcrs-" + name
        self.dir = os.path.join(base, name)
        self.dirs = {k: os.path.join(self.dir, k) for k in OVERLAID}
        self.sock_dir = os.path.join(self.dir, "sock")
        self.host_uuid = str(uuid.uuid4())
        self.uri = "qemu+unix:///system?socket=%s/libvirt-sock" % self.sock_dir
        self.log = os.path.join(self.dir, "libvirtd.log")
        self.port_min = port_min
        self.proc: Optional[subprocess.Popen] = None

    def real_path(self, path: str) -> str:
        """Where a path inside this daemon's view is, seen from outside."""
        for k, mp in OVERLAID.items():
            if path == mp or path.startswith(mp + "/"):
                return self.dirs[k] + path[len(mp):]
        return path

    def write_config(self, hugetlbfs: Dict[str, str]):
        for d in list(self.dirs.values()) + [self.sock_dir]:
            os.makedirs(d, exist_ok=True)
        conf = QEMU_CONF.format(port_min=self.port_min, port_max=self.port_min + 9,
                                user=self.qemu_user or "root",
                                group=self.qemu_group or "root",
                                dynamic_ownership=1 if self.qemu_user else 0,
                                namespaces=' "mount" ' if self.qemu_user else " ",
                                device_acl=UNPRIVILEGED_DEVICE_ACL if self.qemu_user else "")
        if hugetlbfs:
            conf += "hugetlbfs_mount = [ %s ]\n" % ", ".join(
                '"%s"' % p for p in hugetlbfs.values())
        with open(os.path.join(self.dirs["etc"], "qemu.conf"), "w") as f:
            f.write(conf)
        with open(os.path.join(self.dirs["etc"], "libvirtd.conf"), "w") as f:
            f.write(LIBVIRTD_CONF.format(sock_dir=self.sock_dir, host_uuid=self.host_uuid,
                                         log=self.log))

    def start(self, hugetlbfs: Dict[str, str], timeout: float = 30.0):
        """unshare, overlay the libvirt paths, mount hugetlbfs, exec libvirtd."""
        self.write_config(hugetlbfs)
        script = ["set -e", "hostname %s" % self.hostname]
        for k, mp in OVERLAID.items():
            script.append("mount --bind %s %s" % (self.dirs[k], mp))
        for size, path in hugetlbfs.items():
            os.makedirs(path, exist_ok=True)
            script.append("mount -t hugetlbfs -o pagesize=%s none %s" % (size, path))
        script.append("exec libvirtd -f /etc/libvirt/libvirtd.conf -p %s/libvirtd.pid"
                      % self.dir)
        argv = ["unshare", "--mount", "--uts", "--propagation", "private", "--",
                "sh", "-c", "\n".join(script)]
        with open(os.path.join(self.dir, "libvirtd.stderr"), "wb") as err:
            self.proc = spawn(argv, stdout=err, stderr=err)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise MigrateError("libvirtd for %s exited (status %s): %s" % (
                    self.hostname, self.proc.returncode, self.tail()))
            if os.path.exists(os.path.join(self.sock_dir, "libvirt-sock")) and \
                    self.virsh("hostname", check=False).returncode == 0:
                return
            if time.monotonic() > deadline:
                raise MigrateError("libvirtd for %s did not answer within %.0f s: %s"
                                   % (self.hostname, timeout, self.tail()))
            time.sleep(0.2)

    def tail(self, n=8) -> str:
        out = []
        for p in (os.path.join(self.dir, "libvirtd.stderr"), self.log):
            try:
                with open(p, errors="replace") as f:
                    out += f.read().splitlines()[-n:]
            except OSError:
                pass
        return "\n".join("  %s| %s" % (self.hostname, ln) for ln in out)

    def virsh(self, *args, check=True, timeout=120) -> subprocess.CompletedProcess:
        return run(["virsh", "-q", "-c", self.uri] + list(args), check=check, timeout=timeout)

    def qemu_pids(self) -> List[int]:
        pids = []
        for p in glob.glob(os.path.join(self.dirs["run"], "qemu", "*.pid")):
            try:
                with open(p) as f:
                    pids.append(int(f.read().strip()))
            except (OSError, ValueError):
                pass
        return pids

    def stop(self):
        if self.proc and self.proc.poll() is None:
            r = self.virsh("list", "--name", check=False, timeout=20)
            for dom in r.stdout.split():
                self.virsh("destroy", dom, check=False, timeout=20)
        kill_pids(self.qemu_pids())
        if self.proc:
            kill_proc(self.proc, grace=10)


def kill_pids(pids: List[int]):
    """QEMUs libvirt started are not our children: kill them by pid, only
    if they still are QEMU."""
    for pid in pids:
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as f:
                if b"qemu-system" not in f.read():
                    continue
            os.kill(pid, 9)
        except (OSError, ProcessLookupError):
            pass


class HostPair:
    """The two daemons of one run (source and destination) and their files."""

    def __init__(self, hugetlbfs_sizes: List[str], qemu_user: Optional[str] = None,
                 qemu_group: Optional[str] = None):
        self.base = BASE_PREFIX + str(os.getpid())
        self.src = Daemon(self.base, "src", 49152, qemu_user, qemu_group)
        self.dst = Daemon(self.base, "dst", 49162, qemu_user, qemu_group)
        self.hugetlbfs = {ps: os.path.join(self.base, "hugepages-" + ps)
                          for ps in hugetlbfs_sizes}
        self.created_mountpoints: List[str] = []

    @staticmethod
    def remove_stale(say):
        """What a SIGKILLed run left: its QEMUs (its daemons died with it)."""
        for d in glob.glob(BASE_PREFIX + "*"):
            m = re.fullmatch(re.escape(BASE_PREFIX) + r"(\d+)", d)
            if not m or os.path.exists("/proc/" + m.group(1)):
                continue
            kill_pids([int(x) for p in glob.glob(d + "/*/run/qemu/*.pid")
                       for x in open(p).read().split() if x.isdigit()])
            shutil.rmtree(d, ignore_errors=True)
            say("removed %s, left by a killed run" % d)

    def start(self):
        register_cleanup(self.close)
        for mp in OVERLAID.values():
            if not os.path.isdir(mp):
                os.makedirs(mp)
                self.created_mountpoints.append(mp)
        self.src.start(self.hugetlbfs)
        self.dst.start(self.hugetlbfs)

    def close(self):
        unregister_cleanup(self.close)
        for d in (self.src, self.dst):
            try:
                d.stop()
            except Exception:  # keep cleaning up
                pass
        for mp in reversed(self.created_mountpoints):
            try:
                os.rmdir(mp)
            except OSError:
                pass
        self.created_mountpoints = []
