# SPDX-License-Identifier: GPL-2.0-or-later
"""QEMU as an unprivileged user, on a host set up as Debian sets it up
(`--unprivileged`): what the host must grant, and giving it all back.

What Debian 12 ships, read from its packages:
  - udev (252) 50-udev-default.rules: KERNEL=="kvm", GROUP="kvm",
    MODE="0660"; its postinst creates the system group kvm.  There is no
    rule for userfaultfd: the kernel's devtmpfs node stays root:root 0600.
  - libvirt-daemon-system (9.0.0) postinst: the system user libvirt-qemu,
    primary group kvm, runs QEMU.
  - vm.unprivileged_userfaultfd is the kernel's default, 0 (since 5.11):
    the userfaultfd syscall fails (EPERM) for a process without
    CAP_SYS_PTRACE, unless it asks for user-mode faults only, which
    postcopy cannot use.  /dev/userfaultfd (Linux 6.1) is then the only
    way, and its file mode decides who may.  QEMU's uffd_open()
    (util/userfaultfd.c) tries the device first and falls back to the
    syscall.

So with access, /dev/userfaultfd gets what Debian gives /dev/kvm (root:kvm
0660), the operator's rule for it; without it, it keeps what Debian
ships (root:root 0600).  /dev/kvm is made root:kvm 0660 either way, and
the QEMU user (QEMU_USER, created if missing, primary group kvm as Debian
makes libvirt-qemu) runs both QEMUs through setpriv, holding no
capability.

Every change is undone by restore(), on every exit path (the Session's
close, atexit, signals); what a SIGKILLed run changed is written to
STATE_DIR/unprivileged-<pid>.json and given back by the next run."""

import grp
import json
import os
import pwd
import re
import subprocess
import sys
from typing import Dict, List, Optional

from .options import MigrateError
from .procs import run

QEMU_USER = "pcrs-qemu"
KVM_GROUP = "kvm"
SYSCTL = "vm.unprivileged_userfaultfd"
SYSCTL_PATH = "/proc/sys/vm/unprivileged_userfaultfd"
UFFD_DEV = "/dev/userfaultfd"
KVM_DEV = "/dev/kvm"
STATE_DIR = "/run/postcopy-rs-migrate"


