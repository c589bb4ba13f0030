"""The task queue in git: producers write signed task files, nodes read their own.

Producer side: `enqueue` signs and commits tasks and wakes their nodes, `wait_for` watches
for their outcomes.
Node side: `scan` reads ``queue/<mac>/`` and sorts each pending file into a task that may
run or a rejection that says why it never will.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Container, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from picluster import layout, wakeup
from picluster.bounded import LimitError
from picluster.gitstore import ClusterRepo, Create, Op, Snapshot
from picluster.registry import read_cluster_vars
from picluster.signing import AllowedSigners, SignatureError, sign
from picluster.tasks import (
    LIFETIME,
    MAX_OUTCOME,
    MAX_TASK,
    Catalogue,
    Outcome,
    Task,
    TaskError,
    new_task_id,
    now_iso,
)

__all__ = ["Pending", "enqueue", "make_task", "outcome_of", "pending_tasks", "read_signers",
           "scan", "wait_for"]

_MAX_ORIGINAL = 65536


def make_task(node: str, name: str, args: dict[str, Any], producer: str, *,
              eta: str | None = None, expires: str | None = None, retries: int = 0,
              catalogue: Catalogue | None = None) -> Task:
    """A task to sign and enqueue.  With `catalogue`, a task it lacks or arguments its
    schema refuses raise TaskError before anything is signed or pushed."""
    if catalogue is not None:
        catalogue.check(name, args)
    return Task(id=new_task_id(), node=layout.normalize_mac(node), task=name, args=args,
                created_at=now_iso(), producer=producer, eta=eta, expires=expires,
                retries=retries)


def enqueue(repo: ClusterRepo, tasks: Sequence[Task], key: Path,
            also: Sequence[Op] = ()) -> list[Task]:
    """Sign `tasks` with `key` and commit them, all in one commit (with the ops `also`),
    then wake their nodes;
    return the signed tasks."""
    signatures = sign([task.signed_bytes() for task in tasks], key)
    signed = [replace(task, signature=sig) for task, sig in zip(tasks, signatures, strict=True)]
    ops = [*(Create(layout.pending_path(t.node, t.id), t.to_json()) for t in signed), *also]
    names = ", ".join(sorted({t.task for t in signed}))
    nodes = ", ".join(sorted({t.node for t in signed}))
    message = (f"enqueue {signed[0].task} {signed[0].id} for {signed[0].node}" if len(signed) == 1
               else f"enqueue {len(signed)} tasks ({names}) for {nodes}")
    repo.transact(ops, message)
    # Each node at the IP it has on the tip the tasks landed on.
    snapshot = repo.snapshot()
    wakeup.send(snapshot, sorted({t.node for t in signed}),
                read_cluster_vars(snapshot).wakeup_port)
    return signed


def outcome_of(snapshot: Snapshot, mac: str, task_id: str) -> Outcome | None:
    """The task's outcome, from done/ (it ran) or else rejected/ (it never will); None
    while it has none.  TaskError when the only file there is not an outcome."""
    unreadable = None
    for status in ("ok", "rejected"):
        path = layout.outcome_path(mac, task_id, status)
        try:
            text = snapshot.read(path, max_size=MAX_OUTCOME)
            if text is not None:
                return Outcome.from_json(text, path)
        except LimitError as error:
            unreadable = unreadable or TaskError(f"{path}: {error}; not an outcome")
        except TaskError as error:
            unreadable = unreadable or error
    if unreadable is not None:
        raise unreadable
    return None


def wait_for(repo: ClusterRepo, tasks: Iterable[Task], timeout: float,
             interval: float = 0.1) -> dict[str, Outcome]:
    """Watch git until every task has an outcome or `timeout` passes; return those found.
    Cheaply: an `ls-remote` every `interval`, and a fetch only when main moved.  A task
    whose only outcome file is not one is waited for too (its node may still reject it
    properly); TaskError says so if that is all there is at the end."""
    waiting = {t.id: t.node for t in tasks}
    found: dict[str, Outcome] = {}
    unreadable: dict[str, TaskError] = {}
    deadline = time.monotonic() + timeout
    snapshot = repo.sync()
    while True:
        for task_id, mac in list(waiting.items()):
            try:
                outcome = outcome_of(snapshot, mac, task_id)
            except TaskError as error:
                unreadable[task_id] = error
                continue
            unreadable.pop(task_id, None)
            if outcome is not None:
                found[task_id] = outcome
                del waiting[task_id]
        if not waiting or not _moved(repo, snapshot.commit, deadline, interval):
            break
        snapshot = repo.sync()
    if unreadable:
        raise next(iter(unreadable.values()))
    return found


def _moved(repo: ClusterRepo, tip: str, deadline: float, interval: float) -> bool:
    """Wait until main moves from `tip`, asking with an `ls-remote` every `interval`
    (a fetch would write to the clone every time); False once `deadline` comes."""
    while time.monotonic() + interval <= deadline:
        time.sleep(interval)
        if repo.ls_remote() != tip:
            return True
    return False


@dataclass(frozen=True)
class Pending:
    """One file in a node's queue, sorted: a `task` that may run or a `rejection`."""

    path: str
    task: Task | None = None
    rejection: Outcome | None = None


