#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Fail when the docs name something the tree does not have.

Reads README.md and docs/*.md (not docs/history/, which keeps old names on
purpose), pulls out by regular expression the names a reader would type or
look up, and looks each one up where it must exist:

  C ABI names (postcopy_rs_*, postcopy_chunk_hostpages, PostcopyRs*)
      include/postcopy_rs.h, or the patch series (QEMU's glue and trace
      events are named postcopy_rs_* too)
  POSTCOPY_RS_* constants and environment variables
      the header, the series, or the code that reads them (src/, tests/,
      scripts/, build.rs, Makefile)
  QEMU properties: -global DRIVER.PROP, x-* names, and `...` names that
      mention postcopy or prepage
      the series, as a quoted string or anywhere in its text
  make targets (`make NAME`)
      the Makefile's rules
  command-line options (--name)
      the --help of every Python script in scripts/, and the case
      patterns of the shell scripts there
  paths into this tree (src/..., scripts/..., docs/..., ...; globs too)
      the file system
  the table of patch subjects and numbers in docs/BOUNDARY.md
      each series' patch files: every row names a patch with that subject
      at that number, and every patch has a row

A name that is rightly absent (upstream QEMU's, another tool's) goes in
scripts/docs-check.allow.  Exit status 1, with every unknown name and where
it is, if any is found; 0 otherwise.  Python 3 standard library only."""

import argparse
import glob
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERIES = ("v10.0.13", "v10.2.2")
TREE_DIRS = ("src", "scripts", "tests", "docs", "guest", "include", "examples",
             "benches", "qemu-patches", ".ci")

ABI = re.compile(r"\b(postcopy_rs_[a-z0-9_]*[a-z0-9]|postcopy_chunk_hostpages"
                 r"|PostcopyRs[A-Za-z0-9]+)\b(?!\*)")
CONST = re.compile(r"\b(POSTCOPY_RS_[A-Z0-9_]*[A-Z0-9])\b(?!\*)")
GLOBAL = re.compile(r"-global\s+[a-z0-9_-]+\.([a-z0-9_-]+)")
XPROP = re.compile(r"(?<![A-Za-z0-9_-])(x-[a-z0-9]+(?:-[a-z0-9]+)+)")
CODE = re.compile(r"`([^`\n]+)`")
KEBAB = re.compile(r"(?<![A-Za-z0-9_./-])([a-z][a-z0-9]*(?:-[a-z0-9]+)+)(?![A-Za-z0-9_/-])")
MAKE = re.compile(r"\bmake\s+([a-z][a-z0-9-]*)")
OPTION = re.compile(r"(?<![A-Za-z0-9_-])(--[a-z][a-z0-9-]*[a-z0-9])")
TREE = "|".join(re.escape(d) for d in TREE_DIRS)
PATH = re.compile(rf"(?<![A-Za-z0-9_./-])((?:{TREE})/[A-Za-z0-9_./*-]*[A-Za-z0-9_/*-])")
# Where each kind of name must be, for the messages.
WHERE = {
    "C ABI name": "the header or the series",
    "POSTCOPY_RS_ name": "the header, the series or the code",
    "QEMU property": "the series",
    "QEMU name": "the series",
    "make target": "the Makefile",
    "option": "any script's --help or case patterns",
    "path": "the tree",
}
SUBJECT_ROW = re.compile(r"^\|\s*([^|]+?)\s*\|\s*(\d{4}|—)\s*\|\s*(\d{4}|—)\s*\|\s*$")


def read(path):
    with open(path, encoding="utf-8") as f:
        return f.read()


def docs():
    """README.md and docs/*.md, as {relative path: text}."""
    paths = ["README.md", *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
    return {os.path.relpath(os.path.join(ROOT, p), ROOT): read(os.path.join(ROOT, p))
            for p in paths}


def allowlist(path):
    """Names from the allowlist file: the first word of each line, '#' to the
    end of a line is a comment."""
    names = set()
    for line in read(path).splitlines():
        word = line.split("#", 1)[0].strip()
        if word:
            names.add(word)
    return names


def patches():
    out = {}
    for v in SERIES:
        for p in sorted(glob.glob(os.path.join(ROOT, "qemu-patches", v, "*.patch"))):
            out[p] = read(p)
    return out


def code_text():
    """The text of the code that may read an environment variable."""
    parts = []
    for pattern in ("src/**/*.rs", "tests/**/*.rs", "build.rs", "Makefile",
                    "scripts/**/*.py", "scripts/**/*.sh", "guest/**/*.sh", ".ci/run"):
        for p in sorted(glob.glob(os.path.join(ROOT, pattern), recursive=True)):
            parts.append(read(p))
    return "\n".join(parts)


