#!/usr/bin/env python3
# SPDX-License-Identifier: GPL-2.0-or-later
"""Live-migrate a real Linux guest with postcopy between two QEMUs (or,
with --libvirt, two libvirt daemons), verify its memory, print a summary.
Exit status 0 only on the guest's VERIFY OK.  `make demo ARGS=...`;
--help for the options.  The code is the package scripts/postcopy_demo/."""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from postcopy_demo.qmp_venv import use_qmp_venv  # noqa: E402

use_qmp_venv()
from postcopy_demo.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
