"""Times and durations as people type them: `90`, `30s`, `5m`, `2h`, `7d`; ISO 8601 times
(`2026-11-25T03:00`, `2026-11-25T03:00:00Z`; without a zone: this machine's local time)."""

from __future__ import annotations

import datetime as dt
import math

__all__ = ["iso", "parse_duration", "parse_moment"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """Seconds, more than 0; ValueError says what a duration looks like."""
    raw = text.strip().lower()
    number, scale = (raw[:-1], _UNITS[raw[-1]]) if raw and raw[-1] in _UNITS else (raw, 1.0)
    try:
        seconds = float(number) * scale
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"'{text}' is not a duration; use seconds or a number with s, m, h "
                         "or d, e.g. 30, 5m, 2h, 7d")
    return seconds


def parse_moment(text: str) -> dt.datetime:
    """An ISO 8601 time, aware (UTC); ValueError shows the form it takes."""
    try:
        moment = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"'{text}' is not a time; use ISO 8601, e.g. 2026-11-25T03:00 "
                         "(local time) or 2026-11-25T03:00:00Z") from None
    return (moment if moment.tzinfo else moment.astimezone()).astimezone(dt.UTC)


def iso(moment: dt.datetime) -> str:
    """`moment` as task files write times: UTC, milliseconds, a Z."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
