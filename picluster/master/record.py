"""The master's health record in the repository (picluster.healthfile), kept cheaply: a
commit when the master, the membership or a node's state (answering, missing) changes,
else one refresh an hour at most; never one per check."""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable

from picluster import layout
from picluster.gitstore import ClusterRepo, GitError, Put
from picluster.healthfile import HealthFile, NodeHealth, read_health
from picluster.identity import NodeIdentity
from picluster.master.health import PingReport
from picluster.master.state import MasterState

__all__ = ["REFRESH", "HealthRecord"]

log = logging.getLogger(__name__)

REFRESH = 3600.0  # seconds between two writes when nothing changed


def _iso(moment: dt.datetime) -> str:
    return moment.isoformat(timespec="seconds").replace("+00:00", "Z")


class HealthRecord:
    """Writes local-vars/health.yml after the master's check rounds, through the master's
    guarded repository (a deposed master writes nothing)."""

    def __init__(self, repo: ClusterRepo, node: Callable[[], NodeIdentity],
                 state: MasterState, *, clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self._repo = repo
        self._node = node
        self._state = state
        self._clock = clock  # when to refresh: this master's own monotonic clock
        self._wall = wall  # what the file says: this master's clock, labelled so
        self._lock = threading.Lock()  # the reach and ping jobs both report
        self._last_seen: dict[str, str] = {}  # mac -> when it last answered a whole round
        self._written: float | None = None  # self._clock() at the last write (or check)

    def after(self, report: PingReport) -> None:
        """Note who answered a round of checks; write the file when it is due."""
        with self._lock:
            seen = self._state.seen()
            if seen is None:
                return
            membership = seen[0]
            tip = self._repo.snapshot()
            written, _ = read_health(tip)
            now = _iso(self._wall())
            me = self._node().mac
            checked = self._state.checked()
            nodes = {}
            for member in membership.members:
                missed = self._state.misses(member.mac)
                if member.mac == me or (member.ip in report.answered and not missed):
                    self._last_seen[member.mac] = now
                last = self._last_seen.get(member.mac) or (
                    written.nodes[member.mac].last_seen
                    if written is not None and member.mac in written.nodes else None)
                state = ("answering" if member.mac == me or (member.mac in checked and not missed)
                         else "missing" if missed else "unchecked")
                nodes[member.mac] = NodeHealth(state, missed, last)
            self._last_seen = {mac: t for mac, t in self._last_seen.items() if mac in nodes}
            record = HealthFile(me, now, nodes)
            changed = written is None or written.states() != record.states()
            if not changed:
                if self._written is None:  # a master that starts finds the file current
                    self._written = self._clock()
                if self._clock() - self._written < REFRESH:
                    return
            try:
                result = self._repo.transact(lambda _: [Put(layout.HEALTH, record.text())],
                                             f"health: {_summary(record)}")
            except GitError as error:
                log.warning("could not write the health record yet: %s", error)
                return
            self._written = self._clock()
            if result.commit:
                log.info("health record: %s", _summary(record))


def _summary(record: HealthFile) -> str:
    counts: dict[str, int] = {}
    for health in record.nodes.values():
        counts[health.state] = counts.get(health.state, 0) + 1
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no nodes"
