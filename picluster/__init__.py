"""picluster: a self-configuring Raspberry Pi Beowulf cluster, with git as its broker.

The public API; everything else is reachable from its module.  `Agent` (huey, APScheduler),
`catalogue` (the tasks a node runs, Ganglia's among them) and `Lab` load on first use, so a
plain `import picluster` stays light: the operator's SD-card tool loads no node code.
"""

from __future__ import annotations

from typing import Any

from picluster.gitstore import ClusterRepo, Create, GitError, Put, Remove, Snapshot
from picluster.queue import enqueue, make_task, wait_for
from picluster.registry import read_membership, register
from picluster.settings import ConfigError, Settings
from picluster.tasks import Outcome, Task
from picluster.version import __version__

__all__ = [
    "Agent",
    "ClusterRepo",
    "ConfigError",
    "Create",
    "GitError",
    "Lab",
    "Outcome",
    "Put",
    "Remove",
    "Settings",
    "Snapshot",
    "Task",
    "__version__",
    "catalogue",
    "enqueue",
    "make_task",
    "read_membership",
    "register",
    "wait_for",
]


def __getattr__(name: str) -> Any:
    if name == "Agent":
        from picluster.node import Agent

        return Agent
    if name == "catalogue":
        from picluster.node import catalogue

        return catalogue
    if name == "Lab":
        from picluster.lab import Lab

        return Lab
    raise AttributeError(f"module 'picluster' has no attribute {name!r}")
