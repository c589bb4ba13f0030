"""Ganglia on a node: write the configs for the `GangliaConfig` it runs, remember which
one it applied (the fact it reports), and the `ganglia` task (in `catalogue`, its arguments
checked by `SCHEMA`) through which a worker gets its config from the master.  `Daemons`
then (re)starts gmond and gmetad with them."""

from __future__ import annotations

import json
import socket
from dataclasses import asdict
from pathlib import Path
from typing import Any

from picluster.files import install_file
from picluster.ganglia.config import SCHEMA, GangliaConfig, digest
from picluster.ganglia.text import gmetad_conf, gmond_conf
from picluster.identity import identify
from picluster.registry import registration_ops
from picluster.settings import Settings
from picluster.tasks import Catalogue, TaskContext

__all__ = ["TASK", "applied_digest", "apply", "catalogue", "config_paths", "task"]

TASK = "ganglia"  # the task name the master sends configs under
catalogue = Catalogue()  # the tasks Ganglia adds to a node's catalogue: `ganglia`


def config_paths(settings: Settings) -> tuple[Path, Path]:
    """Where this node's gmond.conf and gmetad.conf go."""
    return settings.rendered_dir / "gmond.conf", settings.rendered_dir / "gmetad.conf"


def apply(settings: Settings, config: GangliaConfig, *, own_ip: str, hostname: str,
          is_master: bool) -> bool:
    """Write this node's Ganglia configs for `config`; True when anything changed.
    The daemons pick them up at the next `Daemons.ensure`."""
    gmond, gmetad = config_paths(settings)
    changed = install_file(gmond, gmond_conf(config, own_ip=own_ip, hostname=hostname,
                                             is_master=is_master))
    if is_master:
        rrds = settings.home / "ganglia" / "rrds"
        rrds.mkdir(parents=True, exist_ok=True)
        changed |= install_file(gmetad, gmetad_conf(config, rrd_dir=rrds))
    elif gmetad.exists():
        gmetad.unlink()
        changed = True
    state = {"digest": digest(config if is_master else config.for_worker()),
             "role": "master" if is_master else "node", "config": asdict(config)}
    return install_file(settings.ganglia_state, json.dumps(state, indent=2) + "\n") or changed


def applied_digest(settings: Settings) -> str | None:
    """The digest of the config this node applied last; None before its first."""
    try:
        return json.loads(settings.ganglia_state.read_text())["digest"]
    except (OSError, ValueError, KeyError):
        return None


@catalogue.task(TASK, SCHEMA)
def task(args: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Apply the Ganglia config the master sent (its IP, ports, timings); the agent then
    restarts gmond with it.  The node's facts report the config it now runs."""
    config = GangliaConfig.from_args(args)
    node = identify(context.settings)
    changed = apply(context.settings, config, own_ip=node.ip, hostname=socket.gethostname(),
                    is_master=False)
    context.include(registration_ops(node, context.facts(), key=context.settings.ssh_key))
    return {"changed": changed, "master_ip": config.master_ip,
            "digest": digest(config.for_worker())}
