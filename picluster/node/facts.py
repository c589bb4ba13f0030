"""The facts a node reports in local-vars/nodes/<mac>.yml: what it is, and what its
services report they run."""

from __future__ import annotations

from picluster import ganglia, identity
from picluster.settings import Settings

__all__ = ["reported_facts"]


def reported_facts(settings: Settings) -> dict[str, object]:
    """This node's facts, read now.  `ganglia` is the digest of the config it applied
    (None until the master sent one): the master resends a config that differs."""
    return {**identity.facts(settings), "ganglia": ganglia.applied_digest(settings)}
