"""What the master's jobs share: the poll's render and the reach, ping and converge jobs
run in threads of their own, so all they keep between runs lives here, under one lock."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace

from picluster.master.desired import Attempts, Settle, Want
from picluster.registry import ClusterVars, Membership
from picluster.settings import Settings

__all__ = ["MasterState"]


class MasterState:
    """The master's memory between jobs.  Every method holds the lock for its own few
    steps only: nothing slow (git, Ansible, a file) ever runs under it."""

    def __init__(self, settings: Settings,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._lock = threading.Lock()
        self._clock = clock
        # ("reach" or "ping", mac) -> consecutive failed pings of that kind
        self._misses: dict[tuple[str, str], int] = {}
        self._answering: set[str] | None = None  # IPs that answered the last port knock
        self._seen: tuple[Membership, ClusterVars] | None = None  # as the last render saw
        self._leaving: set[str] = set()  # MACs being pruned: gone from the views already
        # What was sent to each node to converge it: a run that did not apply goes again
        # after 10 polls, then 20, 40, ... an hour at most.
        self._attempts = Attempts(10 * settings.poll_interval)
        # The membership convergence acts on: still for 2 polls, or 10 after a change.
        self._settle: Settle[Membership] = Settle(2 * settings.poll_interval,
                                                  10 * settings.poll_interval)
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

    # -- convergence -------------------------------------------------------------------

    def settled(self, membership: Membership) -> Membership | None:
        """The membership to converge: `membership` once it held still (`Settle`); the
        one before meanwhile; None before the first."""
        key = (membership.master, tuple(sorted(
            (m.mac, m.ip, m.hostname, m.cores, m.host_key) for m in membership.members)))
        with self._lock:
            return self._settle.offer(key, membership, self._clock())

    def due(self, mac: str, want: Want, reported: str | None, pending: set[str],
            done: set[str]) -> bool:
        """Whether to send `want` to `mac` now (`Attempts.due`)."""
        with self._lock:
            return self._attempts.due(mac, want, reported, pending, done, self._clock())

    def on_its_way(self, mac: str, want: Want, pending: set[str], done: set[str]) -> bool:
        """Whether a task for `want` is on its way to `mac` (`Attempts.on_its_way`)."""
        with self._lock:
            return self._attempts.on_its_way(mac, want, pending, done, self._clock())

    def attempts(self, mac: str, want: Want) -> int:
        """How many times in a row `want`'s digest went to `mac` (0: never)."""
        with self._lock:
            return self._attempts.attempts(mac, want)

    def sent(self, mac: str, want: Want, task_id: str) -> int:
        """Note a send; returns how many times in a row this digest went to `mac`."""
        with self._lock:
            return self._attempts.sent(mac, want, task_id, self._clock())

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
            self._attempts.forget(mac)

    def say_offline(self, offline: bool) -> bool:
        """Whether to say that this node is offline: only when it just became so."""
        with self._lock:
            say = offline and not self._said_offline
            self._said_offline = offline
            return say