def make_targets():
    targets = set()
    for line in read(os.path.join(ROOT, "Makefile")).splitlines():
        m = re.match(r"^([A-Za-z0-9_.-]+(?:\s+[A-Za-z0-9_.-]+)*)\s*:(?!=)", line)
        if m and not line.startswith((".", "\t")):
            targets.update(m.group(1).split())
    return targets


def help_options(script, words, depth=0):
    """The --options of `script WORDS... --help`, and of each of its
    subcommands (argparse's "{a,b}" in the usage line), two levels deep."""
    r = subprocess.run([sys.executable, script, *words, "--help"], cwd=ROOT,
                       capture_output=True, text=True, timeout=60, check=False)
    if r.returncode != 0:
        sys.exit(f"docs-check: {os.path.relpath(script, ROOT)} {' '.join(words)} --help "
                 f"failed (exit {r.returncode}):\n{r.stderr.strip()}")
    opts = set(OPTION.findall(r.stdout))
    usage = r.stdout.split("\n\n", 1)[0]
    m = re.search(r"\{([a-z0-9_,-]+)\}", usage)
    if m and depth < 2:
        for sub in m.group(1).split(","):
            opts |= help_options(script, [*words, sub], depth + 1)
    return opts


def script_options():
    """Every --option the scripts take: the --help of each Python script,
    and each shell script's case patterns."""
    opts = set()
    for p in sorted(glob.glob(os.path.join(ROOT, "scripts", "*.py"))):
        if p == os.path.abspath(__file__):
            continue
        opts.update(help_options(p, []))
    for p in sorted(glob.glob(os.path.join(ROOT, "scripts", "*.sh"))):
        for m in re.finditer(r"^\s*((?:--[a-z0-9-]+\|?)+)\)", read(p), re.MULTILINE):
            opts.update(m.group(1).split("|"))
        # options compared by value, e.g. [ "$a" = --libvirt ]
        opts.update(re.findall(r'=\s*"?(--[a-z][a-z0-9-]*)"?\s*\]', read(p)))
    return opts


def line_of(text, pos):
    return text.count("\n", 0, pos) + 1


def names_in(text):
    """(kind, name, position) for every name of a checked kind in text."""
    for m in ABI.finditer(text):
        yield "C ABI name", m.group(1), m.start(1)
    for m in CONST.finditer(text):
        yield "POSTCOPY_RS_ name", m.group(1), m.start(1)
    for m in GLOBAL.finditer(text):
        yield "QEMU property", m.group(1), m.start(1)
    for m in XPROP.finditer(text):
        yield "QEMU property", m.group(1), m.start(1)
    for c in CODE.finditer(text):
        for m in KEBAB.finditer(c.group(1)):
            if re.search("postcopy|prepage", m.group(1)):
                yield "QEMU name", m.group(1), c.start(1) + m.start(1)
    for m in MAKE.finditer(text):
        yield "make target", m.group(1), m.start(1)
    for m in OPTION.finditer(text):
        yield "option", m.group(1), m.start(1)
    for m in PATH.finditer(text):
        yield "path", m.group(1), m.start(1)


