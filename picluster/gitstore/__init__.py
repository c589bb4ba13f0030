"""Git storage: the cluster repository as a key-value store with transactions.

Owns every git process picluster runs: clones, snapshots of a commit, ops and the
transaction that lands them (compare-and-set, or carried through the inbox).  It knows
nothing of nodes, tasks, Ganglia or the lab: those build on it.

    ops         Put, Create, Remove: what a change does, and its encoding in an intent
    snapshot    a read-only view of one commit
    fastimport  a commit as a fast-import stream
    errors      GitError, and which refusals are worth another try
    clone       the bare clone: open, repair, fetch, push, commit; every git process
    inbox       intents on refs/picluster/inbox/*, waiting for and carrying them
    repo        ClusterRepo: sync, snapshot, transact (guarded or not), refs outside main
"""

from picluster.gitstore.clone import init_bare
from picluster.gitstore.errors import GitError
from picluster.gitstore.inbox import TransactResult
from picluster.gitstore.ops import Create, Op, Put, Remove, decode_ops, encode_ops
from picluster.gitstore.repo import Change, ClusterRepo, Guard
from picluster.gitstore.snapshot import Snapshot

__all__ = [
    "Change",
    "ClusterRepo",
    "Create",
    "GitError",
    "Guard",
    "Op",
    "Put",
    "Remove",
    "Snapshot",
    "TransactResult",
    "decode_ops",
    "encode_ops",
    "init_bare",
]