def user_ids(user: str = QEMU_USER):
    """(uid, gid) of the QEMU user, or None if it does not exist."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


def ensure_user(say) -> str:
    """The system group kvm and the system user QEMU_USER in it, as
    Debian's udev and libvirt-daemon-system postinsts make them; a no-op
    when both exist."""
    try:
        grp.getgrnam(KVM_GROUP)
    except KeyError:
        run(["groupadd", "--system", KVM_GROUP])
        say("created the system group %s" % KVM_GROUP)
    if user_ids() is None:
        run(["useradd", "--system", "--gid", KVM_GROUP, "--no-create-home",
             "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
             "--comment", "postcopy-rs demo QEMU", QEMU_USER])
        say("created the system user %s (group %s)" % (QEMU_USER, KVM_GROUP))
    elif pwd.getpwnam(QEMU_USER).pw_gid != grp.getgrnam(KVM_GROUP).gr_gid and \
            QEMU_USER not in grp.getgrnam(KVM_GROUP).gr_mem:
        run(["usermod", "-a", "-G", KVM_GROUP, QEMU_USER])
    return QEMU_USER


def _misc_devnum(name: str) -> Optional[int]:
    """The device number of misc device `name` from sysfs (None if the
    kernel has no such device)."""
    try:
        with open("/sys/class/misc/%s/dev" % name) as f:
            major, minor = f.read().strip().split(":")
    except (OSError, ValueError):
        return None
    return os.makedev(int(major), int(minor))


class HostPrivileges:
    """The sysctl and the two device nodes for one run."""

    def __init__(self, uffd_access: bool, say):
        self.uffd_access = uffd_access
        self.say = say
        self.saved: Dict[str, dict] = {}   # path -> {"uid", "gid", "mode"}; sysctl value
        self.created: List[str] = []
        self.state = os.path.join(STATE_DIR, "unprivileged-%d.json" % os.getpid())

    def _save_state(self):
        try:
            os.makedirs(STATE_DIR, exist_ok=True)
            with open(self.state, "w") as f:
                json.dump({"saved": self.saved, "created": self.created}, f)
        except OSError:
            pass

    def _set_node(self, path: str, name: str, gid: int, mode: int):
        if not os.path.exists(path):
            dev = _misc_devnum(name)
            if dev is None:
                raise MigrateError("%s is missing and the kernel has no misc device %s "
                                   "(/sys/class/misc/%s; Linux >= 6.1 with "
                                   "CONFIG_USERFAULTFD for userfaultfd)" % (path, name, name))
            # What devtmpfs would have made: root:root 0600.
            os.mknod(path, 0o600 | 0o020000, dev)
            self.created.append(path)
            self._save_state()
            self.say("created %s (char %d:%d), as devtmpfs would"
                     % (path, os.major(dev), os.minor(dev)))
        else:
            st = os.stat(path)
            self.saved.setdefault(path, {"uid": st.st_uid, "gid": st.st_gid,
                                         "mode": st.st_mode & 0o7777})
            self._save_state()
        os.chown(path, 0, gid)
        os.chmod(path, mode)

    def setup(self):
        kvm_gid = grp.getgrnam(KVM_GROUP).gr_gid
        with open(SYSCTL_PATH) as f:
            self.saved[SYSCTL] = {"value": f.read().strip()}
        self._save_state()
        with open(SYSCTL_PATH, "w") as f:
            f.write("0\n")
        if os.path.exists(KVM_DEV):
            self._set_node(KVM_DEV, "kvm", kvm_gid, 0o660)
        if self.uffd_access:
            self._set_node(UFFD_DEV, "userfaultfd", kvm_gid, 0o660)
        else:
            self._set_node(UFFD_DEV, "userfaultfd", 0, 0o600)
        self.say("host as Debian sets it up: %s = 0; %s %s; %s %s" % (
            SYSCTL, KVM_DEV, describe(KVM_DEV), UFFD_DEV, describe(UFFD_DEV)))

    def restore(self):
        _restore(self.saved, self.created, self.say)
        self.saved, self.created = {}, []
        try:
            os.unlink(self.state)
        except OSError:
            pass

    @classmethod
    def restore_stale(cls, say):
        """Give back what a run that died without cleaning up changed."""
        try:
            names = os.listdir(STATE_DIR)
        except OSError:
            return
        for n in names:
            m = re.fullmatch(r"unprivileged-(\d+)\.json", n)
            if not m or os.path.exists("/proc/%s" % m.group(1)):
                continue
            path = os.path.join(STATE_DIR, n)
            try:
                with open(path) as f:
                    st = json.load(f)
                _restore(st.get("saved", {}), st.get("created", []), say)
                say("restored what a killed run (pid %s) changed" % m.group(1))
                os.unlink(path)
            except (OSError, ValueError):
                pass


def _restore(saved: dict, created: List[str], say):
    for path, st in saved.items():
        try:
            if path == SYSCTL:
                with open(SYSCTL_PATH, "w") as f:
                    f.write(st["value"] + "\n")
            else:
                os.chown(path, st["uid"], st["gid"])
                os.chmod(path, st["mode"])
        except OSError as e:
            print("WARNING: could not restore %s: %s" % (path, e), file=sys.stderr)
    for path in created:
        try:
            os.unlink(path)
        except OSError as e:
            print("WARNING: could not remove %s: %s" % (path, e), file=sys.stderr)
    if saved or created:
        done = ["%s = %s" % (SYSCTL, saved[SYSCTL]["value"])] if SYSCTL in saved else []
        done += ["%s %s" % (p, describe(p)) for p in saved if p != SYSCTL]
        done += ["removed %s" % p for p in created]
        say("restored %s" % ", ".join(done))


def describe(path: str) -> str:
    """"root:kvm 0660" (or "missing")."""
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    try:
        owner = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        owner = str(st.st_uid)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    return "%s:%s %04o" % (owner, group, st.st_mode & 0o7777)


def setpriv_prefix(user: str = QEMU_USER) -> List[str]:
    """Run a command as `user` with its groups and no capability; killed
    if we die (the parent-death signal is set after the switch: a
    credential change clears it)."""
    return ["setpriv", "--reuid", user, "--regid", KVM_GROUP, "--init-groups",
            "--inh-caps", "-all", "--pdeathsig", "KILL", "--"]


def check_readable(user: str, paths: List[str], executable: List[str]):
    """Fail early, naming the file, if `user` cannot read (or run) a file
    QEMU needs."""
    for flag, group in (("-r", paths), ("-x", executable)):
        for p in group:
            r = subprocess.run(setpriv_prefix(user) + ["test", flag, p],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            if r.returncode != 0:
                raise MigrateError(
                    "%s may not %s %s: QEMU runs as that user with --unprivileged "
                    "(make the file and every directory above it readable by others)"
                    % (user, "read" if flag == "-r" else "execute", p))


def process_identity(pid: int) -> dict:
    """The credentials a running process holds: {"uid", "user", "groups",
    "cap_eff"} from /proc/PID/status."""
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k == "Uid":
                    out["uid"] = int(v.split()[1])      # effective
                elif k == "Groups":
                    out["groups"] = [int(g) for g in v.split()]
                elif k == "CapEff":
                    out["cap_eff"] = int(v.strip(), 16)
    except (OSError, ValueError):
        return out
    try:
        out["user"] = pwd.getpwuid(out["uid"]).pw_name
    except (KeyError, TypeError):
        out["user"] = str(out.get("uid"))
    return out


class Unprivileged:
    """What a Session does with --unprivileged: the user, the host set-up,
    the prefix that starts each QEMU as that user, and the check that it
    did run as that user."""

    def __init__(self, uffd_access: bool, say):
        self.say = say
        self.host = HostPrivileges(uffd_access, say)
        self.user = QEMU_USER

    def setup(self):
        HostPrivileges.restore_stale(self.say)
        ensure_user(self.say)
        self.host.setup()

    def restore(self):
        self.host.restore()

    def give_dir(self, path: str):
        """A directory QEMU creates files in (its sockets)."""
        uid, gid = user_ids(self.user)
        os.chown(path, uid, gid)

    def check_files(self, session):
        """The user can run both QEMUs and read the guest's files."""
        g = session.guest
        files = [getattr(g, a) for a in ("kernel", "initrd", "image") if getattr(g, a, None)]
        check_readable(self.user, files, sorted({session.src_binary, session.dst_binary}))

    def wrap(self, argv: List[str]) -> List[str]:
        # QEMU's own word for how it got its userfaultfd (util/userfaultfd.c).
        return setpriv_prefix(self.user) + argv + ["-trace", "uffd_detect_open_mode"]

    def check_process(self, pid: int, name: str) -> str:
        """The QEMU runs as the user and holds no capability; else
        MigrateError.  Returns what it found, for the summary."""
        ident = process_identity(pid)
        uid = user_ids(self.user)[0]
        if ident.get("uid") != uid or ident.get("cap_eff") != 0:
            raise MigrateError("%s QEMU (pid %d) runs as %s with CapEff %s, not as %s "
                               "without capabilities" % (name, pid, ident.get("user"),
                                                         hex(ident.get("cap_eff") or 0),
                                                         self.user))
        groups = []
        for g in ident.get("groups", []):
            try:
                groups.append(grp.getgrgid(g).gr_name)
            except KeyError:
                groups.append(str(g))
        return "uid %d (%s), groups %s, no capabilities" % (uid, self.user, ",".join(groups))

    def summary(self, *vms) -> List[tuple]:
        """(label, text) lines for the summary: the host set-up, and whom
        each QEMU ran as (checked in /proc when it started)."""
        lines = [("privileges", "%s = 0; %s %s; %s %s" % (
            SYSCTL, KVM_DEV, describe(KVM_DEV), UFFD_DEV, describe(UFFD_DEV)))]
        for vm in vms:
            lines.append(("%s QEMU runs as" % vm.name, vm.identity or "?"))
            mode = uffd_open_mode(vm.stderr_path)
            if mode is not None:
                lines.append(("%s userfaultfd" % vm.name, mode))
        return lines


def uffd_open_mode(stderr_path: str) -> Optional[str]:
    """How QEMU opened userfaultfd, from its uffd_detect_open_mode trace
    (None if it never opened one: a source does not)."""
    try:
        with open(stderr_path, errors="replace") as f:
            for line in f:
                m = re.search(r"uffd_detect_open_mode (\d+)", line)
                if m:
                    return {"1": "through %s (QEMU's uffd_detect_open_mode 1)" % UFFD_DEV,
                            "2": "the userfaultfd syscall: %s could not be opened "
                                 "(QEMU's uffd_detect_open_mode 2)" % UFFD_DEV
                            }.get(m.group(1), "uffd_detect_open_mode " + m.group(1))
    except OSError:
        pass
    return None
