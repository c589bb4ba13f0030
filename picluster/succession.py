"""Who holds `master` next, and the fence around every write only the master may make.

Pis have no real-time clock, so no node ever compares a time another node wrote.  Every
agent moves a beacon instead, `refs/picluster/alive/<mac>`, through a few fixed values
(`Beacon`): a ref outside main, so a sign of life is never a commit.  Every other node
reads all beacons with one ls-remote (`read_beacons`) and counts, on its own monotonic
clock, the checks at which a beacon had not moved (`Watch`).

Once the master missed `prune_after` checks, its successor is the registered node with
the lowest MAC whose beacon still moves, as this node sees it (`decide`).  If that is this
node, it replaces `master` compare-and-set against the value it saw (`takeover_change`),
and in the same commit removes the `ip/` files of the nodes it judged dead (the master,
and any node ranked before it).  Two nodes that judge differently race for that one
compare-and-set: one wins, the other finds `master` moved and writes nothing.

Every write only a master may make passes `as_master`: on a tip where `master` names
another node it raises `NotMaster`, so a master that was cut off and replaced writes
nothing as master when it comes back.
"""

from __future__ import annotations

import itertools
import random
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from picluster import layout
from picluster.gitstore import ClusterRepo, Guard, Op, Put, Snapshot
from picluster.registry import Membership, read_master, unregister_ops

__all__ = ["BEACONS", "Beacon", "NotMaster", "Takeover", "Watch", "as_master", "decide",
           "read_beacons", "successors", "takeover_change"]

BEACONS = "refs/picluster/alive"
# A beacon cycles through this many values, each always the same commit (no new objects
# after the first round).  A node beats at least twice per check; only a whole cycle of
# beats between two checks could look like no move at all.
_VALUES = 16


class NotMaster(Exception):
    """This node does not hold `master` on the tip a write would land on."""


def beacon_ref(mac: str) -> str:
    return f"{BEACONS}/{layout.normalize_mac(mac)}"


class Beacon:
    """This node's sign of life.  Not locked: its one caller, the `beat` job, never runs
    twice at once."""

    def __init__(self, repo: ClusterRepo) -> None:
        self._repo = repo
        self._values = itertools.count(random.randrange(_VALUES))

    def beat(self, mac: str) -> None:
        """Move the beacon to its next value (GitError: git did not answer)."""
        value = next(self._values) % _VALUES
        self._repo.publish(beacon_ref(mac), f"picluster: {mac} is alive ({value})\n")


def read_beacons(repo: ClusterRepo) -> dict[str, str]:
    """Every node's beacon, MAC -> an opaque value that moves while the node lives
    (GitError: git did not answer)."""
    beacons = {}
    for ref, sha in repo.refs(f"{BEACONS}/*").items():
        try:
            beacons[layout.normalize_mac(ref.rpartition("/")[2])] = sha
        except ValueError:
            continue  # not a node's: nobody's business here
    return beacons


@dataclass(frozen=True)
class _Seen:
    value: str | None  # None: no beacon at all
    missed: int  # checks in a row at which it had not moved
    counted: float  # this node's monotonic clock at the last check that counted


class Watch:
    """Beacons as this node saw them move, counted on its own clock.  A check counts only
    half an interval or more after the last one that did, so checks that run back to back
    (a job catching up) never count for more than one; after a gap of more than two
    intervals without checks (this node was not watching), counting starts afresh."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._interval = interval
        self._clock = clock
        self._seen: dict[str, _Seen] = {}
        self._last: float | None = None  # the clock at the last check

    def observe(self, beacons: Mapping[str, str], macs: Iterable[str]) -> None:
        """One check of the nodes `macs`; nodes not among them are forgotten.  A node
        first seen now starts from no miss, beacon or not."""
        now = self._clock()
        if self._last is not None and now - self._last > 2 * self._interval:
            self._seen.clear()
        self._last = now
        seen = {}
        for mac in macs:
            value, last = beacons.get(mac), self._seen.get(mac)
            if last is None or last.value != value:
                seen[mac] = _Seen(value, 0, now)
            elif now - last.counted >= self._interval / 2:
                seen[mac] = _Seen(value, last.missed + 1, now)
            else:
                seen[mac] = last
        self._seen = seen

    def missed(self, mac: str) -> int:
        """The checks in a row at which `mac`'s beacon had not moved (0: unknown)."""
        seen = self._seen.get(mac)
        return seen.missed if seen else 0

    def forget(self) -> None:
        """Count afresh from the next check (a new master, a new role)."""
        self._seen.clear()


def successors(membership: Membership) -> list[str]:
    """The order of succession: every registered node but the master, lowest MAC first."""
    return sorted(m.mac for m in membership.members if m.mac != membership.master)


@dataclass(frozen=True)
class Takeover:
    """What a node that takes `master` over saw: who held it, and the registered nodes it
    judged dead (the master and every node ranked before it), MAC -> IP."""

    master: str
    dead: dict[str, str]


def decide(membership: Membership, me: str, watch: Watch, prune_after: int) -> Takeover | None:
    """Whether `me` takes `master` over now: the master missed `prune_after` checks, so
    did every node before `me` in the order of succession, and `me` is registered.  A
    node that does not see its own beacon move (its beats fail, or the server refuses
    them) judges nobody: still beacons say nothing then."""
    master = membership.master
    if (master is None or master == me or membership.get(me) is None
            or watch.missed(me) or watch.missed(master) < prune_after):
        return None
    ahead = [mac for mac in successors(membership) if mac < me]
    if any(watch.missed(mac) < prune_after for mac in ahead):
        return None
    dead = {mac: member.ip for mac in (master, *ahead)
            if (member := membership.get(mac)) is not None}
    return Takeover(master, dead)


def takeover_change(takeover: Takeover, me: str) -> Callable[[Snapshot], list[Op]]:
    """The compare-and-set change that makes `me` master: nothing unless `master` still
    names the node `takeover` saw and `me` is still registered on the tip it lands on."""
    def change(tip: Snapshot) -> list[Op]:
        holder, _ = read_master(tip)
        if holder != takeover.master or tip.read(layout.ip_path(me)) is None:
            return []
        ops: list[Op] = [Put(layout.MASTER, f"{me}\n")]
        for mac, ip in takeover.dead.items():
            ops += unregister_ops(mac, ip)
        return ops

    return change


def as_master(me: Callable[[], str]) -> Guard:
    """A guard (`ClusterRepo.guarded`) that lets only the holder of `master` write."""
    def guard(tip: Snapshot) -> None:
        holder, _ = read_master(tip)
        mac = me()
        if holder != mac:
            raise NotMaster(f"this node ({mac}) no longer holds master ({holder or 'nobody'} "
                            "does): it writes nothing as master")

    return guard
