"""The catalogue a node runs: the built-ins, `register`, `run`, Ganglia's `ganglia`, the
tasks through which the master configures it (`playbook` and `hosts`), and (`installed`)
the tasks installed packages add."""

from __future__ import annotations

import functools
from typing import Any

from picluster import cluster_files, ganglia, playbook_task, plugins, tasks
from picluster.identity import identify
from picluster.node import command
from picluster.registry import registration_ops
from picluster.schema import Schema
from picluster.tasks import Catalogue, TaskContext

__all__ = ["catalogue", "installed"]

catalogue = Catalogue(tasks.catalogue, ganglia.catalogue, command.catalogue,
                      playbook_task.catalogue, cluster_files.catalogue)


@catalogue.task("register", Schema())
def register(args: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Re-register now (new IP, fresh facts, or after being pruned)."""
    node = identify(context.settings)
    context.include(registration_ops(node, context.facts(), key=context.settings.ssh_key))
    return {"mac": node.mac, "ip": node.ip}


@functools.cache
def installed() -> plugins.Plugins:
    """`catalogue` and the tasks of the installed packages (`picluster.plugins`), loaded
    once per process."""
    return plugins.load(catalogue)
