# SPDX-License-Identifier: GPL-2.0-or-later
"""Network cuts during postcopy, and postcopy recovery (`--cut-after`).

The two QEMUs run in their own network namespaces joined by a veth pair
and migrate over plain TCP between the namespaces' addresses.  Mid-postcopy
the veth is set down on both ends: the migration stream and the return path
break, and neither QEMU is told (no migrate-pause, no yank).  Each side
notices through its own TCP timers, set as an operator would
(TCP_SETTINGS, in both namespaces):

  source       has unacked data (the background page stream): retransmission
               gives up after net.ipv4.tcp_retries2; when idle, keepalive
               (QEMU's keep-alive=on on the migrate channel, an
               InetSocketAddress field) with net.ipv4.tcp_keepalive_*.
  destination  QEMU 10.0 refuses keep-alive on a listening socket, and an
               idle destination (every vCPU blocked on a page requested before
               the cut) would never notice.  So the demo listens in the
               destination's namespace itself, accepts the source's
               connection, turns keepalive on for it (TCP_KEEPIDLE/INTVL/CNT
               as above) and hands it to QEMU (getfd, then migrate-incoming
               or migrate-recover fd:NAME).  With unacked data (a page
               request sent after the cut) tcp_retries2 applies.  Should the
               destination still not notice, the demo waits KICK_AFTER s and
               does what an operator must, migrate-pause on the destination,
               and the summary says so.  (QEMU 10.1 and later accept keep-alive,
               keep-alive-idle/interval/count on the listening side.)

With both sides in postcopy-paused (the guest's vCPUs blocked on missing
pages), the link stays down for --cut-hold s, comes back, and the demo
recovers: migrate-recover on the destination (a new port), migrate with
resume=true on the source.  The first --handshake-cuts recoveries are
themselves cut (--handshake-cut): "connected", the link goes down once the
source's resume has connected and sent its first messages, before the
destination gets the socket (its answer is lost, so both sides fail
in the middle of the handshake); "after-recover", right after
migrate-recover, wherever the handshake is by then.  Both sides go
back to postcopy-paused, and the demo recovers again.

A destination whose main thread is blocked on a missing page (seen with a
cut right after the switch) does not answer in-band QMP, getfd included.
Then its state comes from its MIGRATION events and the recovery goes out
of band: exec-oob migrate-recover on QEMU's own listener, which accepts in
the monitor's I/O thread (--recover-oob takes that path every time)."""

import os
import time

from .. import migration
from ..options import ROOT, MiB, MigrateError, Options, ram_spec_str
from ..qmp import QMPError
from ..report import fmt_bytes
from ..session import Session
from ..vm import VM, trace_events
from .cutter import (
    DEFAULT_POSTCOPY_BANDWIDTH,
    PAUSED,
    TCP_SETTINGS,
    TRACE_ARGS,
    Cutter,
    both,
    cut_points,
)


