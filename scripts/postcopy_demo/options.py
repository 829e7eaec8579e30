# SPDX-License-Identifier: GPL-2.0-or-later
"""What a run is asked to do: the Options, guest RAM layouts, and the one
exception type whose message is meant for the user."""

import dataclasses
import os
import re
from typing import List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MiB = 1 << 20
PAGE_SIZES = {"4K": 4 << 10, "2M": 2 << 20, "1G": 1 << 30}
DEFAULT_BINARY = os.path.join("build", "qemu-patched", "qemu-system-x86_64")


class MigrateError(Exception):
    """A problem the user must fix (or at least read); the message says what."""


class HugepagesUnavailable(MigrateError):
    """The kernel would not give the hugepages a QEMU needs."""


@dataclasses.dataclass
class Options:
    mem: int = 512                   # MiB of guest RAM (when no RAM spec)
    smp: int = 2
    rate: str = "5000"               # pages/s the guest dirties ("max", "0")
    switch_after: int = 64           # MiB sent before migrate-start-postcopy
    workload_mb: Optional[int] = None  # default: the guest takes 80% of free
    hugepages: Optional[str] = None  # "2M"/"1G" backing on both sides
    src_pagesize: Optional[str] = None
    dst_pagesize: Optional[str] = None
    mixed: bool = False              # two RAM blocks: 4K + hugepage-backed
    src_ram: Optional[str] = None    # full RAM spec, e.g. "256M@4K,256M@2M"
    dst_ram: Optional[str] = None
    netem_delay: Optional[float] = None  # ms, each way
    cut_after: Optional[int] = None  # MiB of postcopy traffic per network cut
    cuts: int = 1
    cut_random: Optional[int] = None  # seed: cuts at random points instead
    cut_hold: float = 2.0            # s the link stays down once both paused
    handshake_cut: str = "connected"  # or after-recover: where recoveries are cut
    handshake_cuts: int = 1          # how many recoveries are themselves cut
    recover_oob: bool = False        # recover out of band even if not needed
    src_binary: str = DEFAULT_BINARY
    dst_binary: str = DEFAULT_BINARY
    accel: str = "auto"              # auto | kvm | tcg
    guest: str = "linux"             # linux (guest-build.sh) | bootblock (QEMU's)
    #                                  | none (the firmware alone, nothing booted)
    bootblock: Optional[str] = None  # QEMU's a-b-bootblock.h (default: the fetched tree's)
    kernel: str = os.path.join("build", "guest", "vmlinuz")
    initrd: str = os.path.join("build", "guest", "initramfs.cpio.gz")
    logdir: Optional[str] = None     # default build/migrate-runs/<stamp>
    timeout: float = 240.0           # seconds for the migration itself
    boot_timeout: Optional[float] = None  # default: the guest's own
    verify_timeout: float = 120.0
    max_bandwidth: Optional[int] = None       # MiB/s, precopy (QEMU: 128)
    postcopy_bandwidth: Optional[int] = None  # MiB/s (QEMU: unlimited)
    downtime_limit: Optional[int] = None      # ms (QEMU: 300)
    verify_source: bool = True       # verify on the source before migrating
    progress: str = "auto"           # auto | tty | lines | none
    progress_interval: float = 2.0   # seconds between lines when not a tty
    qemu_args: List[str] = dataclasses.field(default_factory=list)
    guest_args: List[str] = dataclasses.field(default_factory=list)  # kernel command line
    capabilities: List[str] = dataclasses.field(default_factory=list)  # both sides, e.g.
    #                                  postcopy-preempt, events
    src_capabilities: List[str] = dataclasses.field(default_factory=list)  # one side only
    dst_capabilities: List[str] = dataclasses.field(default_factory=list)
    quiet: bool = False              # no output at all (API use)
    unprivileged: bool = False       # QEMUs run as an unprivileged user (unprivileged.py)
    uffd_access: bool = True         # with unprivileged: may that user open /dev/userfaultfd


@dataclasses.dataclass
class RamBlock:
    mib: int
    pagesize: str                    # 4K | 2M | 1G

    @property
    def pages(self) -> int:
        return self.mib * MiB // PAGE_SIZES[self.pagesize]


def norm_pagesize(s: str) -> str:
    t = s.strip().upper().replace("IB", "").replace("B", "")
    t = {"4": "4K", "4096": "4K", "2048K": "2M", "1024M": "1G"}.get(t, t)
    if t not in PAGE_SIZES:
        raise MigrateError("unknown page size %r (use 4K, 2M or 1G)" % s)
    return t


def parse_size_mib(s: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([MmGg]?)(?:i?[Bb])?\s*", s)
    if not m:
        raise MigrateError("bad size %r (e.g. 512, 512M, 1G)" % s)
    return int(m.group(1)) * (1024 if m.group(2).upper() == "G" else 1)


def parse_ram_spec(spec: str) -> List[RamBlock]:
    """"512M@2M" or "256M@4K,256M@2M": one RAM block (a NUMA node) each."""
    blocks = []
    for part in spec.split(","):
        size, ps = part.split("@", 1) if "@" in part else (part, "4K")
        blocks.append(RamBlock(parse_size_mib(size), norm_pagesize(ps)))
    for b in blocks:
        if b.mib <= 0 or (b.mib * MiB) % PAGE_SIZES[b.pagesize]:
            raise MigrateError("RAM block of %d MiB is not a whole number of %s pages"
                               % (b.mib, b.pagesize))
    return blocks


def ram_spec_str(blocks: List[RamBlock]) -> str:
    return ",".join("%dM@%s" % (b.mib, b.pagesize) for b in blocks)


def side_ram(opts: Options, side: str) -> List[RamBlock]:
    """The RAM layout of one side ("src"/"dst") from the shortcuts in opts."""
    spec = opts.src_ram if side == "src" else opts.dst_ram
    if spec:
        return parse_ram_spec(spec)
    ps = opts.src_pagesize if side == "src" else opts.dst_pagesize
    huge = norm_pagesize(opts.hugepages) if opts.hugepages else None
    if opts.mixed:
        second = norm_pagesize(ps) if ps else (huge or "2M")
        half = opts.mem // 2
        return parse_ram_spec("%dM@4K,%dM@%s" % (opts.mem - half, half, second))
    return parse_ram_spec("%dM@%s" % (opts.mem, norm_pagesize(ps) if ps else (huge or "4K")))


def repo_path(p: str) -> str:
    """p relative to the current directory if it is there, else to the repo."""
    if os.path.isabs(p):
        return p
    return os.path.abspath(p) if os.path.exists(p) else os.path.join(ROOT, p)