def check_subject_table(boundary, series_files):
    """The patch table of docs/BOUNDARY.md against the series' files."""
    problems = []
    subjects = {}
    for v in SERIES:
        subjects[v] = {}
        for path, text in series_files.items():
            if os.path.basename(os.path.dirname(path)) != v:
                continue
            num = os.path.basename(path)[:4]
            m = re.search(r"^Subject: \[PATCH [^\]]*\] (.*(?:\n .*)*)", text, re.MULTILINE)
            if num == "0000" or not m:
                continue
            subject = " ".join(m.group(1).split())
            subjects[v][num] = subject.split(": ", 1)[-1]
    rows = [SUBJECT_ROW.match(ln) for ln in boundary.splitlines()]
    rows = [r.groups() for r in rows if r and not r.group(1).startswith("patch subject")]
    if not rows:
        return ["docs/BOUNDARY.md: no table of patch subjects and numbers found"]
    seen = {v: set() for v in SERIES}
    for subject, *nums in rows:
        for v, num in zip(SERIES, nums, strict=True):
            if num == "—":
                if subject in subjects[v].values():
                    problems.append(f"docs/BOUNDARY.md: '{subject}' says no patch in {v}, "
                                    "but it has one")
                continue
            seen[v].add(num)
            have = subjects[v].get(num)
            if have != subject:
                problems.append(f"docs/BOUNDARY.md: {v} {num} is '{have or 'missing'}', "
                                f"the table says '{subject}'")
    for v in SERIES:
        for num in sorted(set(subjects[v]) - seen[v]):
            problems.append(f"docs/BOUNDARY.md: {v} {num} ('{subjects[v][num]}') "
                            "is not in the patch table")
    return problems


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--allow", default=os.path.join(ROOT, "scripts", "docs-check.allow"),
                    help="the allowlist file (default: scripts/docs-check.allow)")
    ap.add_argument("--doc", action="append", metavar="FILE",
                    help="check FILE instead of README.md and docs/*.md (repeatable)")
    args = ap.parse_args()

    allowed = allowlist(args.allow)
    texts = {d: read(d) for d in args.doc} if args.doc else docs()
    header = read(os.path.join(ROOT, "include", "postcopy_rs.h"))
    series_files = patches()
    series = "\n".join(series_files.values())
    code = code_text()
    targets = make_targets()
    options = script_options()

    def found(kind, name):
        if kind == "C ABI name":
            return re.search(rf"\b{re.escape(name)}\b", header + series) is not None
        if kind == "POSTCOPY_RS_ name":
            return re.search(rf"\b{re.escape(name)}\b", header + series + code) is not None
        if kind in ("QEMU property", "QEMU name"):
            return name in series
        if kind == "make target":
            return name in targets
        if kind == "option":
            return name in options
        if kind == "path":  # a glob such as scripts/qemu-*.sh must match something
            return bool(glob.glob(os.path.join(ROOT, name)))
        raise ValueError(kind)

    problems = []
    checked = 0
    needed = set()
    for doc, text in texts.items():
        seen = set()
        for kind, name, pos in names_in(text):
            if (name, pos) in seen:
                continue
            seen.add((name, pos))
            checked += 1
            if found(kind, name):
                continue
            if name in allowed:
                needed.add(name)
            else:
                problems.append(f"{doc}:{line_of(text, pos)}: {kind} {name}: "
                                f"not in {WHERE[kind]}")
    if not args.doc:
        # An entry that no document needs would hide the next misuse.
        allow = os.path.relpath(args.allow, ROOT)
        problems += [f"{allow}: {name} is needed by no document (found, or not named): drop it"
                     for name in sorted(allowed - needed)]
    boundary = os.path.join(ROOT, "docs", "BOUNDARY.md")
    if not args.doc or os.path.abspath(boundary) in map(os.path.abspath, args.doc):
        problems += check_subject_table(read(boundary), series_files)

    for p in problems:
        print(p)
    if problems:
        print(f"docs-check: {len(problems)} problem(s): fix the document, or, for a name "
              f"that is rightly absent, add it to {os.path.relpath(args.allow, ROOT)}")
        return 1
    print(f"docs-check: {checked} names in {len(texts)} documents, all found")
    return 0


if __name__ == "__main__":
    sys.exit(main())
