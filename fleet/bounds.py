"""Numeric rules shared by a configuration key and the command-line flag for the same value.

A profile key, a ``fleet ca serve`` flag and a ``fleet run`` override that mean the same number
are checked by the same ``Bound``, so all three refuse a bad value in the same words
("must be an integer >= 1, got 0").
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "COUNT",
    "FRACTION",
    "NON_NEGATIVE",
    "NON_NEGATIVE_INT",
    "PORT",
    "POSITIVE",
    "SEED",
    "Bound",
]


@dataclass(frozen=True)
class Bound:
    """A numeric rule: ``problem(value)`` is ``None`` or the words that refuse ``value``."""

    minimum: float
    integer: bool = False
    strict: bool = False  # the minimum itself is refused
    maximum: float | None = None

    @property
    def what(self) -> str:
        if self.maximum is not None:
            if self.integer:
                return f"an integer from {self.minimum:g} to {self.maximum:g}"
            if (self.minimum, self.maximum) == (0, 1):
                return "a fraction between 0 and 1"
            return f"a number between {self.minimum:g} and {self.maximum:g}"
        kind = "an integer" if self.integer else "a number"
        return f"{kind} {'>' if self.strict else '>='} {self.minimum:g}"

    def problem(self, value: object) -> str | None:
        """``None`` when ``value`` obeys the rule, else "must be ..., got ..."."""
        if isinstance(value, bool) or not isinstance(value, int if self.integer else (int, float)):
            ok = False
        else:
            v = float(value)
            ok = math.isfinite(v) and (v > self.minimum if self.strict else v >= self.minimum)
            ok = ok and (self.maximum is None or v <= self.maximum)
        if ok:
            return None
        shown = f"{value:g}" if isinstance(value, float) else repr(value)
        return f"must be {self.what}, got {shown}"


COUNT = Bound(1, integer=True)
SEED = Bound(0, integer=True)
NON_NEGATIVE_INT = Bound(0, integer=True)
POSITIVE = Bound(0, strict=True)  # seconds, rates
NON_NEGATIVE = Bound(0)
FRACTION = Bound(0, maximum=1)
PORT = Bound(0, integer=True, maximum=65535)
