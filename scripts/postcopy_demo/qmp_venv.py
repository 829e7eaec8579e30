# SPDX-License-Identifier: GPL-2.0-or-later
"""Run under the venv that holds qemu.qmp (scripts/demo-deps.sh makes it):
the entry points call use_qmp_venv() before importing anything else."""

import os
import sys


def venv_dir() -> str:
    cache = os.environ.get("PCRS_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "postcopy-rs")
    return os.environ.get("PCRS_QMP_VENV") or os.path.join(cache, "qmp-venv")


def use_qmp_venv():
    """Return if qemu.qmp imports; else re-exec this script with the venv's
    python; else exit saying how to get it."""
    try:
        import qemu.qmp  # noqa: F401
        return
    except ImportError:
        pass
    py = os.path.join(venv_dir(), "bin", "python3")
    if os.access(py, os.X_OK) and os.path.realpath(sys.prefix) != os.path.realpath(venv_dir()):
        os.execv(py, [py] + sys.argv)
    sys.exit("ERROR: the QMP library qemu.qmp is missing: run scripts/demo-deps.sh "
             "(it makes the venv %s)" % venv_dir())
