#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""make bench's report: the cargo benchmarks' results (criterion's `discard`,
the `fault` harness) as the markdown of docs/BENCHMARKS.md (make bench-e2e
writes its own, scripts/bench-e2e.py).

Reads, under the cargo target directory ($CARGO_TARGET_DIR, else ./target
next to this script's parent):

- criterion's estimates of `cargo bench --bench discard`:
  criterion/discard-1TiB/<dir>/new/estimates.json, the "median" point
  estimate in ns, for the ids `floor`, `ours/<pattern>/<ratio>` and
  `qemu-algo/<pattern>/<ratio>` (criterion names each directory after the id
  with '/' turned into '_'; the id is taken from new/benchmark.json);
- the run counts benches/discard.rs writes to
  env!("CARGO_TARGET_TMPDIR")/discard-runs.json, i.e. tmp/discard-runs.json;
- fault-bench.md, written by `cargo bench --bench fault`, appended as is.

Prints the report on stdout.  Missing results show as "n/a" (a partial
run still reports what it has); it fails only if there is nothing at all.
Python 3 standard library only.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

GROUP = "discard-1TiB"
PATTERNS = ["empty", "full", "random-0.1%", "random-50%", "alternating", "runs-of-37"]
RATIOS = [1, 512]
NA = "n/a"


def default_target_dir():
    env = os.environ.get("CARGO_TARGET_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parent.parent / "target"


def load_estimates(group_dir):
    """Map benchmark id -> (median ns, mtime) for every result in the group."""
    found = {}
    if not group_dir.is_dir():
        return found
    for d in sorted(group_dir.iterdir()):
        est = d / "new" / "estimates.json"
        if not est.is_file():
            continue
        bid = None
        meta = d / "new" / "benchmark.json"
        try:
            bid = json.loads(meta.read_text())["function_id"]
        except (OSError, ValueError, KeyError):
            pass
        if not bid:
            # criterion's directory name: the id with '/' as '_'.  Patterns
            # contain no '_', so the first and last '_' are the separators.
            parts = d.name.split("_")
            bid = d.name if len(parts) < 3 else "/".join(
                [parts[0], "_".join(parts[1:-1]), parts[-1]])
        try:
            median = float(json.loads(est.read_text())["median"]["point_estimate"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            print(f"warning: cannot read {est}: {e}", file=sys.stderr)
            continue
        found[bid] = (median, est.stat().st_mtime)
    return found


def load_runs(path):
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        print(f"warning: cannot read {path}: {e}", file=sys.stderr)
        return {}
    return {k: int(v) for k, v in raw.items() if k != "_"}


def ms(ns):
    return NA if ns is None else f"{ns / 1e6:.2f}"


def ratio(a, b, suffix="x"):
    if a is None or b is None or b == 0:
        return NA
    return f"{a / b:.2f}{suffix}"


def discard_table(est, runs):
    floor = est.get("floor", (None, 0))[0]
    lines = [
        "## Source-side discard, 1 TiB guest (2^28 target pages, 32 MiB bitmap)",
        "",
        "Median of criterion's samples.  *floor*: one plain read of the same "
        "32 MiB bitmap"
        + (f" ({ms(floor)} ms)" if floor is not None else " (missing)")
        + ".  *qemu-algo*: QEMU 10.0's C algorithm, transliterated.  "
        "speed-up = qemu-algo / ours.",
        "",
        "| pattern | ratio | ours ms | ours/floor | qemu-algo ms | qemu-algo/floor "
        "| speed-up | runs | ours ns/run |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for pattern in PATTERNS:
        for r in RATIOS:
            key = f"{pattern}/{r}"
            ours = est.get(f"ours/{key}", (None, 0))[0]
            qemu = est.get(f"qemu-algo/{key}", (None, 0))[0]
            n = runs.get(key)
            per_run = NA
            if ours is not None and n:
                v = ours / n
                per_run = f"{v:.2f}" if v < 100 else f"{v:.0f}"
            elif ours is not None and n == 0:
                per_run = "-"
            lines.append(
                f"| {pattern} | {r} | {ms(ours)} | {ratio(ours, floor)} "
                f"| {ms(qemu)} | {ratio(qemu, floor)} | {ratio(qemu, ours)} "
                f"| {NA if n is None else n} | {per_run} |"
            )
    return lines


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target-dir", type=Path, default=default_target_dir(),
                    help="cargo target directory (default: $CARGO_TARGET_DIR or ./target)")
    args = ap.parse_args()
    target = args.target_dir

    est = load_estimates(target / "criterion" / GROUP)
    runs_path = target / "tmp" / "discard-runs.json"
    runs = load_runs(runs_path)
    fault_md = target / "fault-bench.md"

    if not est and not runs and not fault_md.is_file():
        sys.exit(f"no benchmark results under {target}: run `make bench` "
                 "(cargo bench --bench discard) and/or `cargo bench --bench fault`")

    out = ["# postcopy-rs benchmarks", ""]
    if est or runs:
        out += discard_table(est, runs)
        wanted = ["floor"] + [f"{impl}/{p}/{r}" for impl in ("ours", "qemu-algo")
                              for p in PATTERNS for r in RATIOS]
        missing = [w for w in wanted if w not in est]
        out.append("")
        if missing:
            out.append(f"Missing criterion results ({len(missing)}): "
                       + ", ".join(f"`{m}`" for m in missing) + ".")
        if not runs:
            out.append(f"Missing run counts: {runs_path} "
                       "(written at the end of the discard bench).")
        if est:
            times = [t for _, t in est.values()]
            fmt = "%Y-%m-%d %H:%M"
            span = (time.strftime(fmt, time.localtime(min(times))),
                    time.strftime(fmt, time.localtime(max(times))))
            out.append(f"Criterion results written {span[0]}"
                       + (f" to {span[1]}" if span[1] != span[0] else "") + ".")
        out.append("")
    else:
        out += [f"(No discard results under {target}.)", ""]

    if fault_md.is_file():
        out.append(fault_md.read_text().rstrip("\n"))
        out.append("")
    print("\n".join(out))


if __name__ == "__main__":
    main()
