"""The node side: the agent every node runs (`picluster agent`, picluster.service).

Owns the agent's lifecycle, its APScheduler jobs and what it does when woken (a fetch
brought forward), the intake of this node's tasks from git into the local huey queue
(whose consumer starts them at once), the outbox that pushes their outcomes, the catalogue
of tasks a node runs, and the facts it reports.  The master's jobs live in `picluster.master`;
the agent only schedules them while it holds `master`.  `Agent` (huey, APScheduler) loads
on first use, so the facts and the catalogue stay light to import.
"""

from typing import Any

from picluster.node.facts import reported_facts
from picluster.node.tasks import catalogue, installed

__all__ = ["Agent", "catalogue", "installed", "reported_facts"]


def __getattr__(name: str) -> Any:
    if name == "Agent":
        from picluster.node.agent import Agent

        return Agent
    raise AttributeError(f"module 'picluster.node' has no attribute {name!r}")
