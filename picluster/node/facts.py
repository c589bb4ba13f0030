"""The facts a node reports in local-vars/nodes/<mac>.yml: what it is, the tasks it runs,
and what its services report they run."""

from __future__ import annotations

from picluster import cluster_files, ganglia, identity, playbook_task
from picluster.node.tasks import installed
from picluster.plugins import Plugins
from picluster.settings import Settings

__all__ = ["reported_facts"]


def reported_facts(settings: Settings, tasks: Plugins | None = None) -> dict[str, object]:
    """This node's facts, read now.  What it applied, for the master to compare with what
    it should hold: `ganglia`, the digest of its Ganglia config; `playbooks`, per playbook
    the digest it applied (in check mode or not) and a later failure; `cluster_files`, the
    version of its hostfile, hosts and known hosts (None or empty until the first).  `tasks`
    names the tasks it runs, with their versions (`enqueue` refuses others before they
    leave), and `task_errors` the installed packages whose tasks failed to load."""
    tasks = tasks or installed()
    facts = {**identity.facts(settings), "ganglia": ganglia.applied_digest(settings),
             "playbooks": playbook_task.applied(settings),
             "cluster_files": cluster_files.applied_digest(settings),
             "tasks": tasks.catalogue.versions()}
    if tasks.errors:
        facts["task_errors"] = tasks.errors
    return facts
