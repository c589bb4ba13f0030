"""The facts a node reports in local-vars/nodes/<mac>.yml: what it is, the tasks it runs,
and what its services report they run."""

from __future__ import annotations

from picluster import ganglia, identity
from picluster.node.tasks import installed
from picluster.plugins import Plugins
from picluster.settings import Settings

__all__ = ["reported_facts"]


def reported_facts(settings: Settings, tasks: Plugins | None = None) -> dict[str, object]:
    """This node's facts, read now.  `ganglia` is the digest of the config it applied
    (None until the master sent one): the master resends a config that differs.  `tasks`
    names the tasks it runs, with their versions (`enqueue` refuses others before they
    leave), and `task_errors` the installed packages whose tasks failed to load."""
    tasks = tasks or installed()
    facts = {**identity.facts(settings), "ganglia": ganglia.applied_digest(settings),
             "tasks": tasks.catalogue.versions()}
    if tasks.errors:
        facts["task_errors"] = tasks.errors
    return facts
