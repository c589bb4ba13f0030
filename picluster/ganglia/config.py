"""What a node's Ganglia runs with (`GangliaConfig`): the cluster's ports, the master's
address, the timings that follow the ping settings, and its digest; `SCHEMA` bounds each
of its fields, for the `ganglia` task's arguments and for the text of the configs."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace

from picluster import layout
from picluster.registry import ClusterVars, Membership
from picluster.schema import Int, IPv4, List, Port, Schema, Str
from picluster.settings import Settings

__all__ = ["PORTS", "SCHEMA", "GangliaConfig", "cluster_config", "config_problems", "digest"]

# The ports when local-vars/cluster.yml sets none under `ganglia:` (Debian's own).
PORTS = {"gmond_port": 8649, "gmetad_xml_port": 8651}
_MAX_DMAX = 30 * 86400  # seconds a silent host may stay listed, at most


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


_DEFAULTS = {f.name: f.default for f in fields(GangliaConfig)}

# Every field of a GangliaConfig, bounded: the `ganglia` task's arguments, and what the
# text of gmond.conf and gmetad.conf accepts.  Nothing else reaches those files.
SCHEMA = Schema({
    "cluster": Str(max_length=64, pattern=r"[A-Za-z0-9][A-Za-z0-9._-]*",
                   what="a plain name (letters, digits, '.', '_', '-')"),
    "master_ip": IPv4(),
    "gmond_port": Port(default=_DEFAULTS["gmond_port"]),
    # gmetad's interactive port is the next one.
    "gmetad_xml_port": Port(maximum=65534, default=_DEFAULTS["gmetad_xml_port"]),
    "metadata_interval": Int(minimum=1, maximum=3600, default=_DEFAULTS["metadata_interval"]),
    "host_dmax": Int(minimum=1, maximum=_MAX_DMAX, default=_DEFAULTS["host_dmax"]),
    "members": List(item=IPv4(), max_length=4096, default=_DEFAULTS["members"]),
})


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
        else:
            try:
                ports[key] = SCHEMA.rules[key].accepts(value)
            except ValueError:
                problems.append(f"{layout.CLUSTER_VARS}: '{key}' must be "
                                f"{SCHEMA.rules[key].describe()}, not {value}; using {default}")
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
    dmax = int(min(_MAX_DMAX, max(60, settings.ping_interval * settings.prune_after * 4)))
    return GangliaConfig(cluster.name, master.ip, **_ports(cluster)[0], metadata_interval=beat,
                         host_dmax=dmax, members=tuple(m.ip for m in membership.workers))
