"""Git storage: the cluster repository as a key-value store with transactions.

Owns every git process picluster runs: clones, snapshots of a commit, ops and the
transaction that lands them (compare-and-set, or carried through the inbox).  It knows
nothing of nodes, tasks, Ganglia or the lab: those build on it.
"""

from picluster.gitstore.repo import (
    Change,
    ClusterRepo,
    Create,
    GitError,
    Op,
    Put,
    Remove,
    Snapshot,
    TransactResult,
    decode_ops,
    encode_ops,
    init_bare,
)

__all__ = [
    "Change",
    "ClusterRepo",
    "Create",
    "GitError",
    "Op",
    "Put",
    "Remove",
    "Snapshot",
    "TransactResult",
    "decode_ops",
    "encode_ops",
    "init_bare",
]
