"""local-vars/health.yml: what the master last saw of every node, for `status` anywhere.

The master writes it (compare-and-set, as master) when a node starts or stops answering or
the membership changes, and otherwise at most once an hour: a check is never a commit.
Its times are the master's clock, and a Pi's clock is not to be trusted against another
machine's: a reader compares them with the file's own `written_at`, never with its clock.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import yaml

from picluster import layout
from picluster.gitstore import Snapshot

__all__ = ["STATES", "HealthFile", "NodeHealth", "read_health", "status_fields"]

# answering: every check of the last round answered; missing: it missed the last ones;
# unchecked: the master does not check it (it reported no ssh host key).
STATES = ("answering", "missing", "unchecked")
_MAX_BYTES = 1 << 20

_HEADER = """\
# What the master last saw of every node; picluster rewrites it when a node starts or stops
# answering or the membership changes, else hourly.  Times are the master's clock (a Pi
# has no real-time clock): compare them with written_at, not with your own clock.
"""


@dataclass(frozen=True)
class NodeHealth:
    state: str  # one of STATES
    missed: int  # checks missed in a row when the file was written
    last_seen: str | None  # the master's clock; None: not since this master started


@dataclass(frozen=True)
class HealthFile:
    master: str  # who wrote it: the master then
    written_at: str  # the master's clock, ISO 8601
    nodes: dict[str, NodeHealth]  # by MAC

    def states(self) -> tuple[str, tuple[tuple[str, str], ...]]:
        """What a new commit is for: the master, and who is in and answering."""
        return self.master, tuple(sorted((mac, h.state) for mac, h in self.nodes.items()))

    def text(self) -> str:
        data = {"master": self.master, "written_at": self.written_at,
                "nodes": {mac: {"state": h.state, "missed": h.missed, "last_seen": h.last_seen}
                          for mac, h in sorted(self.nodes.items())}}
        return _HEADER + yaml.safe_dump(data, sort_keys=False, default_flow_style=False)

    def seen_before_written(self, mac: str) -> float | None:
        """Seconds between `mac`'s last sighting and the writing: both the master's clock."""
        health = self.nodes.get(mac)
        if health is None or health.last_seen is None:
            return None
        return round((_time(self.written_at) - _time(health.last_seen)).total_seconds(), 1)


def status_fields(record: HealthFile | None, mac: str) -> dict[str, Any]:
    """`mac`'s health in `picluster status --json` (None: not recorded)."""
    health = record.nodes.get(mac) if record else None
    if record is None or health is None:
        return {"state": None, "missed": None, "last_seen_master_clock": None,
                "seen_before_written_s": None}
    return {"state": health.state, "missed": health.missed,
            "last_seen_master_clock": health.last_seen,
            "seen_before_written_s": record.seen_before_written(mac)}


def _time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def read_health(snapshot: Snapshot) -> tuple[HealthFile | None, str | None]:
    """(the file, None), (None, None) when there is none yet, or (None, a problem)."""
    text = snapshot.read(layout.HEALTH)
    if text is None:
        return None, None
    fix = "the master rewrites it at its next change, or delete it"
    if len(text) > _MAX_BYTES:
        return None, f"{layout.HEALTH}: larger than {_MAX_BYTES} bytes; {fix}"
    try:
        data = yaml.safe_load(text)
        master = layout.normalize_mac(str(data["master"]))
        written_at = str(data["written_at"])
        _time(written_at)
        nodes = {}
        for mac, fields in (data.get("nodes") or {}).items():
            state, missed, seen = fields["state"], fields["missed"], fields["last_seen"]
            if state not in STATES or not isinstance(missed, int) or missed < 0:
                raise ValueError(f"node {mac}: state or missed")
            if seen is not None:
                _time(str(seen))
            nodes[layout.normalize_mac(str(mac))] = NodeHealth(
                state, missed, None if seen is None else str(seen))
    except (yaml.YAMLError, TypeError, KeyError, ValueError, AttributeError) as error:
        return None, f"{layout.HEALTH}: not a health record ({type(error).__name__}); {fix}"
    return HealthFile(master, written_at, nodes), None
