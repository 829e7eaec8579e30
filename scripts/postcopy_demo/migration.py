# SPDX-License-Identifier: GPL-2.0-or-later
"""One postcopy migration over QMP: capabilities, the switch to postcopy
after a given amount, the progress loop, and what both sides and the
library say at the end (the result dict the summary prints).

The steps are separate functions (listen, configure_source, start,
poll_until_done, collect) so that a scenario can drive them differently,
e.g. cut the network during postcopy and recover."""

import time
from typing import Optional

from .options import MiB, ram_spec_str
from .qmp import QMPError
from .report import fmt_bytes, progress_line
from .vm import has_trace_event, trace_events, why_paused

FINAL = ("completed", "failed", "cancelled")

def set_capabilities(vm, caps):
    vm.qmp.cmd("migrate-set-capabilities", {"capabilities": [
        {"capability": c, "state": True} for c in dict.fromkeys(caps)]})


def side_capabilities(session, side: str, caps):
    """One side's ("src"/"dst") capabilities: caps, then the Options' for
    both sides and for that side."""
    o = session.opts
    return (list(caps) + o.capabilities
            + (o.src_capabilities if side == "src" else o.dst_capabilities))


def listen(session, dst):
    """Capabilities on a new destination, then migrate-incoming."""
    set_capabilities(dst, side_capabilities(session, "dst",
                                            ["postcopy-ram", "postcopy-blocktime"]))
    if session.net:
        dst.port = 4440 + session.ndst
        uri = "tcp:%s:%d" % (session.net.addr["dst"], dst.port)
    else:
        uri = "unix:" + dst.mig_path
    # exit-on-error false: keep it up after a failure, to ask for the error
    dst.qmp.cmd("migrate-incoming", {"uri": uri, "exit-on-error": False})
    dst.listen_uri = uri


def configure_source(session, src):
    o = session.opts
    set_capabilities(src, side_capabilities(session, "src", ["postcopy-ram"]))
    params = {}
    if o.max_bandwidth:
        params["max-bandwidth"] = o.max_bandwidth * MiB
    if o.postcopy_bandwidth:
        params["max-postcopy-bandwidth"] = o.postcopy_bandwidth * MiB
    if o.downtime_limit is not None:
        params["downtime-limit"] = o.downtime_limit
    if params:
        src.qmp.cmd("migrate-set-parameters", params)


def source_uri(session, dst):
    """(URI the source migrates to, transport text for the summary)."""
    if session.net:
        return session.net.source_uri(dst.port), session.net.transport(dst.port)
    return "unix:" + dst.mig_path, "unix socket"


class Hooks:
    """What a scenario does around the switch to postcopy (default: nothing)."""

    def before_switch(self, src, dst):
        """Just before migrate-start-postcopy."""

    def after_switch(self, src, dst):
        """Once migrate-start-postcopy returned."""

    def polled(self, src, dst, info: dict):
        """After each query-migrate of the source (its answer, `info`)."""

    def completed(self, src, dst):
        """Once the source says completed, before the figures are collected
        (which takes seconds)."""


def poll_until_done(session, src, dst, res: dict, switch_mib: int, t0: float,
                    hooks: Hooks = Hooks()) -> dict:
    """query-migrate until a final state; switch to postcopy once switch_mib
    MiB are sent.  Returns the source's last answer."""
    o, out = session.opts, session.out
    info, last_status, dst_dead_since = {}, None, None
    while True:
        info = src.query_migrate()
        if "_qmp_error" in info:
            res.update(status="failed", error="source QEMU stopped answering: %s"
                       % info["_qmp_error"])
            break
        st = info.get("status")
        sent = info.get("ram", {}).get("transferred", 0)
        guest = dst if res["postcopy_started"] or st == "completed" else src
        rate = guest.console.guest_dirty_rate() if guest.console else None
        line = progress_line(time.monotonic() - t0, info, rate)
        if st != last_status and last_status is not None:
            out.progress(line, key=st, force=True)
        last_status = st
        if not res["postcopy_started"] and st == "active" and sent >= switch_mib * MiB:
            try:
                hooks.before_switch(src, dst)
                src.qmp.cmd("migrate-start-postcopy")
                res.update(postcopy_started=True, switch_at_bytes=sent,
                           switch_at_s=round(time.monotonic() - t0, 2))
                out.say("switching to postcopy at %s sent (%.1f s)"
                        % (fmt_bytes(sent), time.monotonic() - t0))
                hooks.after_switch(src, dst)
            except QMPError as e:
                out.warn("migrate-start-postcopy: %s" % e.desc)
        out.progress(line, key=st)
        hooks.polled(src, dst, info)
        if st in FINAL:
            res["status"] = st
            break
        if st == "postcopy-paused":
            # A broken channel, or a destination that could not go on.
            whys = ["%s: %s" % (vm.name, why) for vm in (dst, src)
                    for why in [why_paused(vm.stderr_path)] if why]
            res.update(status="failed", error="postcopy paused: %s" % (
                "; ".join(whys) or "neither QEMU said why on stderr"))
            break
        if not dst.alive():
            dst_dead_since = dst_dead_since or time.monotonic()
            if time.monotonic() - dst_dead_since > 15:
                res.update(status="failed", error="destination QEMU exited (status %s)"
                           % dst.proc.returncode)
                break
        if time.monotonic() - t0 > o.timeout:
            res.update(status="failed", error="migration did not finish in %.0f s" % o.timeout)
            if st == "active":
                try:
                    src.qmp.cmd("migrate_cancel")
                except QMPError:
                    pass
            break
        time.sleep(0.25)
    out.end_progress()
    return info


