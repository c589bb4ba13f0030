"""The master's jobs, as the agent runs them while its node holds `master`: `render` at
every poll, `reach` and `ping` every `ping_interval`.  They share one `MasterState`."""

from __future__ import annotations

from collections.abc import Callable

from picluster import ganglia
from picluster.gitstore import ClusterRepo
from picluster.identity import NodeIdentity
from picluster.master.health import Health, PingReport
from picluster.master.members import Members
from picluster.master.state import MasterState
from picluster.master.views import Views
from picluster.settings import Settings

__all__ = ["Master"]


class Master:
    """The views (and Ganglia configs) that follow membership, and the health checks."""

    def __init__(self, settings: Settings, repo: ClusterRepo, node: Callable[[], NodeIdentity],
                 daemons: ganglia.Daemons) -> None:
        self.settings = settings
        self.repo = repo
        state = MasterState(settings)
        members = Members(settings)
        self.views = Views(settings, repo, node, daemons, state, members)
        self.health = Health(settings, repo, node, state, self.views, members)

    def render(self) -> None:
        """Make every view match the registry as last synced (`Views.render`)."""
        self.views.render()

    def reach(self) -> PingReport:
        return self.health.reach()

    def ping(self) -> PingReport:
        return self.health.ping()
