"""Revoking tasks: a signed revocation beside a pending task, in
``queue/<mac>/revoked/<id>.json``.

`picluster revoke ID` signs one with its task signing key (any trusted task signer may
revoke any pending task, as they could have written it).  A node that finds one that
verifies against the signers it trusts never runs the task, unless it is already running:
its outcome says `revoked`, and lands in ``rejected/`` with the removal of the task and of
the revocation.  A revocation without a pending task (the task finished first) does
nothing and goes with the task's outcome when retention removes it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from picluster import layout
from picluster.gitstore import Create, Op, Snapshot
from picluster.signing import AllowedSigners, SignatureError, SignedDocument, sign
from picluster.tasks import TaskError

__all__ = ["Revocation", "revocations", "revoke_ops"]

log = logging.getLogger(__name__)

_FIELDS = ("id", "node", "revoked_at", "producer", "signature")


@dataclass(frozen=True)
class Revocation(SignedDocument):
    PREFIX = b"picluster revoke\n"  # never a task's signature

    id: str
    node: str
    revoked_at: str
    producer: str
    signature: str = ""

    def path(self) -> str:
        return layout.revoked_path(self.node, self.id)

    @classmethod
    def from_json(cls, text: str, path: str) -> Revocation:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise TaskError(f"{path}: line {error.lineno}: {error.msg}") from None
        if not isinstance(data, dict) or set(data) != set(_FIELDS) or \
                not all(isinstance(data[name], str) for name in _FIELDS):
            raise TaskError(f"{path}: a revocation holds the text fields {', '.join(_FIELDS)}")
        return cls(**data)


def revoke_ops(revocations: Sequence[Revocation], key: Path) -> list[Op]:
    """Sign `revocations` with `key` (one ssh-keygen run) into ops that create them."""
    signatures = sign([r.signed_bytes() for r in revocations], key)
    return [Create(r.path(), replace(r, signature=sig).to_json())
            for r, sig in zip(revocations, signatures, strict=True)]


def revocations(snapshot: Snapshot, mac: str,
                signers: AllowedSigners) -> tuple[dict[str, Revocation], list[str]]:
    """The revocations in `mac`'s queue that verify against `signers`, by task id, and a
    line for each file that does not."""
    folder = f"{layout.queue_dir(mac)}/revoked"
    found: dict[str, Revocation] = {}
    problems = []
    for name in snapshot.listdir(folder, files=True):
        path = f"{folder}/{name}"
        try:
            revocation = Revocation.from_json(snapshot.read(path) or "", path)
            if path != revocation.path() or revocation.node != mac:
                raise TaskError(f"{path}: names task {revocation.id} of node "
                                f"{revocation.node}; it must be in that task's place")
            signers.verify(revocation.signed_bytes(), revocation.signature,
                           revocation.producer)
        except (TaskError, ValueError) as error:  # SignatureError is a ValueError
            problems.append(f"{path}: {error}" if isinstance(error, SignatureError)
                            else str(error))
            continue
        found[revocation.id] = revocation
    return found, problems
