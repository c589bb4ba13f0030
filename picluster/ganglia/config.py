"""What a node's Ganglia runs with (`GangliaConfig`): the cluster's ports, the master's
address, the timings that follow the ping settings, and its digest."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace

from picluster import layout
from picluster.registry import ClusterVars, Membership
from picluster.settings import Settings

__all__ = ["PORTS", "GangliaConfig", "cluster_config", "config_problems", "digest"]

# The ports when local-vars/cluster.yml sets none under `ganglia:` (Debian's own).
PORTS = {"gmond_port": 8649, "gmetad_xml_port": 8651}


@dataclass(frozen=True)
class GangliaConfig:
    """Everything a node's Ganglia config depends on; the master sends it in a task."""

    cluster: str
    master_ip: str
    gmond_port: int = PORTS["gmond_port"]
    gmetad_xml_port: int = PORTS["gmetad_xml_port"]
    metadata_interval: int = 20  # seconds between heartbeats and metadata resends
    host_dmax: int = 600  # a host silent this long is dropped
    members: tuple[str, ...] = ()  # IPs allowed to send to the master's gmond

    @classmethod
    def from_args(cls, args: Mapping[str, object]) -> GangliaConfig:
        known = {k: v for k, v in args.items() if k in cls.__dataclass_fields__}
        if "members" in known:
            known["members"] = tuple(str(ip) for ip in known["members"])  # type: ignore[union-attr]
        return cls(**known)  # type: ignore[arg-type]

    def for_worker(self) -> GangliaConfig:
        """What a worker's config depends on: not the member list."""
        return replace(self, members=())


def digest(config: GangliaConfig) -> str:
    """A short fingerprint of a config: nodes report it, the master compares it."""
    text = json.dumps(asdict(config), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _ports(cluster: ClusterVars) -> tuple[dict[str, int], list[str]]:
    """The ports `ganglia:` in cluster.yml sets, and a problem for each bad one (which
    keeps its default)."""
    ports, problems = dict(PORTS), []
    for key, default in PORTS.items():
        value = cluster.ganglia.get(key)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            problems.append(f"{layout.CLUSTER_VARS}: '{key}' should be a int, not {value!r}; "
                            f"using {default!r}")
        elif not 0 < value < 65536:
            problems.append(f"{layout.CLUSTER_VARS}: '{key}' must be a port (1-65535), not "
                            f"{value}; using {default}")
        else:
            ports[key] = value
    return ports, problems


def config_problems(cluster: ClusterVars) -> list[str]:
    """What a person should fix in the `ganglia:` section of cluster.yml."""
    return _ports(cluster)[1]


def cluster_config(settings: Settings, membership: Membership,
                   cluster: ClusterVars) -> GangliaConfig:
    """The config of the cluster in `membership`, whose master must be registered."""
    master = membership.master_member
    assert master is not None
    # Unicast gmond needs metadata resent; a heartbeat as often as nodes are pinged
    # (within reason) lets a restarted master gmond know every host again quickly.
    beat = int(min(20, max(2, settings.ping_interval)))
    # A host is dropped well after the master would have pruned it.
    dmax = int(max(60, settings.ping_interval * settings.prune_after * 4))
    return GangliaConfig(cluster.name, master.ip, **_ports(cluster)[0], metadata_interval=beat,
                         host_dmax=dmax, members=tuple(m.ip for m in membership.workers))
