"""Ansible, through ansible-runner: the master's ping of every node, and playbooks (the
master's `apply` over its inventory, and a node's run of one against itself).

Host keys are checked: the known_hosts file is built from the keys nodes registered
(local-vars/nodes/), never `StrictHostKeyChecking no`.  ssh connections are kept between
runs (ControlPersist, sockets under this node's own ssh dir) so a ping round costs about
a second, and artifacts are rotated so an SD card does not fill up with them.
"""

from __future__ import annotations

import logging
import os
import shlex
import socket
import sys
import time
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from picluster.settings import Settings

__all__ = ["AnsibleRun", "HostResult", "answering", "inventory", "ping", "playbook",
           "playbook_here"]

log = logging.getLogger(__name__)

_KEEP_ARTIFACTS = 3


@dataclass(frozen=True)
class HostResult:
    host: str
    status: str  # "ok", "changed", "failed", "unreachable" or "skipped"
    message: str = ""
    task: str = ""  # the task whose result this is (for a failure: where the host stopped)


@dataclass(frozen=True)
class AnsibleRun:
    rc: int
    status: str  # ansible-runner's: "successful", "failed", "timeout", ...
    hosts: dict[str, HostResult] = field(default_factory=dict)
    seconds: float = 0.0
    # host -> Ansible's recap: {"ok": n, "changed": n, "failures": n, "skipped": n, ...}
    stats: dict[str, dict[str, int]] = field(default_factory=dict)
    facts: dict[str, dict[str, Any]] = field(default_factory=dict)  # host -> facts gathered

    @property
    def ok(self) -> bool:
        return all(h.status in ("ok", "changed", "skipped") for h in self.hosts.values())

    def as_dict(self) -> dict[str, Any]:
        return {"rc": self.rc, "status": self.status, "seconds": round(self.seconds, 3),
                "hosts": {h.host: {"status": h.status, "message": h.message}
                          for h in self.hosts.values()}}


def inventory(groups: Mapping[str, Mapping[str, Mapping[str, object]]], user: str,
              ) -> dict[str, Any]:
    """An inventory for ansible-runner: {group: {host: hostvars}} plus the ssh user."""
    return {"all": {"vars": {"ansible_user": user,
                             "ansible_python_interpreter": "/usr/bin/python3"},
                    "children": {name: {"hosts": {h: dict(v) for h, v in hosts.items()}}
                                 for name, hosts in groups.items()}}}


def _environment(settings: Settings, known_hosts: Path) -> dict[str, str]:
    control = settings.ssh_dir / "cp"
    control.mkdir(parents=True, exist_ok=True)
    ssh_args = ["-C", "-o", "ControlMaster=auto", "-o", "ControlPersist=60s",
                "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=1"]
    key = {}
    if settings.ssh_key:
        ssh_args += ["-o", "IdentitiesOnly=yes"]
        key = {"ANSIBLE_PRIVATE_KEY_FILE": str(settings.ssh_key)}
    return {
        **key,
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        # Setting ANSIBLE_SSH_ARGS replaces Ansible's defaults: ControlPersist is back above.
        "ANSIBLE_SSH_ARGS": shlex.join(ssh_args),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(control),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_TIMEOUT": str(max(1, round(settings.ping_timeout))),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        "ANSIBLE_LOCAL_TEMP": str(settings.ansible_dir / "tmp"),
        # ansible-runner runs the `ansible` executables: they sit beside this Python.
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
    }


_RANK = {"skipped": 0, "ok": 1, "changed": 2, "failed": 3, "unreachable": 4}


def _host_status(event: Mapping[str, Any]) -> str | None:
    data = event.get("event_data", {})
    result = data.get("res") if isinstance(data.get("res"), dict) else {}
    kind = event.get("event", "")
    if kind == "runner_on_unreachable":
        return "unreachable"
    if kind == "runner_on_failed":
        return "ok" if data.get("ignore_errors") else "failed"
    if kind == "runner_on_ok":
        return "changed" if result.get("changed") else "ok"
    return "skipped" if kind == "runner_on_skipped" else None