def run(s: Session, src, dst, res: dict) -> dict:
    """Migrate src -> dst with the cuts; res gets the migration's figures."""
    o = s.opts
    guest_mib = sum(b.mib for b in src.ram)
    points = cut_points(o, guest_mib)
    res.update(recover_oob=o.recover_oob, cuts=[], link_downs=0, resumes=0,
               failed_recoveries=0, destination_kicks=0, destination_blocked=0,
               cut_points_mib=points, tcp_settings=dict(TCP_SETTINGS))
    migration.configure_source(s, src)
    bw = o.postcopy_bandwidth or DEFAULT_POSTCOPY_BANDWIDTH
    src.qmp.cmd("migrate-set-parameters", {"max-postcopy-bandwidth": bw * MiB})
    res["transport"] = "TCP over a veth pair between two network namespaces (%s -> %s:%d), " \
        "%s, keepalive on both ends, postcopy at most %d MiB/s" % (
            s.net.addr["src"], s.net.addr["dst"], dst.port, s.net.method_text, bw)
    s.out.say("migrating %s -> %s; postcopy after %d MiB; cuts at %s MiB of postcopy traffic%s"
              % (src.name, dst.name, o.switch_after, ", ".join("%g" % p for p in points),
                 " (seed %d)" % o.cut_random if o.cut_random is not None else ""))
    c = Cutter(s, src, dst, res)
    c.hand_over(dst.port, "mig", False)
    info, k = {}, 0
    while True:
        info = src.query_migrate()
        st = info.get("status")
        ram = info.get("ram", {})
        if st in migration.FINAL:
            res["status"] = st
            break
        if not res["postcopy_started"] and st == "active" and \
                ram.get("transferred", 0) >= o.switch_after * MiB:
            src.qmp.cmd("migrate-start-postcopy")
            res.update(postcopy_started=True, switch_at_bytes=ram.get("transferred"),
                       switch_at_s=round(c.now(), 2))
            c.say("migrate-start-postcopy at %s sent" % fmt_bytes(ram.get("transferred")))
        pc = ram.get("postcopy-bytes", 0)
        if st == "postcopy-active" and k < len(points) and pc >= points[k] * MiB:
            k += 1
            cut = {"n": k, "at_postcopy_bytes": pc, "at_s": round(c.now(), 1)}
            res["cuts"].append(cut)
            t_cut = time.monotonic()
            c.cut("cut %d of %d at %s of postcopy traffic" % (k, len(points), fmt_bytes(pc)))
            c.wait_paused(cut, t_cut)
            time.sleep(o.cut_hold)
            c.recover(cut, o.handshake_cut if k <= o.handshake_cuts else None)
            cut["paused_s"] = round(time.monotonic() - t_cut, 1)
            continue
        if st == PAUSED:
            raise MigrateError("the source paused without a cut (%s)" % both(src, dst))
        if c.now() > o.timeout:
            raise MigrateError("migration did not finish in %.0f s (%s)"
                               % (o.timeout, both(src, dst)))
        time.sleep(0.1)
    res["wall_time_s"] = round(c.now(), 2)
    if k < len(points) and res["status"] == "completed":
        res["error"] = ("the migration completed after %d of %d cuts: postcopy was over before "
                        "%g MiB (lower --cut-after, or --postcopy-bandwidth)"
                        % (k, len(points), points[k]))
    return info


def start_destination(s: Session) -> VM:
    """A destination QEMU (-incoming defer) with the capabilities set; its
    migration socket comes later (Cutter.hand_over)."""
    s.ndst += 1
    vm = VM(s, "destination", "dst%d" % s.ndst, s.dst_binary, s.dst_ram, incoming=True)
    s.vms.append(vm)
    vm.start()
    # events: MIGRATION events tell its state when its main thread cannot answer
    migration.set_capabilities(vm, ["postcopy-ram", "postcopy-blocktime", "events"])
    vm.port = 4440 + s.ndst
    return vm


def page_requests_resent(dst) -> int:
    """Requests still pending at a resume, that the destination sent again:
    the faults that waited out a pause."""
    return len(trace_events(dst.stderr_path, "postcopy_page_req_sync"))


def run_netcut(opts: Options) -> dict:
    """Boot, migrate with postcopy, cut the link mid-postcopy --cuts times,
    recover each time, verify on the destination."""
    t0 = time.monotonic()
    result = {"verify_ok": False, "error": None}
    opts.netem_delay = opts.netem_delay or 0.0
    opts.qemu_args = list(opts.qemu_args) + TRACE_ARGS
    try:
        with Session(opts) as s:
            result["logdir"] = s.logdir
            sb = os.path.relpath(s.src_binary, ROOT)
            result["qemu"] = sb
            result["driver"] = "QMP (qemu.qmp), two QEMUs in two network namespaces"
            if s.net.method == "proxy":
                raise MigrateError("cuts need the QEMUs to talk TCP across the veth: without "
                                   "sch_netem, --netem-delay is a proxy the cut would not "
                                   "break; drop --netem-delay")
            s.net.set_sysctls(TCP_SETTINGS)
            s.out.say("TCP in both namespaces: %s" % ", ".join(
                "%s=%s" % (k.replace("net.ipv4.", ""), v) for k, v in TCP_SETTINGS.items()))
            src = s.start_source()
            result["workload"] = src.workload
            if opts.verify_source:
                v = s.verify(src)
                result["source_verify"] = v["line"]
                if not v["ok"]:
                    result["error"] = "the guest failed its own check before migrating: %s" % (
                        v["line"] or v["error"])
                    return result
            dst = start_destination(s)
            res = {"status": None, "error": None, "source_error": None,
                   "destination_error": None, "postcopy_started": False,
                   "switch_at_bytes": None, "src_ram": "%dM" % sum(b.mib for b in src.ram),
                   "logdir": s.logdir, "accel": s.accel, "accel_note": s.accel_note}
            try:
                info = run(s, src, dst, res)
            except MigrateError as e:
                res.update(status="failed", error=str(e))
                info = src.query_migrate()
            err = res["error"]
            migration.collect(s, src, dst, res, info, 0)
            if err and res["status"] == "completed":
                res["error"] = err
            res["src_ram"], res["dst_ram"] = (ram_spec_str(vm.ram)
                                              for vm in (src, dst))
            res["faults_waited"] = page_requests_resent(dst)
            res["destination_pauses"] = len(trace_events(dst.stderr_path,
                                                         "postcopy_pause_incoming"))
            result.update(res)
            if res["status"] == "completed" and not res["error"]:
                v = s.verify(dst)
                result.update(verify=v["line"], verify_ok=v["ok"],
                              verify_seconds=v.get("seconds"))
                if not v["ok"]:
                    result["error"] = v["error"] or "guest memory check failed: %s" % v["line"]
    except (MigrateError, QMPError) as e:
        result["error"] = str(e)
    result["run_time_s"] = round(time.monotonic() - t0, 1)
    result["extra_summary"] = summary_lines(result)
    return result


