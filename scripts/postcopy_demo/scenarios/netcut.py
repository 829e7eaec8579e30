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
import random
import socket
import time

from .. import migration
from ..options import MiB, MigrateError, Options, ROOT, ram_spec_str
from ..qmp import QMPError
from ..report import fmt_bytes
from ..session import Session
from ..vm import VM, trace_events

# Per network namespace; the values make a cut noticed within seconds on a
# veth (RTO starts at 200 ms).  A WAN wants larger ones: the same settings
# decide how long a congested but healthy link may stall before postcopy
# pauses.
TCP_SETTINGS = {
    # unacked data: give up after 3 retransmissions, 0.2+0.4+0.8+1.6 = 3 s
    "net.ipv4.tcp_retries2": 3,
    # SO_KEEPALIVE sockets (the source's, keep-alive=on): an idle
    # connection is declared dead 2 + 3 x 1 = 5 s after its last packet
    "net.ipv4.tcp_keepalive_time": 2,
    "net.ipv4.tcp_keepalive_intvl": 1,
    "net.ipv4.tcp_keepalive_probes": 3,
    # a resume's connect to a dead peer: SYN retries, 1 + 2 = 3 s
    "net.ipv4.tcp_syn_retries": 2,
}
TRACE_ARGS = ["-trace", "postcopy_page_req_sync", "-trace", "postcopy_pause_*"]
DEFAULT_POSTCOPY_BANDWIDTH = 32   # MiB/s: postcopy lasts long enough to cut it
DETECT_TIMEOUT = 60.0             # s for both sides to reach postcopy-paused
KICK_AFTER = 20.0                 # s the destination may stay unaware
RECOVER_TIMEOUT = 60.0            # s for postcopy-active after a resume
RECOVER_PORT = 4540
ACCEPT_TIMEOUT = 10.0
PAUSED = "postcopy-paused"
BACK = ("postcopy-active", "completed")


def cut_points(opts: Options, guest_mib: int) -> list:
    """MiB of postcopy traffic at which each cut happens."""
    if opts.cut_random is None:
        return [opts.cut_after * (k + 1) for k in range(opts.cuts)]
    rng = random.Random(opts.cut_random)
    # Spread over the first 60% of what postcopy has left to send.
    hi = max(8.0, 0.6 * (guest_mib - opts.switch_after))
    return sorted(round(rng.uniform(4, hi), 1) for _ in range(opts.cuts))


def channel(host: str, port: int) -> list:
    return [{"channel-type": "main", "addr": {
        "transport": "socket", "type": "inet", "host": host, "port": str(port),
        "keep-alive": True}}]


def status(vm) -> str:
    info = vm.query_migrate()
    if "_qmp_error" in info:
        return "no answer (%s)" % info["_qmp_error"]
    return info.get("status", "none")


def both(src, dst) -> str:
    def one(vm):
        info = vm.query_migrate()
        err = info.get("error-desc")
        return "%s%s" % (info.get("status", info.get("_qmp_error")), " (%s)" % err if err else "")
    return "source %s" % one(src) + ("; destination %s" % one(dst) if dst else "")


