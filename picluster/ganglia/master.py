"""Ganglia from the master's side: which workers need the config their gmond should run,
and sending it to them as signed `ganglia` tasks, without flooding a slow node."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from picluster.ganglia.config import GangliaConfig, digest
from picluster.ganglia.node import TASK, catalogue
from picluster.gitstore import ClusterRepo, Snapshot
from picluster.queue import enqueue, make_task, pending_tasks
from picluster.registry import Member
from picluster.settings import Settings

__all__ = ["Sends", "send"]

log = logging.getLogger(__name__)


class Sends:
    """The config last sent to each worker, and when.  Not locked: its owner serializes
    the calls."""

    def __init__(self, settings: Settings) -> None:
        # A config that got lost (a task rejected, a node that was away) goes again after
        # this long; one still on its way never does.
        self._resend_after = 10 * settings.poll_interval
        self._sent: dict[str, tuple[str, float]] = {}  # mac -> (digest, time.monotonic())

    def due(self, snapshot: Snapshot, workers: Iterable[Member],
            config: GangliaConfig) -> list[Member]:
        """The workers to send `config` to now, noted as sent: those whose reported config
        is not the one their gmond should run, unless it is already on its way."""
        want = digest(config.for_worker())
        due = []
        for member in workers:
            if member.facts.get("ganglia") == want:
                self._sent.pop(member.mac, None)
                continue
            sent, when = self._sent.get(member.mac, ("", 0.0))
            if sent == want and (pending_tasks(snapshot, member.mac)
                                 or time.monotonic() - when < self._resend_after):
                continue
            due.append(member)
            self._sent[member.mac] = (want, time.monotonic())
        return due

    def forget(self, mac: str) -> None:
        """`mac` left the cluster: should it come back, it gets its config at once."""
        self._sent.pop(mac, None)


def send(repo: ClusterRepo, workers: Sequence[Member], config: GangliaConfig,
         key: Path | None, signer: str) -> None:
    """Enqueue a `ganglia` task with the worker's part of `config` for each of `workers`,
    signed with `key` as `signer`, in one commit."""
    if not workers:
        return
    if key is None:
        log.warning("cannot configure Ganglia on %d nodes: no signing_key or ssh_key to sign "
                    "tasks with", len(workers))
        return
    args = vars(config.for_worker())
    tasks = enqueue(repo, [make_task(m.mac, TASK, dict(args), signer, catalogue=catalogue)
                           for m in workers], key)
    log.info("sent the ganglia config to %s", ", ".join(t.node for t in tasks))
