"""Whom a task goes to: the words of `picluster enqueue`, the nodes a broadcast names, and
whether each node runs the task at all (the catalogue it reports in its facts).

`enqueue [MAC...] TASK [-- CMD ARG...]`, `enqueue --all TASK`, `enqueue --role node TASK`:
one signed task per node, all in one commit (`picluster.queue.enqueue`); `rows` turns
their outcomes into one row per node for a table or for scripts.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from picluster import layout
from picluster.registry import Membership
from picluster.tasks import Outcome, Task, parse_time

__all__ = ["ROLES", "Targets", "Words", "missing_task", "parse_words", "reported_tasks", "rows",
           "select", "targets"]

ROLES = ("master", "node")


@dataclass(frozen=True)
class Words:
    """The positional words of `enqueue`: the MACs named, the task, what follows it."""

    macs: tuple[str, ...]
    task: str
    rest: tuple[str, ...]  # a `run` task's command and its arguments


def _is_mac(word: str) -> bool:
    try:
        layout.normalize_mac(word)
    except ValueError:
        return False
    return True


def parse_words(words: Sequence[str]) -> Words:
    """`[MAC...] TASK [WORD...]`: the leading MACs, the first other word is the task.
    ValueError says what is missing."""
    macs = []
    for index, word in enumerate(words):
        if _is_mac(word):
            macs.append(layout.normalize_mac(word))
            continue
        return Words(tuple(dict.fromkeys(macs)), word, tuple(words[index + 1:]))
    raise ValueError("name the task to run, e.g. `picluster enqueue MAC echo` or "
                     "`picluster enqueue --all run -- uname -n`")


Targets = str | list[str]  # "all", a role ("master", "node"), or MACs


def targets(*, every: bool = False, role: str | None = None,
            macs: Sequence[str] = ()) -> Targets:
    """The nodes the command line names: `macs`, every node (`every`: "all") or a `role`;
    ValueError unless exactly one of them is given, and well."""
    if sum((every, role is not None, bool(macs))) != 1:
        raise ValueError("name the nodes: MAC..., --all or --role master|node (one of them)")
    if macs:
        return list(macs)
    if every:
        return "all"
    if role not in ROLES:
        raise ValueError(f"--role '{role}': use master or node")
    return str(role)


def select(membership: Membership, chosen: Targets) -> list[str]:
    """The MACs a task goes to: those `chosen` names as given; for "all" every registered
    node; for "master" the master, for "node" every other one.  ValueError when that is
    nobody."""
    if isinstance(chosen, list):
        return list(chosen)
    members = [m.mac for m in membership.members
               if chosen == "all" or (m.mac == membership.master) == (chosen == "master")]
    if not members:
        raise ValueError("no registered node" + ("" if chosen == "all" else
                                                 f" has the role {chosen}"))
    return sorted(members)


def reported_tasks(membership: Membership, mac: str) -> dict[str, str] | None:
    """The tasks node `mac` reports it runs (name -> version); None when it reports none
    (not registered, or a picluster that did not report them yet)."""
    member = membership.get(mac)
    tasks = member.facts.get("tasks") if member else None
    if not isinstance(tasks, dict):
        return None
    return {str(name): str(version) for name, version in tasks.items()}


def missing_task(membership: Membership, macs: Iterable[str], task: str) -> list[str]:
    """A line for each of `macs` that reports a catalogue without `task`."""
    problems = []
    for mac in macs:
        tasks = reported_tasks(membership, mac)
        if tasks is not None and task not in tasks:
            problems.append(f"node {mac} does not run task '{task}' (it runs: "
                            f"{', '.join(sorted(tasks))}); install the package that provides "
                            "it there, or pick other nodes")
    return problems


def _seconds(outcome: Outcome) -> float | None:
    if not (outcome.started_at and outcome.finished_at):
        return None
    return round((parse_time(outcome.finished_at) - parse_time(outcome.started_at))
                 .total_seconds(), 3)


def rows(tasks: Sequence[Task], outcomes: Mapping[str, Outcome],
         membership: Membership | None = None) -> list[dict[str, Any]]:
    """One row per task (per node): node, hostname, id, status ("pending" without an
    outcome), duration in seconds, and the result or the error."""
    found = []
    for task in tasks:
        outcome = outcomes.get(task.id)
        member = membership.get(task.node) if membership else None
        found.append({
            "node": task.node, "hostname": member.hostname if member else None,
            "id": task.id, "task": task.task,
            "status": outcome.status if outcome else "pending",
            "duration_s": _seconds(outcome) if outcome else None,
            "result": outcome.result if outcome else None,
            "error": outcome.error if outcome else None})
    return found
