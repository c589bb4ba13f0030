"""What a lab writes down and reports: its state file, how far the cluster converged, and
each node's status."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["Convergence", "LabState", "NodeStatus", "parse_hostfile", "status_json"]


@dataclass(frozen=True)
class LabState:
    """What `up` was asked for: the lab's state file, lab.json."""

    nodes: int
    master_index: int | None
    fast: bool
    git: str
    repo: str  # the URL nodes clone the cluster repository from
    machines: bool = False  # machine nodes (systemd-nspawn), not namespaces of this machine
    image: str | None = None  # the image machine nodes boot (picluster.lab.image)
    # Boot-config keys every card gets, past the quick timings (`lab up --set`).
    settings: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Convergence:
    """How far the cluster is: which nodes registered, and who won the election."""

    registered: tuple[str, ...]
    missing: tuple[str, ...]
    master: str | None  # the master's node name; None before the election
    unlisted: tuple[str, ...] = ()  # not in the master's MPI hostfile yet, when asked

    @property
    def converged(self) -> bool:
        return not self.missing and self.master is not None and not self.unlisted


@dataclass(frozen=True)
class NodeStatus:
    name: str
    mac: str  # 12 lower-case hex digits, as in the cluster repository
    ip: str
    role: str  # "master" or "node"
    state: str  # "up" (powered on) or "down"
    registered: bool  # ip/<mac> holds the node's IP on the remote's main
    in_hostfile: bool  # the master's rendered MPI hostfile lists the node
    agent: bool  # the node's agent process is running
    problem: str = ""  # what keeps a machine node from being healthy, in one line


def status_json(nodes: Iterable[NodeStatus]) -> dict[str, list[dict[str, Any]]]:
    return {"nodes": [asdict(node) for node in nodes]}


def parse_hostfile(text: str) -> set[str]:
    """The hosts of an OpenMPI hostfile (`<ip> slots=<n>` lines, `#` comments)."""
    return {line.split()[0] for line in (raw.split("#", 1)[0] for raw in text.splitlines())
            if line.strip()}