def collect(session, src, dst, res: dict, info: dict, discard_lines_before: int):
    """Fill res with both sides' figures and the library's counters."""
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
    # The destination finishes postcopy (and stops its fault thread, which
    # traces the counters) a little after the source says "completed".
    dinfo, dstate = {}, None
    if dst.alive():
        deadline = time.monotonic() + (20 if res["status"] == "completed" else 5)
        while True:
            dinfo = dst.query_migrate()
            dstate = dst.run_state()
            if (dinfo.get("status") == "failed" or time.monotonic() > deadline
                    or (dinfo.get("status") == "completed" and dstate == "running")):
                break
            time.sleep(0.2)
    res["destination_info"] = dinfo
    res["destination_status"] = dinfo.get("status")
    if dinfo.get("error-desc"):
        res["destination_error"] = dinfo["error-desc"]
    res["blocktime_ms"] = dinfo.get("postcopy-blocktime")
    res["vcpu_blocktime_ms"] = dinfo.get("postcopy-vcpu-blocktime")
    res["library_source"] = src.counters("discard_stats", skip=discard_lines_before)
    lib_dst = None
    if res["postcopy_started"] and has_trace_event(dst.binary, "postcopy_rs_incoming_stats"):
        deadline = time.monotonic() + 10
        while lib_dst is None and time.monotonic() < deadline:
            lib_dst = dst.counters("incoming_stats")
            time.sleep(0 if lib_dst else 0.2)
    res["library_destination"] = lib_dst
    # Traced with the counters, just before them.
    res["library_latency"] = dst.latency() if lib_dst else None
    res["source_running"] = src.alive() and src.run_state() == "running"
    res["destination_running"] = dst.alive() and dstate == "running"
    if res["status"] != "completed":
        errs = [e for e in (res["error"],
                            res["source_error"] and "source: " + res["source_error"],
                            res["destination_error"] and
                            "destination: " + res["destination_error"]) if e]
        res["error"] = "; ".join(errs or ["migration %s" % res["status"]])
        res["source_stderr"] = src.stderr_excerpt()
        res["destination_stderr"] = dst.stderr_excerpt()
    elif res["destination_status"] != "completed" or not res["destination_running"]:
        res["error"] = "the source completed but the destination says %r, %r" % (
            res["destination_status"], dstate)


def migrate(session, src, dst, switch_after: Optional[int] = None,
            hooks: Hooks = Hooks()) -> dict:
    """Migrate src to dst with postcopy.  Never raises for a failed
    migration: the result carries its status and both sides' errors."""
    switch_mib = session.opts.switch_after if switch_after is None else switch_after
    res = {"status": None, "error": None, "source_error": None,
           "destination_error": None, "postcopy_started": False,
           "switch_at_bytes": None, "source": src.name, "destination": dst.name,
           "src_ram": ram_spec_str(src.ram), "dst_ram": ram_spec_str(dst.ram),
           "accel": session.accel, "accel_note": session.accel_note,
           "transport": None, "logdir": session.logdir}
    configure_source(session, src)
    uri, res["transport"] = source_uri(session, dst)
    session.out.say("migrating %s (%s) -> %s (%s) over %s; migrate-start-postcopy after "
                    "%d MiB" % (src.name, res["src_ram"], dst.name, res["dst_ram"],
                                res["transport"], switch_mib))
    # The source's counters are per process: count this attempt's only.
    discard_lines_before = len(trace_events(src.stderr_path, "postcopy_rs_discard_stats"))
    t0 = time.monotonic()
    try:
        src.qmp.cmd("migrate", {"uri": uri})
    except QMPError as e:
        res.update(status="failed", error="migrate refused: %s" % e.desc, source_error=e.desc)
        return res
    info = poll_until_done(session, src, dst, res, switch_mib, t0, hooks)
    res["wall_time_s"] = round(time.monotonic() - t0, 2)
    if res["status"] == "completed":
        hooks.completed(src, dst)
    collect(session, src, dst, res, info, discard_lines_before)
    return res
