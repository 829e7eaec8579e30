# SPDX-License-Identifier: GPL-2.0-or-later
"""The statistics of `make bench-e2e` (scenarios/bench.py): runs of the
two builds paired by pair number (one run of each build per pair, the
same workload seed, the builds taking turns going first), the
patched/unpatched
ratio of each pair, their median and a percentile bootstrap confidence
interval of that median (pairs resampled with replacement, fixed seed).
Pure functions, unit-tested by scripts/tests/test_bench_stats.py."""

import math
import random
from typing import Dict, List, Optional, Sequence, Tuple

BASE, TEST = "unpatched", "patched"
RESAMPLES = 2000
SEED = 20261130
LEVEL = 0.95


def median(xs: Sequence[float]) -> float:
    """The median (mean of the two middle values for an even count)."""
    if not xs:
        raise ValueError("median of nothing")
    s = sorted(xs)
    n = len(s)
    return float(s[n // 2]) if n % 2 else (s[n // 2 - 1] + s[n // 2]) / 2.0


def percentile(sorted_xs: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of sorted values, linear between ranks (as
    numpy's default)."""
    if not sorted_xs:
        raise ValueError("percentile of nothing")
    pos = q * (len(sorted_xs) - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (pos - lo)


def schedule(cells: Sequence, runs: int) -> List[Tuple[object, int, str]]:
    """The order of the runs, as (cell, pair, kind): pair by pair, every
    cell once per pair.  Interleaving the cells spreads a slow spell of
    the machine over all of them; running a cell's pairs back to back let
    one cell catch it whole (the same 2 MiB cell measured 1.003x and 1.47x
    an hour apart).  Within a pair the builds take turns going first
    (unpatched first in even pairs, patched first in odd ones): a build
    that always ran second would carry whatever the first run leaves
    behind (an unpatched-against-unpatched run measured the second of each
    pair at 0.97x and 1.03x of the first)."""
    return [(cell, pair, kind) for pair in range(runs) for cell in cells
            for kind in ((BASE, TEST) if pair % 2 == 0 else (TEST, BASE))]


def order_of(runs: Sequence[dict]) -> str:
    """Which build went first in the pairs of these records: "unpatched
    first", "patched first" or "alternating"."""
    first: Dict[Tuple[object, object], str] = {}
    for r in sorted(runs, key=lambda r: r["seq"]):
        first.setdefault((r.get("cell"), r.get("pair")), r.get("kind"))
    kinds = set(first.values())
    if kinds == {TEST}:
        return "patched first"
    return "alternating" if TEST in kinds else "unpatched first"


def pairs(runs: Sequence[dict]) -> List[Tuple[dict, dict]]:
    """(unpatched, patched) pairs: the two runs with the same "pair" number
    (they share the workload's seed), in pair order.  Without pair numbers,
    the k-th run of each build in the order they ran.  A run whose partner
    failed or is missing is left out, and the pairs after it stay
    aligned."""
    if runs and all("pair" in r for r in runs):
        by_pair: Dict[int, Dict[str, dict]] = {}
        for r in runs:
            if r.get("kind") in (BASE, TEST):
                by_pair.setdefault(r["pair"], {})[r["kind"]] = r
        return [(d[BASE], d[TEST]) for _, d in sorted(by_pair.items())
                if BASE in d and TEST in d]
    by = {BASE: [], TEST: []}
    for r in sorted(runs, key=lambda r: r["seq"]):
        if r.get("kind") in by:
            by[r["kind"]].append(r)
    return list(zip(by[BASE], by[TEST]))


def ratios(prs: Sequence[Tuple[dict, dict]], metric) -> List[float]:
    """patched/unpatched of metric(run) per pair; pairs where either value
    is missing, or the unpatched one is 0, have no ratio."""
    out = []
    for base, test in prs:
        b, t = metric(base), metric(test)
        if b is None or t is None or b == 0:
            continue
        out.append(float(t) / float(b))
    return out


def bootstrap_ci(xs: Sequence[float], resamples: int = RESAMPLES, seed: int = SEED,
                 level: float = LEVEL) -> Tuple[float, float]:
    """Percentile bootstrap interval of the median of xs."""
    if not xs:
        raise ValueError("bootstrap of nothing")
    rng = random.Random(seed)
    n = len(xs)
    meds = sorted(median([xs[rng.randrange(n)] for _ in range(n)]) for _ in range(resamples))
    a = (1.0 - level) / 2.0
    return percentile(meds, a), percentile(meds, 1.0 - a)


def summarize(xs: Sequence[float], **kw) -> Optional[Dict[str, float]]:
    """{"n", "median", "lo", "hi", "min", "max", "noise"} of ratios, or None
    when there are none.  noise: the interval includes 1.0."""
    if not xs:
        return None
    lo, hi = bootstrap_ci(xs, **kw)
    return {"n": len(xs), "median": median(xs), "lo": lo, "hi": hi,
            "min": min(xs), "max": max(xs), "noise": lo <= 1.0 <= hi}


def verdict(s: Optional[Dict[str, float]]) -> str:
    """The plain reading of a summary."""
    if s is None:
        return "no ratio (a value is 0 or missing)"
    if s["n"] < 2:
        return "one pair: no interval"
    if s["noise"]:
        return "inside the noise"
    return "patched lower" if s["hi"] < 1.0 else "patched higher"


def wilson(k: int, n: int, z: float = 1.96) -> Tuple[float, float]:
    """The Wilson score interval of a rate k/n (95 % with the default z);
    (0, 1) when there were no trials."""
    if n == 0:
        return (0.0, 1.0)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))
