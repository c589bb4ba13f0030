"""Tasks: the JSON schema of a task file, its outcome, and catalogues of what a node runs.

A task file (``queue/<mac>/<id>.json``) is pretty-printed JSON a person can read::

    {"id": "...", "node": "<mac>", "task": "echo", "args": {...},
     "created_at": "...", "producer": "alice", "eta": null, "expires": null,
     "retries": 0, "signature": "-----BEGIN SSH SIGNATURE-----..."}

`timeout` and `retry_delay` appear only when set, so a task without them reads (and
signs) as it did before they existed.

The signature covers every other field (canonical JSON), the node included, so a task
cannot be replayed to another node.  A task expires at `expires`, or `LIFETIME` after
`created_at` when it sets none; a node never runs it after that.  Only names in a node's
catalogue ever run: the built-ins here (`catalogue`: echo, sleep), and what
`picluster.node.catalogue` adds.  Each task is registered with the `Schema` of its
arguments: the producer checks them before it signs (`make_task`), the node before it
runs (`scan`, and `Catalogue.get`'s function).
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from picluster import layout
from picluster.bounded import LimitError, load_json
from picluster.gitstore import Op
from picluster.schema import ArgError, Duration, Json, Schema
from picluster.signing import SignedDocument
from picluster.version import __version__

__all__ = [
    "LIFETIME",
    "MAX_OUTCOME",
    "MAX_TASK",
    "Catalogue",
    "Outcome",
    "Task",
    "TaskContext",
    "TaskError",
    "TaskFailed",
    "TaskTimedOut",
    "catalogue",
    "new_task_id",
    "now_iso",
]

_FIELDS = {"id": str, "node": str, "task": str, "args": dict, "created_at": str,
           "producer": str, "eta": (str, type(None)), "expires": (str, type(None)),
           "retries": int, "signature": str, "timeout": (int, float, type(None)),
           "retry_delay": (int, float, type(None))}
# May be absent: the dataclass defaults apply.
_OPTIONAL = {"eta", "expires", "retries", "timeout", "retry_delay"}
# Left out of the file and of what is signed while None (added after the others).
_UNLESS_SET = ("timeout", "retry_delay")
MAX_SECONDS = 86400.0  # the longest timeout or retry delay a task may ask for

# How long a task may wait to run when it sets no `expires`: long enough for a node that
# was off for a weekend, short enough that an old task file put back never runs.
LIFETIME = dt.timedelta(days=7)
# The most a task file and an outcome file may hold (bytes); nested at most
# `picluster.bounded.DEPTH` deep (an outcome a few levels more: it holds the result).
MAX_TASK = 256 << 10
MAX_OUTCOME = 8 << 20
_OUTCOME_DEPTH = 64


class TaskError(ValueError):
    """A task file that cannot run; the message says where and how to fix it."""


class TaskFailed(Exception):
    """A task ran and failed, with a result worth keeping (a command's exit code and
    output): its outcome is `status` with `result`, and the message as its error."""

    status = "error"

    def __init__(self, message: str, result: Any = None) -> None:
        super().__init__(message)
        self.result = result


class TaskTimedOut(TaskFailed):
    """A task stopped at its timeout: its outcome says "timeout"."""

    status = "timeout"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: str) -> dt.datetime:
    value = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def new_task_id() -> str:
    """Sortable by creation time, unique without coordination."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    return f"{stamp}-{uuid.uuid4().hex[:8]}"


@dataclass(frozen=True)
class Task(SignedDocument):
    id: str
    node: str
    task: str
    args: dict[str, Any]
    created_at: str
    producer: str
    eta: str | None = None
    expires: str | None = None
    retries: int = 0
    signature: str = ""
    timeout: float | None = None  # seconds: then the outcome says "timeout"
    retry_delay: float | None = None  # seconds before the first retry, doubling each time

    def fields(self) -> dict[str, Any]:
        """Every field but the optional ones left unset: a task file names only those."""
        data = super().fields()
        for name in _UNLESS_SET:
            if data[name] is None:
                del data[name]
        return data

    def expiry(self) -> dt.datetime:
        """When the task stops being worth running: `expires`, else `LIFETIME` after
        `created_at`."""
        if self.expires:
            return parse_time(self.expires)
        try:
            return parse_time(self.created_at) + LIFETIME
        except OverflowError:  # created at the end of time
            return dt.datetime.max.replace(tzinfo=dt.UTC)

    @classmethod
    def from_json(cls, text: str, path: str) -> Task:
        """Parse a task file; TaskError names the file, line and field."""
        try:
            data = load_json(text, max_size=MAX_TASK)
        except json.JSONDecodeError as error:
            raise TaskError(f"{path}: line {error.lineno} column {error.colno}: {error.msg}; "
                            "a task file is one JSON object (see `picluster enqueue`)") from None
        except LimitError as error:
            raise TaskError(f"{path}: {error}; a task file is one JSON object of at most "
                            f"{MAX_TASK >> 10} KiB") from None
        if not isinstance(data, dict):
            raise TaskError(f"{path}: line 1: a task file holds one JSON object, "
                            f"not {type(data).__name__}")
        unknown = sorted(set(data) - set(_FIELDS))
        if unknown:
            raise TaskError(f"{path}: unknown field(s) {', '.join(unknown)}; "
                            f"a task has: {', '.join(_FIELDS)}")
        for name, kind in _FIELDS.items():
            if name not in data:
                if name in _OPTIONAL:
                    continue
                raise TaskError(f"{path}: field '{name}' is missing")
            if not isinstance(data[name], kind) or isinstance(data[name], bool):
                raise TaskError(f"{path}: field '{name}' has the wrong type "
                                f"({type(data[name]).__name__})")
        task = cls(**data)
        for name in ("created_at", "eta", "expires"):
            value = getattr(task, name)
            if value is not None:
                try:
                    parse_time(value)
                except ValueError:
                    raise TaskError(f"{path}: field '{name}': '{value}' is not an ISO 8601 "
                                    "time, e.g. 2026-11-25T14:30:00Z") from None
        if task.retries < 0:
            raise TaskError(f"{path}: field 'retries' must be 0 or more")
        for name, zero in (("timeout", False), ("retry_delay", True)):
            value = getattr(task, name)
            if value is not None and not (0 <= value <= MAX_SECONDS and (zero or value > 0)):
                raise TaskError(f"{path}: field '{name}' must be "
                                f"{'0' if zero else 'more than 0'} to {MAX_SECONDS:g} seconds")
        return task


