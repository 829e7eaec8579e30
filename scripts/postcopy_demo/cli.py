# SPDX-License-Identifier: GPL-2.0-or-later
"""scripts/migrate.py's command line (`make demo ARGS=...`)."""

import argparse
import json
import re
import sys

from .options import MigrateError, Options, side_ram
from .procs import SignalGuard, cleanup_all
from .report import print_summary


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
                    help="MiB sent before the switch to postcopy (default %(default)s)")
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
    ap.add_argument("--libvirt", action="store_true",
                    help="migrate under libvirt instead: two libvirt daemons standing for two "
                         "hosts, virsh migrate --live --postcopy, then virsh migrate-postcopy "
                         "(see README, 'The demo under libvirt')")
    g = ap.add_argument_group("QEMU as an unprivileged user (unprivileged.py)")
    g.add_argument("--unprivileged", action="store_true",
                   help="run both QEMUs as the system user pcrs-qemu (created if missing, group "
                        "kvm), with vm.unprivileged_userfaultfd=0 and /dev/kvm and "
                        "/dev/userfaultfd root:kvm 0660; all restored afterwards. With "
                        "--libvirt: libvirt runs QEMU as that user (qemu.conf user/group, "
                        "dynamic_ownership, its private /dev listing /dev/userfaultfd)")
    g.add_argument("--deny-userfaultfd", action="store_true",
                   help="with --unprivileged: leave /dev/userfaultfd root:root 0600 as Debian "
                        "ships it; passes only if the migration is refused before the switch "
                        "to postcopy, with the source running and its memory intact")
    g = ap.add_argument_group("network cuts during postcopy (scenarios/netcut.py)")
    g.add_argument("--cut-after", type=int, metavar="MiB",
                   help="cut the link between two network namespaces every MiB of postcopy "
                        "traffic, wait until both QEMUs pause, recover")
    g.add_argument("--cuts", type=int, default=d.cuts, help="how many cuts (default %(default)s)")
    g.add_argument("--cut-random", type=int, metavar="SEED",
                   help="cut at --cuts random points (seeded) instead of every --cut-after MiB")
    g.add_argument("--cut-hold", type=float, default=d.cut_hold, metavar="S",
                   help="seconds the link stays down once both sides paused "
                        "(default %(default)s)")
    g.add_argument("--handshake-cuts", type=int, default=d.handshake_cuts, metavar="N",
                   help="cut the first N recoveries too (default %(default)s)")
    g.add_argument("--handshake-cut", choices=["connected", "after-recover"],
                   default=d.handshake_cut, help="where a recovery is cut: once the "
                   "source's resume connected, before the destination takes the connection; "
                   "or right after migrate-recover (default %(default)s)")
    g.add_argument("--recover-oob", action="store_true",
                   help="recover as when the destination's main thread is blocked: follow its "
                        "MIGRATION events, exec-oob migrate-recover on QEMU's own listener")
    g = ap.add_argument_group("migration chains (scenarios/chain.py)")
    g.add_argument("--chain", type=int, metavar="N",
                   help="migrate the guest along N hops, each to a new destination QEMU, the "
                        "last destination the next source; hop 3 cut mid-postcopy and "
                        "recovered, hop 5 first to a destination of other page sizes (refused), "
                        "hop 7 cancelled in precopy, each then done; the fds, threads and "
                        "memory of every source watched for leaks")
    g.add_argument("--chain-plan", metavar="KINDS",
                   help="the hops' kinds instead, one per hop, of plain, cut, mismatch, "
                        "cancel (e.g. plain,plain,cancel,plain)")
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
        kernel=a.kernel, initrd=a.initrd, qemu_args=a.qemu_arg,
        cut_after=a.cut_after, cuts=a.cuts, cut_random=a.cut_random, cut_hold=a.cut_hold,
        handshake_cut=a.handshake_cut, handshake_cuts=a.handshake_cuts,
        recover_oob=a.recover_oob, unprivileged=a.unprivileged,
        uffd_access=not a.deny_userfaultfd)


def main(argv=None) -> int:
    ap = build_parser()
    a = ap.parse_args(argv)
    if not re.fullmatch(r"\d+|max", str(a.rate)):
        ap.error("--rate: a number of pages/s, or max")
    opts = options_from_args(a)
    try:
        side_ram(opts, "src")
        side_ram(opts, "dst")
    except MigrateError as e:
        ap.error(str(e))
    netcut = a.cut_after is not None or a.cut_random is not None
    plan = None
    if a.chain is not None or a.chain_plan:
        from .scenarios import chain
        try:
            plan = chain.parse_plan(a.chain_plan) if a.chain_plan else \
                chain.default_plan(a.chain)
        except MigrateError as e:
            ap.error(str(e))
        if not plan or (a.chain is not None and a.chain != len(plan)):
            ap.error("--chain N: N >= 1 hops, as many as --chain-plan names")
        if a.libvirt:
            ap.error("--libvirt and --chain do not go together (yet)")
    if netcut and a.libvirt:
        ap.error("--libvirt and network cuts do not go together (yet)")
    if netcut and a.cut_after is None:
        opts.cut_after = 0
    if netcut and (a.cuts < 1 or (a.cut_random is None and a.cut_after < 1)):
        ap.error("--cut-after MiB >= 1 and --cuts N >= 1")
    if a.deny_userfaultfd and not a.unprivileged:
        ap.error("--deny-userfaultfd goes with --unprivileged")
    if a.deny_userfaultfd and (a.libvirt or netcut or plan):
        ap.error("--deny-userfaultfd is a run of its own: not with --libvirt, network cuts "
                 "or a chain")
    if plan:
        def run(o):
            return chain.run_chain(o, plan)
        title = "postcopy migration chain summary (%d hops)" % len(plan)
    elif a.deny_userfaultfd:
        from .scenarios import unprivileged
        run, title = unprivileged.run_denied, "postcopy refused: QEMU may not use userfaultfd"
    elif a.libvirt:
        from .scenarios import libvirt_demo
        run, title = libvirt_demo.run_migration, "postcopy migration under libvirt"
    elif netcut:
        from .scenarios import netcut as netcut_scenario
        run, title = netcut_scenario.run_netcut, "postcopy migration summary (network cuts)"
    else:
        from .scenarios import demo
        run, title = demo.run_migration, "postcopy migration summary"
    with SignalGuard():
        try:
            r = run(opts)
        except KeyboardInterrupt:
            cleanup_all()
            print("\ninterrupted; everything started was stopped", file=sys.stderr)
            return 130
        finally:
            cleanup_all()
    print_summary(r, title=title)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(r, f, indent=2, default=str)
    return 0 if r.get("verify_ok") else 1