def _run(settings: Settings, known_hosts: Path, kind: str, **kwargs: Any) -> AnsibleRun:
    # One private data dir per kind of run: rotating artifacts deletes all but the newest
    # few, and the master's pings (every few seconds) would delete the artifacts of a
    # playbook still running.
    private = settings.ansible_dir / kind
    private.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    import ansible_runner  # the master's alone: a worker never loads it

    runner = ansible_runner.run(
        private_data_dir=str(private), envvars=_environment(settings, known_hosts),
        rotate_artifacts=_KEEP_ARTIFACTS, quiet=True, suppress_env_files=True, **kwargs)
    hosts: dict[str, HostResult] = {}
    facts: dict[str, dict[str, Any]] = {}
    for event in runner.events:
        data = event.get("event_data", {})
        host, status = data.get("host"), _host_status(event)
        if not host or status is None:
            continue
        gathered = data.get("res", {}).get("ansible_facts") if isinstance(
            data.get("res"), dict) else None
        if event.get("event") == "runner_on_ok" and isinstance(gathered, dict):
            facts.setdefault(host, {}).update(gathered)
        # A host's result is the worst of its tasks'.
        if _RANK[status] >= _RANK[hosts[host].status if host in hosts else "skipped"]:
            result = data.get("res")
            message = ""
            if status in ("failed", "unreachable") and isinstance(result, dict):
                message = str(result.get("msg") or result.get("stderr") or "").strip()
            hosts[host] = HostResult(host, status, message, str(data.get("task") or ""))
    stats: dict[str, dict[str, int]] = {}
    for kind, counts in (runner.stats or {}).items():
        for host, count in (counts or {}).items():
            stats.setdefault(host, {})[kind] = count
    return AnsibleRun(runner.rc, runner.status, hosts, time.monotonic() - started, stats,
                      facts)


def answering(hosts: Iterable[str], timeout: float, port: int = 22) -> set[str]:
    """The hosts whose ssh port accepts a TCP connection within `timeout`: a host that
    does not is unreachable now, as Ansible would find after its whole-second timeout."""
    def answers(host: str) -> bool:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
        except OSError:
            return False
        return True

    hosts = list(hosts)
    if not hosts:
        return set()
    with ThreadPoolExecutor(max_workers=min(32, len(hosts))) as pool:
        return {host for host, ok in zip(hosts, pool.map(answers, hosts), strict=True) if ok}


def ping(settings: Settings, hosts: Mapping[str, Mapping[str, object]], user: str,
         known_hosts: Path) -> AnsibleRun:
    """`ansible -m ping` against `hosts` ({ip: hostvars}); per-host result in `.hosts`.
    An unreachable host is a result, not an error of the run."""
    return _run(settings, known_hosts, "ping", module="ping", host_pattern="all",
                inventory=inventory({"nodes": hosts}, user), forks=max(1, len(hosts)))


def playbook(settings: Settings, path: Path, inventory_path: Path, known_hosts: Path, *,
             limit: str | None = None, check: bool = False,
             extravars: Mapping[str, object] | None = None) -> AnsibleRun:
    """Run the playbook at `path` against the rendered inventory."""
    cmdline = "--check" if check else None
    return _run(settings, known_hosts, "playbook", playbook=str(path.resolve()),
                inventory=str(inventory_path.resolve()), limit=limit, cmdline=cmdline,
                extravars=dict(extravars or {}), forks=10)


def playbook_here(settings: Settings, path: Path, inventory: Mapping[str, Any],
                  host: str) -> AnsibleRun:
    """Run the playbook at `path` on this machine only: `host`, whose entry in `inventory`
    connects locally.  The other hosts of `inventory` only fill its groups (an NFS server
    exports to the nodes, a client mounts the master's share); nothing connects to them."""
    # A private data dir of its own: the master's `apply` rotates the artifacts of its
    # runs under "playbook", and may run while this node runs one of its own.
    return _run(settings, settings.cluster_known_hosts, "here", playbook=str(path.resolve()),
                inventory=dict(inventory), limit=host, forks=1)