def pending_tasks(snapshot: Snapshot, mac: str) -> list[str]:
    """The names of the task files waiting in ``queue/<mac>/``."""
    return [name for name in snapshot.listdir(layout.queue_dir(mac), files=True)
            if name.endswith(".json")]


def read_signers(snapshot: Snapshot) -> AllowedSigners:
    """The keys the repository's file lists for tasks, with the problems of any line that
    is not one.  Nodes verify against the signers they trust (picluster.trust), never
    against this file directly."""
    return AllowedSigners.parse(snapshot.read(layout.ALLOWED_SIGNERS) or "",
                                layout.ALLOWED_SIGNERS)


def scan(snapshot: Snapshot, mac: str, catalogue: Catalogue, known: Container[str] = (), *,
         signers: AllowedSigners) -> list[Pending]:
    """Every pending file in ``queue/<mac>/`` but those `known` (by id), each validated:
    schema, address, name, signature (by one of `signers`: those the node trusts),
    arguments, expiry, and that it has not already run.  Directories in the queue (done/,
    rejected/, anything else) are never read.  Each file is judged on its own: whatever
    goes wrong with one is its rejection, never the end of the scan."""
    folder = layout.queue_dir(mac)
    return [_judge(snapshot, mac, f"{folder}/{name}", name, signers, catalogue)
            for name in snapshot.listdir(folder, files=True)
            if name != ".gitkeep" and name.removesuffix(".json") not in known]


def _judge(snapshot: Snapshot, mac: str, path: str, name: str, signers: AllowedSigners,
           catalogue: Catalogue) -> Pending:
    try:
        return _check(snapshot, mac, path, name, signers, catalogue)
    except Exception as error:  # a file no check foresaw must not stall the node
        return _rejection(mac, path, name, f"{path}: cannot be judged: "
                                           f"{type(error).__name__}: {error}")


def _rejection(mac: str, path: str, name: str, why: str, task: Task | None = None,
               original: str | None = None) -> Pending:
    """Why `path` never runs, named after the file (which is where the producer looks,
    whatever the id inside says), or after a name that can be an id."""
    stem = name.removesuffix(".json")
    safe = stem if layout.valid_task_id(stem) else \
        "invalid-" + "".join(c if c.isascii() and c.isalnum() else "-"
                             for c in stem)[:60].strip("-")
    return Pending(path, rejection=Outcome(
        id=safe, node=mac, status="rejected",
        task=task.task if task else None, producer=task.producer if task else None,
        error=why, received_at=now_iso(), original=original))


def _check(snapshot: Snapshot, mac: str, path: str, name: str, signers: AllowedSigners,
           catalogue: Catalogue) -> Pending:
    stem = name.removesuffix(".json")
    too_large = None
    try:
        text = snapshot.read(path, max_size=MAX_TASK) or ""
    except LimitError as error:  # not even read: the original stays in git's history
        text, too_large = "", f"{path}: {error}; a task file holds at most {MAX_TASK >> 10} KiB"

    def reject(why: str, task: Task | None = None) -> Pending:
        return _rejection(mac, path, name, why, task, text[:_MAX_ORIGINAL])

    if not name.endswith(".json") or not layout.valid_task_id(stem):
        return reject(f"{path}: a task file is named <id>.json with an id of letters, digits, "
                      "'.', '_' and '-'")
    if not snapshot.is_regular_file(path):
        return reject(f"{path}: is a symlink or special file; a task must be a plain file")
    if too_large:
        return reject(too_large)
    try:
        task = Task.from_json(text, path)
    except TaskError as error:
        return reject(str(error))
    if task.id != stem:
        return reject(f"{path}: field 'id' is '{task.id}' but the file is named {name}; "
                      "they must match", task)
    if task.node != mac:
        return reject(f"{path}: addressed to node {task.node}, but it is in {mac}'s queue",
                      task)
    if catalogue.get(task.task) is None:
        return reject(f"{path}: unknown task '{task.task}'; this node runs: "
                      f"{', '.join(catalogue.names())}", task)
    try:
        signers.verify(task.signed_bytes(), task.signature, task.producer)
    except SignatureError as error:
        return reject(f"{path}: {error}", task)
    try:
        catalogue.check(task.task, task.args)
    except TaskError as error:
        return reject(f"{path}: {error}", task)
    # Any file in done/ or rejected/ counts, readable or not: the id has been used.
    for status in ("ok", "rejected"):
        outcome = layout.outcome_path(mac, task.id, status)
        if snapshot.exists(outcome):
            return reject(f"{path}: task {task.id} already has an outcome ({outcome}); it "
                          "never runs twice", task)
    expiry = task.expiry()
    if expiry < dt.datetime.now(dt.UTC):
        given = "its `expires`" if task.expires else \
            f"{LIFETIME.days} days after its created_at, as it sets no `expires`"
        return reject(f"{path}: expired at {expiry.isoformat()} ({given}) before it could "
                      "run", task)
    return Pending(path, task=task)
