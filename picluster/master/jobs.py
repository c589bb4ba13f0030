"""The master's jobs, as the agent runs them while its node holds `master`: `render` at
every poll, `reach` and `ping` every `ping_interval`, each followed by the health record
(picluster.master.record), `converge` every `poll_interval`.  They share one `MasterState`,
and write through one repository guarded so that only the holder of `master` writes
(picluster.succession.as_master): a master that lost the role writes nothing, and its
jobs end quietly until the agent stops scheduling them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

from picluster import ganglia
from picluster.gitstore import ClusterRepo
from picluster.identity import NodeIdentity
from picluster.master.converge import Converge
from picluster.master.health import Health, PingReport
from picluster.master.members import Members
from picluster.master.record import HealthRecord
from picluster.master.state import MasterState
from picluster.master.views import Views
from picluster.settings import Settings
from picluster.succession import NotMaster, as_master

__all__ = ["Master"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Master:
    """The views that follow membership, the health checks, and the convergence of every
    node to its desired state."""

    def __init__(self, settings: Settings, repo: ClusterRepo, node: Callable[[], NodeIdentity],
                 daemons: ganglia.Daemons, clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self.settings = settings
        self.repo = repo.guarded(as_master(lambda: node().mac))
        self.state = MasterState(settings, clock)
        self.members = Members(settings)
        self.views = Views(settings, self.repo, node, daemons, self.state, self.members)
        self.health = Health(settings, self.repo, node, self.state, self.views, self.members)
        self.record = HealthRecord(self.repo, node, self.state)
        self.convergence = Converge(settings, self.repo, node, self.state, self.members)

    def render(self) -> None:
        """Make every view match the registry as last synced (`Views.render`)."""
        _as_master(self.views.render, None)

    def reach(self) -> PingReport:
        return _as_master(lambda: self._recorded(self.health.reach()), PingReport())

    def ping(self) -> PingReport:
        return _as_master(lambda: self._recorded(self.health.ping()), PingReport())

    def converge(self) -> dict[str, list[str]]:
        """Send each node what it lacks of its desired state (`Converge.run`)."""
        return _as_master(self.convergence.run, {})

    def _recorded(self, report: PingReport) -> PingReport:
        self.record.after(report)
        return report


def _as_master(job: Callable[[], T], otherwise: T) -> T:
    """`job()`, or `otherwise` once a write finds this node no longer master."""
    try:
        return job()
    except NotMaster as lost:
        log.warning("%s", lost)
        return otherwise
