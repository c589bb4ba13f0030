"""The cluster's desired state: what each node should have applied, how far it got, and the
master's bookkeeping of sending it.  No git and no clock of its own (times are passed in),
so a test drives it with a clock of its choosing.

A `Want` is one thing a node should hold: a playbook of its role, the cluster files, or
(a worker) Ganglia's config.  Each is a task with its arguments, and the digest the node
reports in its facts once it applied them.  `Attempts` decides when a want is sent: at
once when it is new (a new node, a changed playbook after an upgrade, a changed
variable), never while its task is on its way, and after a run that did not apply it only
once an exponential backoff has passed (capped): never at every poll.  `Settle`
debounces membership, so a storm of joins makes a few sends, not one per join.  `paced`
tells the wants whose runs are costly (a playbook) from the cheap ones: the master lets
only so many nodes run those at once (`converge_batch`).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from picluster import cluster_files, ganglia, playbook_task
from picluster.ganglia import GangliaConfig
from picluster.registry import ClusterVars, Membership

__all__ = ["GANGLIA", "HOSTS", "Attempts", "Settle", "Want", "node_wants", "paced",
           "playbook_key", "progress", "reported", "waits_for"]

HOSTS = "hosts"  # the key of the cluster files
GANGLIA = "ganglia"  # the key of a worker's Ganglia config


def playbook_key(name: str) -> str:
    return f"playbook/{name}"


@dataclass(frozen=True)
class Want:
    """One thing a node should hold: `task` with `args`; applied when the node reports
    `digest` under `key`."""

    key: str
    task: str
    args: dict[str, Any] = field(compare=False)
    digest: str


def node_wants(membership: Membership, cluster: ClusterVars,
               ganglia_config: GangliaConfig | None = None) -> dict[str, list[Want]]:
    """What each member should hold, by MAC, in the order to send it: the cluster files,
    Ganglia's config (workers, when `ganglia_config` is given: the master applies its
    own), then its role's playbooks.  Empty while no master is registered."""
    master = membership.master_member
    if master is None:
        return {}
    files = cluster_files.args_for(membership)
    common = [Want(HOSTS, cluster_files.TASK, files, cluster_files.digest(files))]
    if ganglia_config is not None:
        config = ganglia_config.for_worker()
        worker = [Want(GANGLIA, ganglia.TASK, dict(vars(config)), ganglia.digest(config))]
    else:
        worker = []
    wants = {}
    for member in membership.members:
        group = "master" if member.mac == master.mac else "nodes"
        playbooks = []
        for name in playbook_task.ROLES[group]:
            args = playbook_task.args_for(name, group, membership, cluster)
            playbooks.append(Want(playbook_key(name), playbook_task.TASK, args,
                                  playbook_task.digest(args)))
        wants[member.mac] = [*common, *(worker if group == "nodes" else []), *playbooks]
    return wants


def reported(facts: Mapping[str, object], key: str) -> str | None:
    """The digest a node's facts report for `key`."""
    if key == HOSTS:
        return cluster_files.reported(facts)
    if key == GANGLIA:
        value = facts.get("ganglia")
        return value if isinstance(value, str) else None
    return playbook_task.reported(facts, key.removeprefix("playbook/")).applied


def waits_for(want: Want) -> str | None:
    """The key of the master's want a worker's `want` waits for (it must be applied on
    the master first), if any."""
    if want.task != playbook_task.TASK:
        return None
    first = playbook_task.AFTER_MASTER.get(want.args["playbook"])
    return playbook_key(first) if first else None


def paced(want: Want) -> bool:
    """Whether `want` takes a turn of `converge_batch`: a playbook runs ansible-playbook,
    minutes of CPU that fetch packages from the mirror and sources from the git server.
    The cluster files and Ganglia's config are a few small files written: every node
    gets those at once, and so knows the cluster while it waits for its turn."""
    return want.task == playbook_task.TASK


def progress(membership: Membership, cluster: ClusterVars) -> dict[str, dict[str, Any]]:
    """How far each member got, by MAC: each role playbook applied (and whether in check
    mode), failed (the task and message) or pending (sent, or waiting for its turn), and
    its cluster files' version."""
    wants = node_wants(membership, cluster)
    found: dict[str, dict[str, Any]] = {}
    for member in membership.members:
        playbooks: dict[str, dict[str, Any]] = {}
        files: dict[str, Any] = {}
        for want in wants.get(member.mac, []):
            if want.key == HOSTS:
                version = cluster_files.reported(member.facts)
                files = {"state": "current" if version == want.digest else "pending",
                         "version": version, "want": want.digest}
                continue
            name = want.args["playbook"]
            got = playbook_task.reported(member.facts, name)
            entry: dict[str, Any] = {"state": "pending", "applied": got.applied,
                                     "want": want.digest}
            if got.applied == want.digest:
                entry.update(state="applied", check=got.check)
            elif got.failed and got.failed.get("digest") == want.digest:
                entry.update(state="failed", task=got.failed.get("task", ""),
                             message=got.failed.get("message", ""))
            playbooks[name] = entry
        found[member.mac] = {
            "playbooks": playbooks, "cluster_files": files,
            "configured": bool(playbooks) and files.get("state") == "current"
            and all(p["state"] == "applied" for p in playbooks.values())}
    return found


