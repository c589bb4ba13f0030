"""Ganglia, in one place: its config (ports, timings, digest), the text of gmond.conf and
gmetad.conf, applying a config on a node (the `ganglia` task) and the daemons the agent
supervises.  The master sends workers their config as one case of its convergence
(picluster.master): a worker whose reported digest differs gets a `ganglia` task.

Builds on the registry; nothing below it knows Ganglia exists, and it never schedules
anything itself.
"""

from picluster.ganglia.config import (
    PORTS,
    SCHEMA,
    GangliaConfig,
    cluster_config,
    config_problems,
    digest,
)
from picluster.ganglia.daemons import Daemons
from picluster.ganglia.node import TASK, applied_digest, apply, catalogue, task
from picluster.ganglia.text import gmetad_conf, gmond_conf

__all__ = [
    "PORTS",
    "SCHEMA",
    "TASK",
    "Daemons",
    "GangliaConfig",
    "applied_digest",
    "apply",
    "catalogue",
    "cluster_config",
    "config_problems",
    "digest",
    "gmetad_conf",
    "gmond_conf",
    "task",
]
