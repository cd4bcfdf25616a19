"""The root of fleet's error hierarchy.

Every error a user can cause (bad input, a hostile peer, a typo in a profile) is a ``FleetError``
whose ``str()`` is one line naming the problem. The CLI prints that line and exits non-zero; it
never shows a traceback for these.
"""


class FleetError(Exception):
    """A problem fleet can explain in one line."""