class Cutter:
    def __init__(self, s: Session, src, dst, res: dict):
        self.s, self.src, self.dst, self.res = s, src, dst, res
        self.net = s.net
        self.port = RECOVER_PORT
        self.t0 = time.monotonic()
        # The destination's main thread stopped answering QMP: its state
        # comes from MIGRATION events, recovery goes out of band.
        self.dst_blocked = s.opts.recover_oob
        self.dst_event_state = None
        self.dst_keepalive = True     # the destination's socket has keepalive on

    def dst_status(self) -> str:
        for ev in self.dst.qmp.events():
            if ev.get("event") == "MIGRATION":
                self.dst_event_state = ev.get("data", {}).get("status")
        if self.dst_blocked:
            return self.dst_event_state or "unknown"
        return status(self.dst)

    def states(self) -> str:
        dead = ["%s QEMU exited (status %s)" % (side, vm.proc.returncode)
                for side, vm in (("source", self.src), ("destination", self.dst))
                if not vm.alive()]
        if dead:
            return "; ".join(dead)
        if not self.dst_blocked:
            return both(self.src, self.dst)
        return "%s; destination %s (its last MIGRATION event; its monitor does not answer)" % (
            both(self.src, None), self.dst_status())

    def now(self) -> float:
        return time.monotonic() - self.t0

    def say(self, msg: str):
        self.s.out.say("[%5.1fs] %s" % (self.now(), msg))

    def cut(self, why: str):
        self.net.set_link(False)
        self.res["link_downs"] += 1
        self.src_state_at_cut = status(self.src)
        self.say("CUT: veth down on both ends (%s); source %s"
                 % (why, self.src_state_at_cut))

    def wait_paused(self, cut: dict, since: float):
        """Both sides in postcopy-paused; record when each got there."""
        deadline = since + DETECT_TIMEOUT
        while True:
            now = time.monotonic()
            for side, vm in (("source", self.src), ("destination", self.dst)):
                key = side + "_paused_after_s"
                if cut.get(key) is None:
                    st = status(vm) if vm is self.src else self.dst_status()
                    if st == PAUSED:
                        cut[key] = round(now - since, 1)
                        cut[side + "_noticed"] = cut.get(side + "_noticed") or "its TCP timers"
                        self.say("%s: postcopy-paused, %.1f s after the cut" % (side, now - since))
                    elif st.startswith("no answer") and vm is self.dst:
                        # Seen with a cut 0.6 s after the switch: its main
                        # thread blocked on a missing page.  Out-of-band
                        # commands and events still work.
                        self.dst_blocked = True
                        self.res["destination_blocked"] += 1
                        self.s.out.warn("the destination's monitor does not answer (%s): its "
                                        "main thread is probably blocked on a missing page; "
                                        "following its MIGRATION events, recovering out of "
                                        "band" % st)
                        continue
                    elif st.startswith("no answer"):
                        raise MigrateError("after cut %d the source's monitor stopped "
                                           "answering (%s)" % (cut["n"], st))
                    elif st in ("completed", "failed", "cancelled"):
                        raise MigrateError("after cut %d the %s went to %r instead of "
                                           "postcopy-paused (%s)"
                                           % (cut["n"], side, st, self.states()))
            if cut.get("source_paused_after_s") is not None and \
                    cut.get("destination_paused_after_s") is not None:
                return
            if (cut.get("source_paused_after_s") is not None and
                    now - since - cut["source_paused_after_s"] > KICK_AFTER):
                st = self.dst_status()
                self.s.out.warn(
                    "the destination is still %r %.0f s after the source paused (%s); "
                    "doing what an operator must: migrate-pause on the destination"
                    % (st, KICK_AFTER, "its keepalive should have fired by now"
                       if self.dst_keepalive else "its socket is QEMU's own, without "
                       "keepalive, and it had nothing in flight"))
                try:
                    self.dst.qmp.cmd_oob("migrate-pause")
                except QMPError as e:
                    raise MigrateError("cut %d: migrate-pause on the destination: %s"
                                       % (cut["n"], e.desc))
                cut["destination_noticed"] = "told with migrate-pause (was %s)" % st
                self.res["destination_kicks"] += 1
                since_kick = time.monotonic()
                while self.dst_status() != PAUSED:
                    if time.monotonic() - since_kick > 15:
                        raise MigrateError("cut %d: the destination did not reach "
                                           "postcopy-paused even after migrate-pause (%s)"
                                           % (cut["n"], self.states()))
                    time.sleep(0.1)
                continue
            if now > deadline:
                raise MigrateError(
                    "cut %d: both sides were not in postcopy-paused %.0f s after the cut "
                    "(%s)" % (cut["n"], DETECT_TIMEOUT, self.states()))
            time.sleep(0.1)

    def hand_over(self, port: int, name: str, resume: bool, handshake_cut=None) -> float:
        """The source connects to a socket the demo listens on in the
        destination's namespace; the destination gets the accepted socket,
        with keepalive on (QEMU 10.0 refuses keep-alive on a listening
        socket), through getfd and migrate-incoming/migrate-recover fd:name.
        Returns when the source's migrate command was issued."""
        what = "recovery" if resume else "migration"
        ls = self.net.listen_in("dst", port)
        try:
            ls.settimeout(ACCEPT_TIMEOUT)
            t = time.monotonic()
            args = {"channels": channel(self.net.addr["dst"], port)}
            if resume:
                args["resume"] = True
            try:
                self.src.qmp.cmd("migrate", args)
            except QMPError as e:
                raise MigrateError("%s: migrate%s on the source refused: %s (%s)"
                                   % (what, " resume=true" if resume else "", e.desc,
                                      self.states()))
            if resume:
                self.res["resumes"] += 1
                self.say("source: migrate resume=true to %s:%d" % (self.net.addr["dst"], port))
            try:
                conn, _ = ls.accept()
            except OSError as e:
                raise MigrateError("%s: the source did not connect to %s:%d within %.0f s: %s "
                                   "(%s)" % (what, self.net.addr["dst"], port, ACCEPT_TIMEOUT,
                                             e, self.states()))
        finally:
            ls.close()
        try:
            for opt, val in ((socket.TCP_KEEPIDLE, TCP_SETTINGS["net.ipv4.tcp_keepalive_time"]),
                             (socket.TCP_KEEPINTVL, TCP_SETTINGS["net.ipv4.tcp_keepalive_intvl"]),
                             (socket.TCP_KEEPCNT, TCP_SETTINGS["net.ipv4.tcp_keepalive_probes"])):
                conn.setsockopt(socket.IPPROTO_TCP, opt, val)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
            if handshake_cut:
                self.cut(handshake_cut)
            try:
                self.dst.qmp.send_fd(name, conn.fileno())
            except QMPError as e:
                raise MigrateError("%s: handing the connection to the destination: %s (%s)"
                                   % (what, e.desc, self.states()))
        finally:
            conn.close()
        cmd = "migrate-recover" if resume else "migrate-incoming"
        try:
            self.dst.qmp.cmd(cmd, {"uri": "fd:" + name} if resume else
                             {"uri": "fd:" + name, "exit-on-error": False})
        except QMPError as e:
            raise MigrateError("%s: %s on the destination refused: %s (%s)"
                               % (what, cmd, e.desc, self.states()))
        self.dst_keepalive = True
        if resume:
            self.say("destination: migrate-recover fd:%s (the accepted socket, keepalive on)"
                     % name)
        return t

    def recover_oob(self) -> float:
        """Recovery while the destination's main thread is blocked:
        exec-oob migrate-recover on QEMU's own listener (it accepts in the
        monitor's I/O thread; no keepalive on that socket in QEMU 10.0)."""
        uri = "tcp:%s:%d" % (self.net.addr["dst"], self.port)
        try:
            self.dst.qmp.cmd_oob("migrate-recover", {"uri": uri})
        except QMPError as e:
            raise MigrateError("recovery: exec-oob migrate-recover on the destination: %s (%s)"
                               % (e.desc, self.states()))
        self.say("destination: exec-oob migrate-recover %s" % uri)
        self.dst_keepalive = False
        t = time.monotonic()
        try:
            self.src.qmp.cmd("migrate", {"channels": channel(self.net.addr["dst"], self.port),
                                         "resume": True})
        except QMPError as e:
            raise MigrateError("recovery: migrate resume=true on the source refused: %s (%s)"
                               % (e.desc, self.states()))
        self.res["resumes"] += 1
        self.say("source: migrate resume=true to %s:%d" % (self.net.addr["dst"], self.port))
        return t

    def recover(self, cut: dict, handshake_cut: str):
        """migrate resume + migrate-recover; with handshake_cut, cut that
        attempt and recover again.  Returns once both sides are back to
        postcopy-active (or completed)."""
        self.net.set_link(True)
        self.say("link up")
        self.port += 1
        why = None
        if handshake_cut == "connected":
            why = ("cut %d, recovery handshake: the source's resume connected, before the "
                   "destination's migrate-recover" % cut["n"])
        if self.dst_blocked:
            t_resume = self.recover_oob()
            if handshake_cut:
                handshake_cut = "after-recover"
        else:
            t_resume = self.hand_over(self.port, "rec%d" % self.port, True, why)
        if handshake_cut == "after-recover":
            self.cut("cut %d, recovery handshake: right after migrate-recover" % cut["n"])
        if handshake_cut:
            hs = {"n": cut["n"], "source_state_at_cut": self.src_state_at_cut}
            cut["handshake"] = hs
            self.res["failed_recoveries"] += 1
            self.wait_paused(hs, time.monotonic())
            time.sleep(self.s.opts.cut_hold)
            return self.recover(cut, None)
        deadline = t_resume + RECOVER_TIMEOUT
        while True:
            st_src, st_dst = status(self.src), self.dst_status()
            if st_src in BACK and st_dst in BACK:
                break
            if st_src in ("failed", "cancelled") or time.monotonic() > deadline:
                raise MigrateError("cut %d: recovery failed: not back to postcopy-active %.0f s "
                                   "after the resume (%s)" % (cut["n"], RECOVER_TIMEOUT,
                                                              self.states()))
            time.sleep(0.05)
        cut["resume_to_active_s"] = round(time.monotonic() - t_resume, 2)
        if self.dst_blocked and not self.s.opts.recover_oob and \
                not status(self.dst).startswith("no answer"):
            self.dst_blocked = False
            self.say("the destination's monitor answers again")
        self.say("recovered: source %s, destination %s (%.2f s after the resume)"
                 % (st_src, st_dst, cut["resume_to_active_s"]))


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
