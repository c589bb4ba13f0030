"""Schedules: signed files, ``local-vars/schedules/<name>.json``, from which the master
enqueues tasks on a cron or interval trigger (`picluster.master.schedules` runs them).

A schedule names a task, its arguments, its nodes (`"all"`, `"master"`, `"node"` or a list
of MACs, chosen again at each run) and one trigger: a crontab line in UTC (`cron`) or a
period in seconds (`every`).  `picluster schedule add` signs it like a task (any trusted
task signer may schedule); the master acts only on schedules that verify against the
signers it trusts.  ``<name>.last`` holds the time of the last run, written in the commit
that enqueues it: runs missed while no master was up are coalesced into one, and a new or
restarted master never runs one twice.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from picluster import layout
from picluster.gitstore import Create, Op, Put, Snapshot
from picluster.signing import AllowedSigners, SignatureError, SignedDocument, sign
from picluster.tasks import TaskError, parse_time

__all__ = ["MIN_EVERY", "Schedule", "check_cron", "last_run", "next_run", "read_schedules",
           "schedule_ops", "trigger"]

log = logging.getLogger(__name__)

_FIELDS = {"name": str, "task": str, "args": dict, "targets": (str, list),
           "cron": (str, type(None)), "every": (int, float, type(None)), "created_at": str,
           "producer": str, "signature": str}
MIN_EVERY = 1.0  # seconds: the shortest period a schedule may have


@dataclass(frozen=True)
class Schedule(SignedDocument):
    PREFIX = b"picluster schedule\n"  # never a task's signature

    name: str
    task: str
    args: dict[str, Any]
    targets: str | list[str]  # "all", "master", "node", or MACs
    cron: str | None  # a crontab line, in UTC
    every: float | None  # seconds
    created_at: str
    producer: str
    signature: str = ""

    def path(self) -> str:
        return layout.schedule_path(self.name)

    def describe(self) -> str:
        """The trigger, as the command line took it."""
        return f"cron {self.cron}" if self.cron is not None else f"every {self.every:g} s"

    def check(self) -> Schedule:
        """The schedule itself; TaskError says what is wrong with it."""
        layout.schedule_path(self.name)  # ValueError: a name that cannot be a file
        if (self.cron is None) == (self.every is None):
            raise TaskError(f"schedule {self.name}: give it either cron or every")
        if self.cron is not None:
            check_cron(self.cron)
        if self.every is not None and not MIN_EVERY <= self.every <= 366 * 86400:
            raise TaskError(f"schedule {self.name}: every must be {MIN_EVERY:g} s to a year")
        if isinstance(self.targets, list):
            if not self.targets or any(layout.normalize_mac(m) != m for m in self.targets):
                raise TaskError(f"schedule {self.name}: targets must be MACs as 12 lower-case "
                                "hex digits")
        elif self.targets not in ("all", "master", "node"):
            raise TaskError(f"schedule {self.name}: targets must be all, master, node or MACs")
        parse_time(self.created_at)
        return self

    @classmethod
    def from_json(cls, text: str, path: str) -> Schedule:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise TaskError(f"{path}: line {error.lineno}: {error.msg}") from None
        if not isinstance(data, dict) or set(data) != set(_FIELDS) or any(
                not isinstance(data[k], kind) or isinstance(data[k], bool)
                for k, kind in _FIELDS.items()):
            raise TaskError(f"{path}: a schedule holds the fields {', '.join(_FIELDS)}")
        try:
            return cls(**data).check()
        except ValueError as error:  # TaskError too
            raise TaskError(f"{path}: {error}") from None


def check_cron(expression: str) -> None:
    """TaskError unless `expression` is a crontab line (5 fields)."""
    trigger(expression, None)


def trigger(cron: str | None, every: float | None) -> Any:
    """The APScheduler trigger of a schedule (cron in UTC); TaskError for a bad cron line."""
    from apscheduler.triggers.cron import CronTrigger
    from apscheduler.triggers.interval import IntervalTrigger

    if every is not None:
        return IntervalTrigger(seconds=every, timezone=dt.UTC)
    try:
        return CronTrigger.from_crontab(str(cron), timezone=dt.UTC)
    except ValueError as error:
        raise TaskError(f"'{cron}' is not a crontab line (minute hour day month weekday, "
                        f"e.g. '0 3 * * *'): {error}") from None


def last_run(snapshot: Snapshot, name: str) -> dt.datetime | None:
    """When the master last ran schedule `name` (None: never, or unreadable)."""
    text = snapshot.read(layout.schedule_run_path(name))
    try:
        return parse_time(text.strip()) if text else None
    except ValueError:
        return None


def next_run(schedule: Schedule, last: dt.datetime | None, now: dt.datetime) -> dt.datetime:
    """When to run `schedule` next: now, if a run came due since `last` (the runs missed
    are one run); else its trigger's next time (for a new one: after `now`)."""
    rule = trigger(schedule.cron, schedule.every)
    if last is None:
        return rule.get_next_fire_time(None, now) if schedule.cron else \
            now + dt.timedelta(seconds=float(schedule.every or 0))
    due = rule.get_next_fire_time(last, last) if schedule.cron else \
        last + dt.timedelta(seconds=float(schedule.every or 0))
    return max(due, now)


def schedule_ops(schedule: Schedule, key: Path, *, replace_existing: bool) -> list[Op]:
    """Sign `schedule` with `key`: the op that writes it (only where none is, unless
    `replace_existing`)."""
    (signature,) = sign([schedule.signed_bytes()], key)
    text = replace(schedule, signature=signature).to_json()
    return [Put(schedule.path(), text) if replace_existing else Create(schedule.path(), text)]


def read_schedules(snapshot: Snapshot,
                   signers: AllowedSigners) -> tuple[list[Schedule], list[str]]:
    """The schedules that verify against `signers`, and a line for each file that does
    not."""
    found, problems = [], []
    for name in snapshot.listdir(layout.SCHEDULES_DIR, files=True):
        if not name.endswith(".json"):
            continue
        path = f"{layout.SCHEDULES_DIR}/{name}"
        try:
            schedule = Schedule.from_json(snapshot.read(path) or "", path)
            if schedule.path() != path:
                raise TaskError(f"{path}: holds schedule '{schedule.name}'; name the file "
                                f"{schedule.path()}")
            signers.verify(schedule.signed_bytes(), schedule.signature, schedule.producer)
        except SignatureError as error:
            problems.append(f"{path}: {error}")
            continue
        except TaskError as error:
            problems.append(str(error))
            continue
        found.append(schedule)
    return found, problems