# -- the master's bookkeeping -------------------------------------------------------------


@dataclass
class _Sent:
    digest: str
    task_id: str
    at: float  # when it was sent
    attempts: int  # sends of this digest, in a row
    not_before: float  # no new send before this, once the last one ran


class Attempts:
    """What was sent to which node for which want, and when it may go again.  Not locked:
    its owner (MasterState) serializes the calls."""

    def __init__(self, first_retry: float, longest: float = 3600.0) -> None:
        self.first_retry = first_retry
        self.longest = longest
        self._sent: dict[tuple[str, str], _Sent] = {}  # (mac, key) -> the last send

    def retry_after(self, attempts: int) -> float:
        """How long after its `attempts`-th run a want that did not apply waits: doubling
        from `first_retry`, at most `longest`."""
        return min(self.longest, self.first_retry * 2 ** max(0, attempts - 1))

    def due(self, mac: str, want: Want, reported: str | None, pending: set[str],
            done: set[str], now: float) -> bool:
        """Whether to send `want` to `mac` now.  `pending` and `done` are the ids of the
        tasks in the node's queue and of those with an outcome, as the master last saw."""
        key = (mac, want.key)
        if reported == want.digest:
            self._sent.pop(key, None)
            return False
        sent = self._sent.get(key)
        if sent is None:
            return True
        if self.on_its_way(mac, want, pending, done, now):  # the wait starts once it ran
            sent.not_before = now + self.retry_after(sent.attempts)
            return False
        return sent.digest != want.digest or now >= sent.not_before

    def on_its_way(self, mac: str, want: Want, pending: set[str], done: set[str],
                   now: float) -> bool:
        """Whether the last task sent to `mac` for `want` (whatever its digest) has no
        outcome yet: pending, or sent after the snapshot the master looks at."""
        sent = self._sent.get((mac, want.key))
        return sent is not None and (sent.task_id in pending or (
            sent.task_id not in done and now - sent.at < self.first_retry))

    def attempts(self, mac: str, want: Want) -> int:
        """How many times in a row `want`'s digest went to `mac` (0: never)."""
        sent = self._sent.get((mac, want.key))
        return sent.attempts if sent is not None and sent.digest == want.digest else 0

    def sent(self, mac: str, want: Want, task_id: str, now: float) -> int:
        """Note that task `task_id` took `want` to `mac`; returns how many times in a row
        this digest went there."""
        last = self._sent.get((mac, want.key))
        attempts = last.attempts + 1 if last and last.digest == want.digest else 1
        self._sent[mac, want.key] = _Sent(want.digest, task_id, now, attempts,
                                          now + self.retry_after(attempts))
        return attempts

    def forget(self, mac: str) -> None:
        """`mac` left the cluster: should it come back, it starts afresh."""
        self._sent = {key: sent for key, sent in self._sent.items() if key[0] != mac}


T = TypeVar("T")


class Settle(Generic[T]):
    """A value that counts once it held still: a new one replaces the settled one after
    `quiet` seconds without change, or `longest` seconds after it first differed (a
    steady trickle of changes still gets through).  Not locked, like `Attempts`."""

    def __init__(self, quiet: float, longest: float) -> None:
        self.quiet, self.longest = quiet, longest
        self._settled: tuple[Hashable, T] | None = None
        self._candidate: tuple[Hashable, T] | None = None
        self._changed = 0.0  # when the candidate last changed
        self._first: float | None = None  # when a candidate first differed

    def offer(self, key: Hashable, value: T, now: float) -> T | None:
        """Offer `value` (identified by `key`) at time `now`; returns the settled value
        (None before the first one settled)."""
        if self._settled is not None and self._settled[0] == key:
            self._candidate, self._first = None, None
            return self._settled[1]
        if self._candidate is None or self._candidate[0] != key:
            self._candidate, self._changed = (key, value), now
            if self._first is None:
                self._first = now
        if now - self._changed >= self.quiet or now - self._first >= self.longest:
            self._settled, self._candidate, self._first = self._candidate, None, None
        return self._settled[1] if self._settled is not None else None
