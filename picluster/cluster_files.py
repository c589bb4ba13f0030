"""The `hosts` task: the files every node needs to reach the others, from the master.

*   The MPI hostfile at `Settings.cluster_hostfile`, the same path on every node: `<ip>
    slots=<cores>`, the master first, so `mpirun` works from any node.
*   A block of /etc/hosts (`Settings.etc_hosts`): every node's IP and name.
*   A block of ssh's system-wide known hosts (`Settings.ssh_known_hosts`): every node's
    registered host key, under its IP and name, so ssh and mpirun check every node.
*   The NFS server the clients mount (the master), in the node's state file.

Only picluster's block of a system file is rewritten, between its BEGIN and END lines;
every other line stays as the operator wrote it.  The files are rendered from checked
values only (addresses, names, host keys), whoever sends the task.  The node reports the
version it installed (`cluster_files`, a digest of the arguments) in its facts; the master
sends a new one when membership changes (picluster.master).
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from picluster import layout
from picluster.files import install_file
from picluster.identity import identify
from picluster.registry import HOST_KEY_PATTERN, Member, Membership, registration_ops
from picluster.schema import Int, IPv4, List, Record, Rule, Schema, Str
from picluster.settings import Settings
from picluster.tasks import Catalogue, TaskContext

__all__ = ["BEGIN", "END", "SCHEMA", "TASK", "applied_digest", "args_for", "catalogue",
           "digest", "install", "managed_block", "reported"]

TASK = "hosts"
catalogue = Catalogue()  # the tasks this module adds to a node's catalogue: `hosts`

BEGIN = "# BEGIN picluster: the cluster's nodes, kept by picluster; edits here are replaced"
END = "# END picluster"

_HOSTFILE_HEADER = ("# The cluster's MPI hostfile, from the master (picluster's `hosts` "
                    "task); rewritten when nodes come and go.\n")


@dataclass(frozen=True, kw_only=True)
class _Hostname(Rule):
    """A host name, or "" for none: a host's arguments are checked again with their
    defaults filled in."""

    def describe(self) -> str:
        return "a host name (letters, digits, '-', dot-separated labels) or nothing"

    def accepts(self, value: Any) -> str:
        if not isinstance(value, str):
            raise TypeError
        if value and (len(value) > 253 or not layout.valid_hostname(value, dotted=True)):
            raise ValueError
        return value


_HOST = Schema({
    "ip": IPv4(),
    "slots": Int(minimum=1, maximum=1024),
    "name": _Hostname(default=""),
    "key": Str(max_length=1024, pattern=f"(?:{HOST_KEY_PATTERN})?",
               what="an ssh host key ('type base64') or nothing", default=""),
})

SCHEMA = Schema({
    "hosts": List(item=Record(schema=_HOST), max_length=1024),  # the master first
    "nfs_server": IPv4(),
})


def args_for(membership: Membership) -> dict[str, Any]:
    """The cluster files of `membership` (whose master must be registered), as the `hosts`
    task takes them: the master first, then the workers by address."""
    master = membership.master_member
    assert master is not None
    workers = sorted(membership.workers, key=lambda m: ipaddress.IPv4Address(m.ip))

    def host(member: Member) -> dict[str, Any]:
        entry: dict[str, Any] = {"ip": member.ip, "slots": member.cores}
        if member.hostname != member.ip:  # it reported a plain name
            entry["name"] = member.hostname
        if member.host_key:
            entry["key"] = member.host_key
        return entry

    return SCHEMA.check({"hosts": [host(m) for m in (master, *workers)],
                         "nfs_server": master.ip})


def digest(args: Mapping[str, Any]) -> str:
    """The version of the cluster files `args` make: nodes report it, the master compares."""
    checked = SCHEMA.check(dict(args))
    return hashlib.sha256(json.dumps(checked, sort_keys=True, separators=(",", ":"))
                          .encode()).hexdigest()[:12]


def managed_block(text: str, lines: Sequence[str]) -> str:
    """`text` with picluster's block holding `lines`: in place of the block it has (the
    last BEGIN before the first END after it), else appended; every other line as it was."""
    block = [BEGIN, *lines, END]
    rows = text.splitlines()
    start = None
    for index, row in enumerate(rows):
        if row.strip() == BEGIN:
            start = index
        elif row.strip() == END and start is not None:
            rows[start:index + 1] = block
            return "\n".join(rows) + "\n"
    return "\n".join([*rows, *block]) + "\n"


def _keep_block(path: Path, lines: Sequence[str]) -> bool:
    """Rewrite picluster's block of the system file at `path` (created when missing, its
    mode kept); True when anything changed."""
    try:
        text, mode = path.read_text(), path.stat().st_mode & 0o7777
    except FileNotFoundError:
        text, mode = "", 0o644
    return install_file(path, managed_block(text, lines), mode=mode)


def install(settings: Settings, args: Mapping[str, Any]) -> list[str]:
    """Install the cluster files `args` describe on this node; the paths that changed."""
    checked = SCHEMA.check(dict(args))
    hosts = checked["hosts"]
    hostfile = _HOSTFILE_HEADER + "".join(f"{h['ip']} slots={h['slots']}\n" for h in hosts)
    names = [f"{h['ip']} {h['name']}" for h in hosts if h["name"]]
    keys = [f"{h['ip']}{',' + h['name'] if h['name'] else ''} {h['key']}"
            for h in hosts if h["key"]]
    state = json.dumps({"version": digest(checked), "nfs_server": checked["nfs_server"],
                        "nodes": len(hosts)}, indent=2) + "\n"
    # In this order: the version is reported once every file is in place.
    changed = {settings.cluster_hostfile: install_file(settings.cluster_hostfile, hostfile),
               settings.etc_hosts: _keep_block(settings.etc_hosts, names),
               settings.ssh_known_hosts: _keep_block(settings.ssh_known_hosts, keys),
               settings.cluster_files_state: install_file(settings.cluster_files_state, state)}
    return [os.fspath(path) for path, did in changed.items() if did]


def applied_digest(settings: Settings) -> str | None:
    """The version of the cluster files this node installed last; None before the first."""
    try:
        version = json.loads(settings.cluster_files_state.read_text())["version"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return version if isinstance(version, str) else None


def reported(facts: Mapping[str, object]) -> str | None:
    """The version a node's facts report (facts are data: anything odd counts as none)."""
    version = facts.get("cluster_files")
    return version if isinstance(version, str) else None


@catalogue.task(TASK, SCHEMA)
def hosts(args: dict[str, Any], context: TaskContext) -> dict[str, Any]:
    """Install the cluster files the master sent; the node's facts then report their
    version."""
    settings = context.settings
    changed = install(settings, args)
    node = identify(settings)
    context.include(registration_ops(node, context.facts(), key=settings.ssh_key))
    return {"version": digest(args), "nodes": len(args["hosts"]),
            "nfs_server": args["nfs_server"], "changed": changed}
