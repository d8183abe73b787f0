"""Durations on command lines: a plain number of seconds, or Go's ``time.ParseDuration`` syntax
(``720h``, ``30m``, ``1h30m``, ``90s``, ``500ms``), as Cilium's flags take them.

:func:`parse_duration` reads one, :func:`format_duration` writes seconds back in the shortest Go
form (for flags written into manifests), :class:`Duration` is the click type.
"""

from __future__ import annotations

import math
import re
from typing import Any, Final

import click

__all__ = ["Duration", "format_duration", "parse_duration"]

_UNITS: Final = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PART: Final = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_EXAMPLES: Final = "e.g. 720h, 30m, 1h30m, 90s, or a number of seconds"


def parse_duration(text: str, *, allow_zero: bool = False) -> float:
    """The seconds in ``text`` (see the module docstring); ValueError saying why otherwise.

    Negative and non-finite values are refused; 0 (``0``, ``0s``, ...) only with ``allow_zero``."""
    value = text.strip()
    try:
        seconds = float(value)
    except ValueError:
        pos, seconds = 0, 0.0
        for match in _PART.finditer(value):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if not value or pos != len(value):
            raise ValueError(f"{text!r} is not a duration ({_EXAMPLES})") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"{text!r}: a duration must be a finite number of seconds, 0 or more ({_EXAMPLES})")
    if seconds == 0 and not allow_zero:
        raise ValueError(f"{text!r}: the duration must be positive")
    return seconds


def format_duration(seconds: float) -> str:
    """``seconds`` in Go's syntax, largest whole unit first: ``720h``, ``1h30m``, ``90.5s``, ``0s``."""
    if seconds < 0 or not math.isfinite(seconds):
        raise ValueError(f"cannot format {seconds!r} as a duration")
    whole = int(seconds)
    rest = seconds - whole
    hours, whole = divmod(whole, 3600)
    minutes, secs = divmod(whole, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    if secs or rest or not (hours or minutes):
        parts.append(f"{round(secs + rest, 9):g}s")
    return "".join(parts)


class Duration(click.ParamType):  # type: ignore[type-arg]
    """A click type for :func:`parse_duration` (``allow_zero``: 0 is a valid value, e.g. "off")."""

    name = "duration"

    def __init__(self, *, allow_zero: bool = False) -> None:
        self.allow_zero = allow_zero

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            return parse_duration(str(value), allow_zero=self.allow_zero)
        except ValueError as err:
            self.fail(str(err), param, ctx)
