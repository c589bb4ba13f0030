"""The `playbook` task: a node runs one of the playbooks picluster ships against itself.
Also each role's list of playbooks (`ROLES`), in this one place.

The master sends every node the playbooks of its role as signed `playbook` tasks
(picluster.master converges them).  The node runs one with ansible-runner against itself
(a local connection), in its own group, master or nodes, with the host vars the master's
inventory gives it and the groups the playbook reads (`INPUTS`: the NFS server exports
to the nodes, a client mounts the master's share).  Only shipped playbooks run, by name:
the schema takes no other, and the text comes from the installed package, never from
the repository.

What a node applied is a digest of the playbook's text, the shipped defaults
(group_vars) and the arguments it ran with; it reports it in its facts (`playbooks`) and
the master compares.  A node that cannot change its own system (no systemd: a lab's
network-namespace node; `own_system` in group_vars decides) runs what the playbooks mark
so in check mode, and so does a playbook that finds the node lacks what it needs (the NFS
ones, on a kernel without NFS): the outcome and the facts say so, never a plain "ok".
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from picluster import ansible, layout
from picluster.apply import playbook_dir, resolve
from picluster.files import install_file
from picluster.identity import NodeIdentity, identify
from picluster.registry import SSH_USER_PATTERN, ClusterVars, Membership, registration_ops
from picluster.schema import IPv4, List, Schema, Str
from picluster.settings import Settings
from picluster.tasks import Catalogue, TaskContext, TaskFailed

__all__ = [
    "AFTER_MASTER",
    "INPUTS",
    "ROLES",
    "SCHEMA",
    "TASK",
    "Reported",
    "applied",
    "args_for",
    "catalogue",
    "digest",
    "reported",
    "run",
]

TASK = "playbook"
catalogue = Catalogue()  # the tasks this module adds to a node's catalogue: `playbook`

# The playbooks each group (role) applies to itself, in the order site.yml runs them.
# nfs-client.yml plays on the nodes only, nfs-server.yml on the master only.
ROLES: dict[str, tuple[str, ...]] = {
    "master": ("core", "sudoers", "openmpi", "nfs-server", "ganglia"),
    "nodes": ("core", "sudoers", "openmpi", "nfs-client", "ganglia"),
}

# What each shipped playbook reads of the cluster besides its own host: `master` (the
# master's address, groups['master']), `nodes` (the workers', groups['nodes']) and `user`
# (ssh_user, ansible_user and so cluster_user).  Only these reach its run and its digest,
# so a join reruns only what depends on the nodes (a test checks the playbooks' text).
INPUTS: dict[str, tuple[str, ...]] = {
    "core": (),
    "ganglia": (),
    "nfs-client": ("master",),
    "nfs-server": ("nodes", "user"),
    "openmpi": (),
    "site": ("master", "nodes", "user"),
    "sudoers": ("user",),
}

# A worker's playbook that waits until the master applied one of its own, as it should be
# now: a share is exported to a node before the node mounts it.
AFTER_MASTER: dict[str, str] = {"nfs-client": "nfs-server"}

SCHEMA = Schema({
    "playbook": Str(max_length=32, pattern="|".join(map(re.escape, INPUTS)),
                    what=f"a playbook picluster ships ({', '.join(INPUTS)})"),
    "group": Str(max_length=6, pattern="master|nodes", what="master or nodes"),
    "master": List(item=IPv4(), max_length=1, default=[]),
    "nodes": List(item=IPv4(), max_length=4096, default=[]),
    "user": Str(max_length=32, pattern=SSH_USER_PATTERN, what="a plain user name",
                default="root"),
})

_LOCK_WAIT = 3600.0  # seconds a run waits for the one before it (a slow apt install)
_MESSAGE = 400  # characters of a failure's message kept in the outcome and the facts
_IMPORT = re.compile(r"import_playbook:\s*['\"]?([A-Za-z0-9_.-]+\.yml)")


def args_for(name: str, group: str, membership: Membership,
             cluster: ClusterVars) -> dict[str, Any]:
    """The arguments of playbook `name` for a node of `group` (its defaults filled in):
    what the playbook reads of `membership` and `cluster`, and nothing else."""
    given: dict[str, Any] = {"playbook": name, "group": group}
    master = membership.master_member
    if "master" in INPUTS[name] and master is not None:
        given["master"] = [master.ip]
    if "nodes" in INPUTS[name]:
        given["nodes"] = sorted((m.ip for m in membership.workers), key=ipaddress.IPv4Address)
    if "user" in INPUTS[name]:
        given["user"] = cluster.ssh_user
    return catalogue.check(TASK, given)


def _sources(name: str) -> list[Path]:
    """The files a run of playbook `name` reads: the playbook, those it imports, and the
    shipped defaults."""
    path = resolve(name)
    imported = [resolve(found) for found in _IMPORT.findall(path.read_text())]
    return [path, *imported, *sorted((playbook_dir() / "group_vars").glob("*.yml"))]


def digest(args: Mapping[str, Any]) -> str:
    """What a node applies when it runs `args`: the playbook's text, the defaults and the
    arguments (checked, defaults filled in).  The node reports it; the master compares."""
    checked = catalogue.check(TASK, dict(args))
    text = hashlib.sha256()
    for path in _sources(checked["playbook"]):
        text.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    text.update(json.dumps(checked, sort_keys=True, separators=(",", ":")).encode())
    return text.hexdigest()[:12]


# -- what a node applied -------------------------------------------------------------------


@dataclass(frozen=True)
class Reported:
    """A playbook as a node reports it: the digest it applied last (None: never), whether
    that run was in check mode, and its last failure since (digest, task, message)."""

    applied: str | None = None
    check: bool = False
    failed: dict[str, str] | None = None


def _read_state(settings: Settings) -> dict[str, dict[str, Any]]:
    try:
        state = json.loads(settings.playbook_state.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in state.items() if isinstance(v, dict)} \
        if isinstance(state, dict) else {}


def applied(settings: Settings) -> dict[str, dict[str, Any]]:
    """The `playbooks` fact: per playbook this node ran, the digest it applied, whether in
    check mode, and the failure of a later run.  Stable: no times, so an unchanged node
    makes no commit."""
    return _read_state(settings)


def reported(facts: Mapping[str, object], name: str) -> Reported:
    """Playbook `name` as a node's facts report it (facts are data: odd values count as
    nothing)."""
    playbooks = facts.get("playbooks")
    entry = playbooks.get(name) if isinstance(playbooks, dict) else None
    if not isinstance(entry, dict):
        return Reported()
    failed = entry.get("failed")
    return Reported(
        entry["applied"] if isinstance(entry.get("applied"), str) else None,
        entry.get("check") is True,
        {k: str(v) for k, v in failed.items() if k in ("digest", "task", "message")}
        if isinstance(failed, dict) else None)


def _record(settings: Settings, name: str, result: dict[str, Any]) -> None:
    """Note the run in this node's state (the `playbooks` fact): a success replaces what
    was applied; a failure keeps it, with the failure beside it."""
    state = _read_state(settings)
    entry = state.get(name, {})
    if result["status"] == "failed":
        entry["failed"] = {"digest": result["digest"], "task": result.get("failed_task", ""),
                           "message": result.get("message", "")}
    else:
        entry = {"applied": result["digest"], "check": result["mode"] != "real"}
    state[name] = entry
    install_file(settings.playbook_state, json.dumps(state, indent=2, sort_keys=True) + "\n")


# -- running one -----------------------------------------------------------------------------


def _inventory(args: Mapping[str, Any], node: NodeIdentity, hostname: str) -> dict[str, Any]:
    """The inventory the master's would be, seen from this node: itself in its group,
    connecting locally, and the other hosts the playbook reads, never contacted."""
    groups: dict[str, dict[str, dict[str, object]]] = {
        "master": {ip: {} for ip in args["master"] if ip != node.ip},
        "nodes": {ip: {} for ip in args["nodes"] if ip != node.ip}}
    me: dict[str, object] = {"ansible_connection": "local", "mac": node.mac}
    if layout.valid_hostname(hostname, dotted=True):
        me["hostname"] = hostname
    groups[args["group"]][node.ip] = me
    return ansible.inventory(groups, args["user"])


def _result(args: Mapping[str, Any], applied_digest: str, run: ansible.AnsibleRun,
            ip: str, settings: Settings) -> dict[str, Any]:
    host = run.hosts.get(ip)
    facts = run.facts.get(ip, {})
    manager = facts.get("ansible_service_mgr")
    # A playbook's own reason to only check (the NFS ones, on a kernel without NFS).
    reason = facts.get("picluster_check_mode")
    reason = reason if isinstance(reason, str) and reason else None
    mode = "unknown" if not manager else "check" if manager != "systemd" or reason else "real"
    stats = run.stats.get(ip, {})
    result: dict[str, Any] = {
        "playbook": args["playbook"], "group": args["group"], "digest": applied_digest,
        "status": host.status if host else "failed", "mode": mode, "service_mgr": manager,
        "stats": {"ok": stats.get("ok", 0), "changed": stats.get("changed", 0),
                  "failed": stats.get("failures", 0), "skipped": stats.get("skipped", 0),
                  "unreachable": stats.get("dark", 0), "ignored": stats.get("ignored", 0)},
        "rc": run.rc, "seconds": round(run.seconds, 1)}
    if mode == "check" and manager != "systemd":
        result["note"] = (f"this node cannot change its own system (its service manager is "
                          f"{manager}, not systemd): the tasks the playbook marks so ran in "
                          "check mode and changed nothing")
    elif mode == "check":
        result["note"] = f"{reason}: the playbook ran in check mode and changed nothing"
    if host is None:
        result["message"] = (f"no host ran the playbook (ansible-playbook exit {run.rc}); its "
                             f"output is under {settings.ansible_dir / 'here' / 'artifacts'}")
    elif host.status in ("failed", "unreachable") or run.status != "successful":
        result["status"] = "failed"
        result["failed_task"] = host.task
        result["message"] = (host.message or f"ansible-playbook exit {run.rc} "
                                              f"({run.status})")[:_MESSAGE]
    return result


def run(settings: Settings, args: Mapping[str, Any], node: NodeIdentity,
        hostname: str) -> dict[str, Any]:
    """Run playbook `args["playbook"]` on this node, one run at a time, and note it in the
    node's state; the result says how it went (`status` "failed" included)."""
    checked = catalogue.check(TASK, dict(args))
    path = resolve(checked["playbook"])  # a shipped one: the schema takes nothing else
    applied_digest = digest(checked)
    # The node's own runs, in the order they were queued; not `apply`'s lock, which an
    # operator's run from the master holds (apt waits for its own lock, and the two keep
    # their artifacts apart).
    settings.ansible_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(settings.ansible_dir / "here.lock")
    try:
        lock.acquire(timeout=_LOCK_WAIT)
    except Timeout:
        raise TimeoutError(f"another playbook run held {lock.lock_file} for "
                           f"{_LOCK_WAIT:.0f} s") from None
    try:
        outcome = ansible.playbook_here(settings, path, _inventory(checked, node, hostname),
                                        node.ip)
        result = _result(checked, applied_digest, outcome, node.ip, settings)
        _record(settings, checked["playbook"], result)
    finally:
        lock.release()
    return result


@catalogue.task(TASK, SCHEMA)
def playbook(args: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Run a shipped playbook against this node.  A failed run is an `error` outcome
    that keeps the result: per-host stats, the failed task and its message."""
    settings = context.settings
    node = identify(settings)
    result = run(settings, args, node, socket.gethostname())
    if result["status"] == "failed":
        where = f" at '{result['failed_task']}'" if result.get("failed_task") else ""
        raise TaskFailed(f"playbook {args['playbook']} failed{where}: {result['message']}",
                         result)
    context.include(registration_ops(node, context.facts(), key=settings.ssh_key))
    return result
