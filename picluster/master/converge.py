"""The master's `converge` job: every node configures itself, through tasks it consumes.

At each run the master compares what each node should hold (`desired.node_wants`: its
role's playbooks, the cluster files, a worker's Ganglia config) with what its facts
report, and enqueues a signed task for each difference, all in one commit: a new node, a
changed playbook after an upgrade, a changed variable.  `MasterState` decides when (never
while a task is on its way; after a run that did not apply, with a growing backoff) and
debounces membership.  Playbooks are paced: at most `converge_batch` nodes have some on
their way at once, so a cluster that boots together does not run every node's
ansible-playbook at once against one package mirror and one git server.  The master
signs as it signs everything it sends: with `signing_key` as `signer`, else with the
cluster key as `cluster`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from functools import cached_property

from picluster import cluster_files, ganglia, layout, playbook_task
from picluster.gitstore import ClusterRepo, GitError, Snapshot
from picluster.identity import NodeIdentity
from picluster.master.desired import Want, node_wants, paced, reported, waits_for
from picluster.master.members import Members
from picluster.master.state import MasterState
from picluster.queue import enqueue, make_task
from picluster.registry import Member, read_cluster_vars
from picluster.settings import Settings
from picluster.tasks import Catalogue

__all__ = ["Converge"]

log = logging.getLogger(__name__)

# The tasks the master sends to converge nodes, to check their arguments before signing.
_CATALOGUE = Catalogue(ganglia.catalogue, playbook_task.catalogue, cluster_files.catalogue)


class _Queue:
    """A node's queue as a snapshot shows it: the ids pending, and those with an outcome."""

    def __init__(self, snapshot: Snapshot, mac: str) -> None:
        self._snapshot, self._folder = snapshot, layout.queue_dir(mac)

    def _ids(self, folder: str) -> set[str]:
        return {name.removesuffix(".json")
                for name in self._snapshot.listdir(folder, files=True)}

    @cached_property
    def pending(self) -> set[str]:
        return self._ids(self._folder)

    @cached_property
    def done(self) -> set[str]:
        return self._ids(f"{self._folder}/done") | self._ids(f"{self._folder}/rejected")


class Converge:
    """Sends each node the tasks that bring it to the desired state."""

    def __init__(self, settings: Settings, repo: ClusterRepo,
                 node: Callable[[], NodeIdentity], state: MasterState,
                 members: Members) -> None:
        self._settings = settings
        self._repo = repo
        self._node = node
        self._state = state
        self._members = members
        self._said_unsigned = threading.Event()
        self._said_waiting: tuple[int, int] | None = None  # (configuring, waiting) last said

    def run(self) -> dict[str, list[str]]:
        """One comparison of the registry as last synced; the keys sent, by MAC."""
        snapshot = self._repo.snapshot()
        current = self._state.present(self._members.read(snapshot))
        master = current.master_member
        if master is None or master.mac != self._node().mac:
            return {}
        settled = self._state.settled(current)
        if settled is None or settled.master_member is None:
            return {}
        cluster = read_cluster_vars(snapshot)
        wants = node_wants(settled, cluster,
                           ganglia.cluster_config(self._settings, settled, cluster))
        on_master = {w.key: w for w in wants.get(master.mac, [])}
        due: list[tuple[Member, Want]] = []
        busy: set[str] = set()  # the MACs with a playbook on its way: each holds a turn
        # Only members that are still here and were when membership settled.
        for member in current.members:
            queue = _Queue(snapshot, member.mac)
            for want in wants.get(member.mac, []):
                got = reported(member.facts, want.key)
                applied = got == want.digest
                # The queue is read only for what is not applied.
                seen = (set(), set()) if applied else (queue.pending, queue.done)
                if not applied and paced(want) and \
                        self._state.on_its_way(member.mac, want, *seen):
                    busy.add(member.mac)
                first = on_master.get(waits_for(want) or "") \
                    if member.mac != master.mac else None
                if first is not None and reported(master.facts, first.key) != first.digest:
                    continue  # the master applies its part first
                if self._state.due(member.mac, want, got, *seen):
                    due.append((member, want))
        return self._send(self._paced(due, busy, master.mac))

    def _paced(self, due: list[tuple[Member, Want]], busy: set[str],
               master: str) -> list[tuple[Member, Want]]:
        """`due` less the playbooks of the nodes that wait for their turn: nodes in `busy`
        keep theirs (a worker's nfs-client, once the master exported, goes at once), and
        the first in line take the turns left of `converge_batch`.  A node whose run did
        not apply holds no turn while it backs off: its task has an outcome."""
        batch = self._settings.converge_batch
        waiting: dict[str, tuple[Member, list[Want]]] = {}
        for member, want in due:
            if paced(want) and member.mac not in busy:
                waiting.setdefault(member.mac, (member, []))[1].append(want)
        line = sorted(waiting.values(), key=lambda node: self._turn(*node, master))
        free = max(0, batch - len(busy)) if batch else len(line)
        turns = busy | {member.mac for member, _ in line[:free]}
        self._say_waiting(len(turns), len(line[free:]), batch)
        return [(member, want) for member, want in due
                if not paced(want) or member.mac in turns]

    def _turn(self, member: Member, wants: list[Want],
              master: str) -> tuple[bool, bool, bool, str]:
        """A waiting node's place in line: the master first (the workers' mounts wait for
        its exports), first tries before retries of a run that did not apply, a node with
        no playbook applied before one being updated, then by MAC: a stable order, so a
        node that waits moves up as the others get their turn."""
        retry = any(self._state.attempts(member.mac, want) for want in wants)
        started = any(reported(member.facts, want.key) is not None for want in wants)
        return member.mac != master, retry, started, member.mac

    def _say_waiting(self, configuring: int, waiting: int, batch: int) -> None:
        """Say, when it changes, how many nodes wait for a turn to run their playbooks."""
        said = (configuring, waiting) if waiting else None
        if said is not None and said != self._said_waiting:
            log.info("converge: %d nodes configuring, %d waiting (converge_batch %d)",
                     configuring, waiting, batch)
        self._said_waiting = said

    def _send(self, due: list[tuple[Member, Want]]) -> dict[str, list[str]]:
        if not due:
            return {}
        settings = self._settings
        key = settings.signing_key or settings.ssh_key
        if key is None:
            if not self._said_unsigned.is_set():
                log.warning("cannot configure %d nodes: no signing_key or ssh_key to sign "
                            "tasks with", len({member.mac for member, _ in due}))
                self._said_unsigned.set()
            return {}
        signer = settings.signer if settings.signing_key else "cluster"
        try:
            tasks = enqueue(self._repo, [make_task(member.mac, want.task, want.args, signer,
                                                   catalogue=_CATALOGUE)
                                         for member, want in due], key)
        except GitError as error:  # nothing was noted as sent: the next run tries again
            log.warning("converge: cannot send %d tasks yet: %s", len(due), error)
            return {}
        sent: dict[str, list[str]] = {}
        again = []
        for (member, want), task in zip(due, tasks, strict=True):
            sent.setdefault(member.mac, []).append(want.key)
            attempts = self._state.sent(member.mac, want, task.id)
            if attempts > 1:
                again.append(f"{want.key} to {member.hostname} (attempt {attempts})")
        log.info("converge: sent %s", "; ".join(
            f"{', '.join(keys)} to {mac}" for mac, keys in sent.items()))
        if again:
            log.warning("converge: sent again what did not apply: %s", ", ".join(again))
        return sent

