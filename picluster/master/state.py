"""What the master's jobs share: the poll's render and the reach and ping jobs run in
threads of their own, so all they keep between runs lives here, under one lock."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from picluster import ganglia
from picluster.ganglia import GangliaConfig
from picluster.gitstore import Snapshot
from picluster.registry import ClusterVars, Member, Membership
from picluster.settings import Settings

__all__ = ["MasterState"]


class MasterState:
    """The master's memory between jobs.  Every method holds the lock for its own few
    steps only: nothing slow (git, Ansible, a file) ever runs under it."""

    def __init__(self, settings: Settings) -> None:
        self._lock = threading.Lock()
        # ("reach" or "ping", mac) -> consecutive failed pings of that kind
        self._misses: dict[tuple[str, str], int] = {}
        self._answering: set[str] | None = None  # IPs that answered the last port knock
        self._seen: tuple[Membership, ClusterVars] | None = None  # as the last render saw
        self._leaving: set[str] = set()  # MACs being pruned: gone from the views already
        self._sends = ganglia.Sends(settings)  # the Ganglia configs sent to workers
        self._said_offline = False
        self._checked: set[str] = set()  # the MACs the health checks cover

    # -- the views ---------------------------------------------------------------------

    def present(self, membership: Membership) -> Membership:
        """`membership` less the nodes being pruned."""
        with self._lock:
            leaving = set(self._leaving)
        return replace(membership, members=tuple(
            m for m in membership.members if m.mac not in leaving))

    @contextmanager
    def leaving(self, macs: set[str]) -> Iterator[None]:
        """`macs` are out of `present` memberships until the block ends."""
        with self._lock:
            self._leaving |= macs
        try:
            yield
        finally:
            with self._lock:
                self._leaving -= macs

    def saw(self, membership: Membership, cluster: ClusterVars) -> None:
        with self._lock:
            self._seen = (membership, cluster)

    def seen(self) -> tuple[Membership, ClusterVars] | None:
        """The registry as the last render saw it (None before the first)."""
        with self._lock:
            return self._seen

    def ganglia_due(self, snapshot: Snapshot, workers: Iterable[Member],
                    config: GangliaConfig) -> list[Member]:
        """The workers to send `config` to now (`ganglia.Sends.due`)."""
        with self._lock:
            return self._sends.due(snapshot, workers, config)

    # -- health ------------------------------------------------------------------------

    def knocked(self, answering: set[str]) -> None:
        with self._lock:
            self._answering = answering

    def answering(self) -> set[str] | None:
        """The IPs that answered the last port knock (None before the first)."""
        with self._lock:
            return self._answering

    def answered(self, kind: str, mac: str) -> bool:
        """Count an answer; True if the node had missed pings of this kind before."""
        with self._lock:
            return bool(self._misses.pop((kind, mac), 0))

    def missed(self, kind: str, mac: str) -> int:
        """Count a miss; returns the misses of this kind in a row."""
        with self._lock:
            misses = self._misses[kind, mac] = self._misses.get((kind, mac), 0) + 1
            return misses

    def keep_counts(self, macs: set[str]) -> None:
        """Forget the counts of nodes not in `macs` (pruned, or removed by hand): `macs`
        are the nodes checked from now on."""
        with self._lock:
            self._misses = {key: n for key, n in self._misses.items() if key[1] in macs}
            self._checked = set(macs)

    def checked(self) -> set[str]:
        """The MACs the last round checked."""
        with self._lock:
            return set(self._checked)

    def misses(self, mac: str) -> int:
        """`mac`'s misses in a row, of whichever kind it missed more."""
        with self._lock:
            return max((n for key, n in self._misses.items() if key[1] == mac), default=0)

    def pruned(self, mac: str) -> None:
        """`mac` left: should it come back, it starts afresh."""
        with self._lock:
            self._misses = {key: n for key, n in self._misses.items() if key[1] != mac}
            self._sends.forget(mac)

    def say_offline(self, offline: bool) -> bool:
        """Whether to say that this node is offline: only when it just became so."""
        with self._lock:
            say = offline and not self._said_offline
            self._said_offline = offline
            return say
