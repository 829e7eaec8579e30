# SPDX-License-Identifier: GPL-2.0-or-later
"""The mechanics of a network cut (scenarios/netcut.py drives them): the
TCP settings that make each side notice, the cut itself, waiting for
postcopy-paused on both sides, and the recovery (the destination's socket
handed over with keepalive on, or out of band)."""

import random
import socket
import time

from ..options import MigrateError, Options
from ..qmp import QMPError
from ..session import Session

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
