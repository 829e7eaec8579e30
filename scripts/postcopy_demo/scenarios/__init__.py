# SPDX-License-Identifier: GPL-2.0-or-later
"""What a run does with a Session.  A new scenario is a new module here: a
function that takes Options (or a Session) and returns a result dict with
at least "verify_ok"/"error", or raises scenarios.Failure/Skip in tests."""


class Failure(Exception):
    """A test scenario failed: the message says why."""


class Skip(Exception):
    """A test scenario cannot run here: the message says why."""