class Dashes(dict):
    """A dict whose missing or None values read as "-" (for the summary)."""

    def get(self, k, default=None):
        v = super().get(k)
        return "-" if v is None else v


def summary_lines(r: dict) -> list:
    """(label, text) lines for the summary."""
    if "cuts" not in r:
        return []
    lines = [("network cuts", "%d done of %d planned (at %s MiB of postcopy traffic); "
              "link down %d times; resumes %d, of which %d cut in the handshake"
              % (len(r["cuts"]), len(r["cut_points_mib"]),
                 ", ".join("%g" % p for p in r["cut_points_mib"]), r["link_downs"],
                 r["resumes"], r["failed_recoveries"]))]
    for c in r["cuts"]:
        c = Dashes(c)
        hs = c.get("handshake")
        hs = Dashes(hs) if hs != "-" else None
        lines.append(("  cut %d" % c["n"], "at %s postcopy, %s s in: source paused after %s s "
                      "(%s), destination after %s s (%s); %shandshake-to-active %s s; "
                      "paused %s s in all"
                      % (fmt_bytes(c["at_postcopy_bytes"]), c["at_s"],
                         c.get("source_paused_after_s"), c.get("source_noticed"),
                         c.get("destination_paused_after_s"), c.get("destination_noticed"),
                         "recovery cut (source %s at the cut; paused again after %s/%s s), "
                         % (hs["source_state_at_cut"], hs.get("source_paused_after_s"),
                            hs.get("destination_paused_after_s")) if hs else "",
                         c.get("resume_to_active_s"), c.get("paused_s"))))
    lines.append(("pauses", "destination QEMU paused %s times (trace postcopy_pause_incoming); "
                  "the library's fault thread %s (it stays paused through a failed "
                  "recovery)" % (r.get("destination_pauses"),
                                 Dashes(r.get("library_destination") or {}).get("pauses"))))
    paused = sum(c.get("paused_s") or 0 for c in r["cuts"])
    lines.append(("time paused", "%.1f s in all (cut to postcopy-active again)" % paused))
    lines.append(("faults that waited", "%s page requests pending at a resume, sent again "
                  "(QEMU trace postcopy_page_req_sync)" % r.get("faults_waited")))
    if r.get("recover_oob"):
        lines.append(("recovery", "out of band (--recover-oob): the destination's state from "
                      "its MIGRATION events, exec-oob migrate-recover on QEMU's own listener"))
    if r.get("destination_blocked"):
        lines.append(("destination blocked", "%d times its monitor did not answer (main thread "
                      "blocked on a missing page): recovered out of band"
                      % r["destination_blocked"]))
    if r.get("destination_kicks"):
        lines.append(("destination told", "%d times with migrate-pause: it did not notice "
                      "the cut by itself" % r["destination_kicks"]))
    lines.append(("TCP settings", ", ".join("%s=%s" % (k.replace("net.ipv4.", ""), v)
                                            for k, v in r["tcp_settings"].items())
                  + "; source keep-alive=on"))
    return lines
