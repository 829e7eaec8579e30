# SPDX-License-Identifier: GPL-2.0-or-later
"""The demo under libvirt (`make demo ARGS=--libvirt`): the same guest,
defined from domain XML with the patched QEMU as <emulator>, started on
one libvirt daemon and migrated to another the way operators do:

    virsh define DOMAIN.xml; virsh start --paused DOMAIN
    virsh migrate --live --postcopy --persistent DOMAIN DEST-URI
                  --migrateuri tcp://127.0.0.1 --listen-address 127.0.0.1
                  --bandwidth 128
    virsh migrate-postcopy DOMAIN          (once --switch-after MiB are sent)

A direct (not peer-to-peer) managed migration: virsh holds a connection to
both daemons and drives the phases, as `virsh migrate` does by default
(--p2p would have the source daemon connect to the destination itself;
the demo does not try it).  The summary comes from `virsh domjobinfo
--completed` on the source (the domain is persistent there, so its
inactive definition keeps the completed job's statistics; libvirt 9.0
reports none on the destination), the library's counters from the QEMU
logs in each daemon's /var/log/libvirt/qemu, and the guest's own
VERIFY OK from its serial console (a unix socket in the domain XML)."""

import os
import re
import shutil
import subprocess
import time
import uuid
from typing import Optional
from xml.sax.saxutils import escape

from ..console import Console
from ..libvirt import HostPair
from ..options import PAGE_SIZES, ROOT, MiB, MigrateError, Options, ram_spec_str
from ..procs import kill_proc, spawn
from ..qmp import QMPError
from ..report import fmt_bytes
from ..session import Session
from ..unprivileged import KVM_GROUP
from ..vm import TRACE_PATTERN, parse_latency, parse_trace, stderr_lines, why_paused

DOMAIN = "pcrs-demo"
# Inside each daemon's own /var/lib/libvirt: one path, two files.
CONSOLE = "/var/lib/libvirt/qemu/%s.console" % DOMAIN
QEMU_LOG = "/var/log/libvirt/qemu/%s.log" % DOMAIN
PIDFILE = "/run/libvirt/qemu/%s.pid" % DOMAIN