@dataclass
class Outcome:
    """What became of a task: written to queue/<mac>/done/ (ran) or rejected/ (never ran)."""

    id: str
    node: str
    # "ok"; "error" or "timeout" (ran and failed); "rejected" or "revoked" (never ran)
    status: str
    task: str | None = None
    producer: str | None = None
    result: Any = None
    error: str | None = None
    attempts: int = 0
    received_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None
    original: str | None = None  # a rejected task's file, kept so nothing is lost

    def to_json(self) -> str:
        data = {k: v for k, v in asdict(self).items() if v is not None}
        text = json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n"
        # A lone surrogate (a JSON escape in a task, a file name that is not UTF-8) has no
        # UTF-8: it is written as its JSON escape, which reads back the same.
        return text.encode("utf-8", "backslashreplace").decode()

    @classmethod
    def from_json(cls, text: str, path: str = "outcome") -> Outcome:
        """Parse an outcome file; TaskError names the file and what is wrong with it."""
        try:
            data = load_json(text, max_size=MAX_OUTCOME, max_depth=_OUTCOME_DEPTH)
        except json.JSONDecodeError as error:
            raise TaskError(f"{path}: line {error.lineno} column {error.colno}: {error.msg}; "
                            "not an outcome") from None
        except LimitError as error:
            raise TaskError(f"{path}: {error}; not an outcome") from None
        if not isinstance(data, dict) or not all(
                isinstance(data.get(name), str) for name in ("id", "node", "status")):
            raise TaskError(f"{path}: not an outcome (a JSON object with 'id', 'node' and "
                            "'status')")
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})

    def path(self) -> str:
        return layout.outcome_path(self.node, self.id, self.status)


@dataclass
class TaskContext:
    """What a running task may use.  Tasks never touch git: ops they add are pushed by
    the agent in the same commit as their outcome."""

    settings: Any
    task: Task
    facts: Callable[[], dict[str, object]]  # what this node reports about itself, read now
    ops: list[Op] = field(default_factory=list)

    def include(self, ops: list[Op]) -> None:
        self.ops.extend(ops)


TaskFunction = Callable[[dict[str, Any], TaskContext], Any]


@dataclass(frozen=True)
class _Entry:
    function: TaskFunction
    schema: Schema
    version: str


class Catalogue:
    """The task names a node runs, each with the schema of its arguments; nothing outside
    it ever runs, and nothing runs with arguments its schema refuses."""

    def __init__(self, *bases: Catalogue) -> None:
        """A catalogue of every task in `bases`; `task()` adds more."""
        self._tasks: dict[str, _Entry] = {
            name: entry for base in bases for name, entry in base._tasks.items()}

    def task(self, name: str, schema: Schema, version: str = __version__
             ) -> Callable[[TaskFunction], TaskFunction]:
        """Register the decorated function as task `name`, taking what `schema` allows;
        `version` is what the node reports it runs (a plugin's: its package's)."""
        def decorator(function: TaskFunction) -> TaskFunction:
            self._tasks[name] = _Entry(function, schema, version)
            return function
        return decorator

    def check(self, name: str, args: Any) -> dict[str, Any]:
        """`args` as task `name` gets them (checked, defaults filled in); TaskError, one
        line, names an unknown task or the argument refused and the rule it breaks."""
        entry = self._tasks.get(name)
        if entry is None:
            raise TaskError(f"unknown task '{name}'; the tasks are: {', '.join(self.names())}")
        try:
            return entry.schema.check(args)
        except ArgError as error:
            raise TaskError(f"task '{name}': {error}") from None

    def get(self, name: str) -> TaskFunction | None:
        """The function that runs task `name`: it checks the arguments first (the last
        gate: a task queued before its schema changed still never runs with bad ones)."""
        entry = self._tasks.get(name)
        if entry is None:
            return None

        def run(args: dict[str, Any], context: TaskContext) -> Any:
            return entry.function(self.check(name, args), context)
        return run

    def names(self) -> list[str]:
        return sorted(self._tasks)

    def versions(self) -> dict[str, str]:
        """Task name -> version: what a node reports it runs (in its facts)."""
        return {name: self._tasks[name].version for name in self.names()}


# The built-ins any catalogue starts from.
catalogue = Catalogue()


@catalogue.task("echo", Schema(others=Json()))
def echo(args: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Return the arguments: proves the path producer -> git -> node -> git works."""
    return args


# An hour at most: a stopping agent lets its running tasks finish (systemd waits 10
# minutes for it, then kills it), so no task may hold a worker for ever.
@catalogue.task("sleep", Schema({"seconds": Duration(maximum=3600, default=1.0)}))
def sleep(args: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Sleep `seconds`: a stand-in for real work in demos and tests."""
    seconds = args["seconds"]
    time.sleep(seconds)
    return {"slept": seconds}