def domain_xml(s: Session, blocks, dom_uuid: str) -> str:
    b = blocks[0]
    kvm = s.accel == "kvm"
    backing = "" if b.pagesize == "4K" else (
        "  <memoryBacking><hugepages><page size='%d' unit='KiB'/></hugepages>"
        "</memoryBacking>\n" % (PAGE_SIZES[b.pagesize] // 1024))
    return """<domain type='{type}' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <uuid>{uuid}</uuid>
  <memory unit='MiB'>{mib}</memory>
{backing}  <vcpu>{smp}</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
    <initrd>{initrd}</initrd>
    <cmdline>{cmdline}</cmdline>
  </os>
  <features><acpi/></features>
{cpu}  <on_poweroff>destroy</on_poweroff>
  <on_reboot>destroy</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>{emulator}</emulator>
    <serial type='unix'>
      <source mode='bind' path='{console}'/>
      <target port='0'/>
    </serial>
    <controller type='usb' model='none'/>
    <memballoon model='none'/>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-trace'/>
    <qemu:arg value='{trace}'/>
{extra_trace}  </qemu:commandline>
</domain>
""".format(type="kvm" if kvm else "qemu", name=DOMAIN, uuid=dom_uuid, mib=b.mib,
           backing=backing, smp=s.opts.smp, kernel=escape(s.guest.kernel),
           initrd=escape(s.guest.initrd), cmdline=escape(s.guest.cmdline()),
           cpu="  <cpu mode='host-passthrough'/>\n" if kvm else "",
           emulator=escape(s.src_binary), console=CONSOLE, trace=TRACE_PATTERN,
           # QEMU's word for how it got its userfaultfd (unprivileged.py).
           extra_trace="    <qemu:arg value='-trace'/>\n"
           "    <qemu:arg value='uffd_detect_open_mode'/>\n" if s.unpriv else "")


class Domain:
    """The guest as one daemon runs it: what the guests module needs of a VM."""

    def __init__(self, daemon, accel: str, logdir: str):
        self.daemon = daemon
        self.name = daemon.hostname
        self.accel = accel
        self.console = None
        self.pages = None
        self.identity = None          # with --unprivileged: whom QEMU runs as
        self.stderr_path = daemon.real_path(QEMU_LOG)
        self.console_log = os.path.join(logdir, "%s.console.log" % daemon.name)

    def pid(self):
        try:
            with open(self.daemon.real_path(PIDFILE)) as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return None

    def alive(self) -> bool:
        pid = self.pid()
        return pid is not None and os.path.exists("/proc/%d" % pid)

    def connect_console(self, timeout: float):
        path = self.daemon.real_path(CONSOLE)
        deadline = time.monotonic() + timeout
        while not os.path.exists(path):
            if time.monotonic() > deadline:
                raise MigrateError("%s: no console socket %s" % (self.name, path))
            time.sleep(0.05)
        proc = _Alive(self)
        self.console = Console(path, proc, self.name, self.console_log)

    def why_not_ready(self, otherwise: str) -> str:
        return otherwise if self.alive() else "QEMU is not running"

    def stderr_excerpt(self, n=15) -> str:
        lines = stderr_lines(self.stderr_path)
        return "\n".join("  %s qemu log| %s" % (self.name, ln) for ln in lines[-n:])

    def console_excerpt(self, n=25) -> str:
        if not self.console:
            return ""
        return "\n".join("  %s console| %s" % (self.name, ln[-200:])
                         for ln in self.console.tail(n))


class _Alive:
    """The poll() that connect_when_listening asks of a process, for a domain."""

    def __init__(self, dom):
        self.dom, self.returncode = dom, None

    def poll(self):
        return None if self.dom.alive() else -1


def jobinfo(daemon, *flags) -> dict:
    """`virsh domjobinfo` as {field: value} ({"_error": ...} if it failed)."""
    r = daemon.virsh("domjobinfo", DOMAIN, *flags, check=False, timeout=20)
    info = {} if r.returncode == 0 else {"_error": (r.stderr or r.stdout).strip()}
    for line in r.stdout.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            info[k.strip()] = v.strip()
    return info


def destination_error(path: str) -> Optional[str]:
    """Why the destination's QEMU failed, from its log: the page-size
    refusal when there is one, else what vm.why_paused finds."""
    for ln in stderr_lines(path):
        if "page" in ln and "sizes" in ln and ("Postcopy" in ln or "guest RAM uses" in ln):
            return re.sub(r"^\S+ qemu-system-x86_64: ", "", ln)
    return why_paused(path)


def mib_of(value: str):
    """"123.456 MiB" -> MiB as a float (None if absent)."""
    m = re.match(r"([\d.]+)\s*(B|KiB|MiB|GiB)", value or "")
    if not m:
        return None
    return float(m.group(1)) * {"B": 1.0 / MiB, "KiB": 1 / 1024.0, "MiB": 1, "GiB": 1024}[
        m.group(2)]


def migrate(s: Session, hosts: HostPair, src: Domain, dst: Domain, res: dict,
            dst_xml: Optional[str] = None):
    o = s.opts
    argv = ["virsh", "-c", hosts.src.uri, "migrate", "--live", "--postcopy", "--persistent",
            DOMAIN,
            hosts.dst.uri, "--migrateuri", "tcp://127.0.0.1", "--listen-address", "127.0.0.1"]
    if dst_xml:
        # The destination's own definition: RAM of other page sizes.
        argv += ["--xml", dst_xml]
    # libvirt lifts QEMU's precopy bandwidth limit (128 MiB/s) by default:
    # put it back (or --max-bandwidth), so that precopy does not converge
    # before the switch, as in the QMP demo.
    argv += ["--bandwidth", str(o.max_bandwidth or 128)]
    if o.postcopy_bandwidth:
        argv += ["--postcopy-bandwidth", str(o.postcopy_bandwidth)]
    res["command"] = " ".join(argv)
    s.out.say("$ %s" % res["command"])
    log = open(os.path.join(s.logdir, "virsh-migrate.log"), "wb")
    p = spawn(argv, stdout=log, stderr=log)
    log.close()
    t0 = time.monotonic()
    try:
        while p.poll() is None:
            if dst.console is None and os.path.exists(hosts.dst.real_path(CONSOLE)):
                try:
                    dst.connect_console(5)
                except MigrateError as e:
                    # A destination that refuses the migration exits: virsh
                    # migrate fails, and the failure path says why.
                    s.out.warn(str(e))
            info = jobinfo(hosts.src)
            sent = mib_of(info.get("Memory processed"))
            if sent is not None:
                s.out.progress("[%5.1fs] %-10s memory sent %s, remaining %s, %s, postcopy "
                               "requests %s" % (time.monotonic() - t0, info.get("Job type"),
                                                info.get("Memory processed"),
                                                info.get("Memory remaining"),
                                                info.get("Memory bandwidth", "-"),
                                                info.get("Postcopy requests", "0")))
            if not res["postcopy_started"] and sent is not None and sent >= o.switch_after:
                r = hosts.src.virsh("migrate-postcopy", DOMAIN, check=False, timeout=20)
                if r.returncode == 0:
                    res.update(postcopy_started=True, switch_at_bytes=int(sent * MiB),
                               switch_at_s=round(time.monotonic() - t0, 2))
                    s.out.say("$ virsh migrate-postcopy %s  (at %s sent, %.1f s)" % (
                        DOMAIN, fmt_bytes(sent * MiB), time.monotonic() - t0))
                else:
                    s.out.warn("virsh migrate-postcopy: %s" % r.stderr.strip())
            if time.monotonic() - t0 > o.timeout:
                hosts.src.virsh("domjobabort", DOMAIN, check=False, timeout=20)
                res["error"] = "migration did not finish in %.0f s" % o.timeout
                break
            time.sleep(0.1)
        p.wait(30)
    finally:
        kill_proc(p)
        s.out.end_progress()
    with open(os.path.join(s.logdir, "virsh-migrate.log"), errors="replace") as f:
        out = f.read().strip()
    res["status"] = "completed" if p.returncode == 0 else "failed"
    if p.returncode != 0:
        res["error"] = res["error"] or "virsh migrate failed (exit %s): %s" % (
            p.returncode, out)


def summarize(s: Session, hosts: HostPair, res: dict):
    info = jobinfo(hosts.src, "--completed")
    res["jobinfo"] = info
    with open(os.path.join(s.logdir, "domjobinfo-completed.txt"), "w") as f:
        f.write("".join("%s: %s\n" % kv for kv in info.items()))
    if "_error" in info:
        s.out.warn("virsh domjobinfo --completed on %s: %s"
                   % (hosts.src.hostname, info["_error"]))

    def ms(k):
        m = re.match(r"\d+", info.get(k, ""))
        return int(m.group(0)) if m else None

    res.update(total_time_ms=ms("Time elapsed"), downtime_ms=ms("Total downtime"),
               setup_time_ms=ms("Setup time"),
               total_time_by="libvirt's job, from the prepare phase on")
    v = mib_of(info.get("Memory processed"))
    res["transferred_bytes"] = int(v * MiB) if v is not None else None
    if info.get("Postcopy requests", "").isdigit():
        res["postcopy_requests"] = int(info["Postcopy requests"])
    res["library_source"] = parse_trace(hosts.src.real_path(QEMU_LOG), "postcopy_rs_discard_stats")
    if not res["library_source"]:
        # migrate-postcopy was accepted, but precopy finished first: the
        # source never sent its discard bitmap.
        res["postcopy_started"] = False
    deadline = time.monotonic() + (10 if res["postcopy_started"] else 0)
    while True:
        res["library_destination"] = parse_trace(
            hosts.dst.real_path(QEMU_LOG), "postcopy_rs_incoming_stats")
        if res["library_destination"] or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    res["library_latency"] = (parse_latency(hosts.dst.real_path(QEMU_LOG))
                              if res["library_destination"] else None)


def ensure_hugepages(s: Session, blocks):
    """Free hugepages for each hugepage-backed block, as vm.py does for a
    QEMU it starts."""
    for blk in blocks:
        if blk.pagesize != "4K":
            s.hugepages.ensure(blk.pagesize, blk.pages, s.hugepages_run_total(blk.pagesize))


def run_migration(opts: Options) -> dict:
    """Boot under one libvirtd, migrate with postcopy to the other, verify."""
    t0 = time.monotonic()
    res = {"verify_ok": False, "error": None, "status": None, "postcopy_started": False}
    if opts.netem_delay is not None or opts.mixed or opts.src_ram or opts.dst_ram:
        res["error"] = ("--libvirt takes the guest's size, --hugepages and --src/--dst-pagesize; "
                        "not --netem-delay, --mixed or per-side RAM layouts")
        return res
    hosts = None
    try:
        with Session(opts) as s:
            version = subprocess.run(["libvirtd", "--version"], stdout=subprocess.PIPE,
                                     universal_newlines=True).stdout.split()[-1]
            res.update(logdir=s.logdir, qemu=os.path.relpath(s.src_binary, ROOT),
                       accel_note=s.accel_note, src_ram=ram_spec_str(s.src_ram),
                       dst_ram=ram_spec_str(s.dst_ram),
                       driver="libvirt %s: two libvirtd (hosts pcrs-src, pcrs-dst), virsh"
                       % version)
            HostPair.remove_stale(s.out.say)
            huge = sorted({b.pagesize for b in s.src_ram + s.dst_ram if b.pagesize != "4K"})
            hosts = HostPair(huge, *((s.unpriv.user, KVM_GROUP) if s.unpriv else ()))
            try:
                res.update(_run(s, hosts, res))
            finally:
                for d in (hosts.src, hosts.dst):
                    for path, name in ((d.real_path(QEMU_LOG), d.name + ".qemu.log"),
                                       (d.log, d.name + ".libvirtd.log")):
                        if os.path.exists(path):
                            shutil.copy(path, os.path.join(s.logdir, name))
                hosts.close()
                shutil.rmtree(hosts.base, ignore_errors=True)
    except (MigrateError, QMPError, subprocess.TimeoutExpired) as e:
        res["error"] = str(e)
    res["run_time_s"] = round(time.monotonic() - t0, 1)
    return res


def _run(s: Session, hosts: HostPair, res: dict) -> dict:
    b = s.src_ram[0]
    s.out.say("libvirt: starting two daemons (mount + UTS namespaces, own host UUIDs)")
    hosts.start()
    s.out.say("  %s  %s  host_uuid %s" % (hosts.src.hostname, hosts.src.uri, hosts.src.host_uuid))
    s.out.say("  %s  %s  host_uuid %s" % (hosts.dst.hostname, hosts.dst.uri, hosts.dst.host_uuid))
    xml = os.path.join(s.logdir, DOMAIN + ".xml")
    dom_uuid = str(uuid.uuid4())
    with open(xml, "w") as f:
        f.write(domain_xml(s, s.src_ram, dom_uuid))
    db = s.dst_ram[0]
    dst_xml = None
    if db.pagesize != b.pagesize:
        # QEMU refuses postcopy between RAM of other page sizes: the
        # destination says why, in its log (libvirt 9.0 keeps no error-desc).
        dst_xml = os.path.join(s.logdir, DOMAIN + "-destination.xml")
        with open(dst_xml, "w") as f:
            f.write(domain_xml(s, s.dst_ram, dom_uuid))
    ensure_hugepages(s, (b, db))
    s.out.say("guest: %d MiB (%s), %d vCPUs, %s; domain XML %s"
              % (b.mib, ram_spec_str(s.src_ram), s.opts.smp, s.accel_note,
                 os.path.relpath(xml, ROOT)))
    # Persistent on the source, so that after the migration its (inactive)
    # definition still holds the completed job's statistics.
    s.out.say("$ virsh -c %s define %s; virsh start --paused %s"
              % (hosts.src.uri, os.path.relpath(xml, ROOT), DOMAIN))
    hosts.src.virsh("define", xml)
    hosts.src.virsh("start", "--paused", DOMAIN)
    src = Domain(hosts.src, s.accel, s.logdir)
    dst = Domain(hosts.dst, s.accel, s.logdir)
    src.connect_console(10)
    if s.unpriv:
        src.identity = s.unpriv.check_process(src.pid(), src.name)
    hosts.src.virsh("resume", DOMAIN)
    t0 = time.monotonic()
    res["workload"] = s.guest.wait_ready(src, s.opts.boot_timeout or s.guest.boot_timeout(s.accel))
    s.out.say("guest up in %.1f s: %s" % (time.monotonic() - t0, res["workload"]))
    if s.opts.verify_source:
        v = s.guest.verify(src, s.opts.verify_timeout)
        res["source_verify"] = v["line"]
        s.out.say("source guest: %s" % (v["line"] or v["error"]))
        if not v["ok"]:
            res["error"] = "the guest failed its own check before migrating: %s" % (
                v["line"] or v["error"])
            return res
    ensure_hugepages(s, (b, db))
    res["transport"] = ("virsh migrate (direct, managed by virsh) from %s to %s; QEMU's "
                        "stream over TCP on the loopback" % (hosts.src.hostname,
                                                             hosts.dst.hostname))
    s.out.say("migrating %s -> %s; virsh migrate-postcopy after %d MiB"
              % (hosts.src.hostname, hosts.dst.hostname, s.opts.switch_after))
    migrate(s, hosts, src, dst, res, dst_xml)
    if s.unpriv:
        if dst.alive():
            dst.identity = s.unpriv.check_process(dst.pid(), dst.name)
        res["extra_summary"] = s.unpriv.summary(src, dst)
    if res["status"] != "completed":
        res["source_stderr"] = src.stderr_excerpt()
        res["destination_stderr"] = dst.stderr_excerpt()
        res["destination_error"] = destination_error(dst.stderr_path)
        if res["destination_error"]:
            res["error"] = "%s; destination: %s" % (res["error"], res["destination_error"])
        state = hosts.src.virsh("domstate", DOMAIN, check=False).stdout.strip()
        res["source_state"] = state
        s.out.say("after the failed migration the domain is %r on %s"
                  % (state, hosts.src.hostname))
        return res
    summarize(s, hosts, res)
    state = hosts.dst.virsh("domstate", DOMAIN, check=False).stdout.strip()
    if state != "running":
        res["error"] = "after the migration the domain is %r on %s" % (state, hosts.dst.hostname)
        return res
    if dst.console is None:
        dst.connect_console(10)
    v = s.guest.verify(dst, s.opts.verify_timeout)
    res.update(verify=v["line"], verify_ok=v["ok"], verify_seconds=v.get("seconds"))
    if not v["ok"]:
        res["error"] = v["error"] or "guest memory check failed: %s" % v["line"]
    return res
