"""Ansible, through ansible-runner, for playbooks (the master's `apply` over its
inventory, and a node's run of one against itself); and the master's ping of every node.

Host keys are checked: the known_hosts file is built from the keys nodes registered
(local-vars/nodes/), never `StrictHostKeyChecking no`.  ssh connections are kept between
runs (ControlPersist, sockets under this node's own ssh dir), and artifacts are rotated
so an SD card does not fill up with them.  The ping proves what Ansible's ping module
proves (ssh with the registered host key, then Python) with one ssh per node over its
kept connection: no Ansible start-up in every round, a few milliseconds per node.
"""

from __future__ import annotations

import logging
import os
import shlex
import socket
import subprocess
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
_PYTHON = "/usr/bin/python3"  # on every node, as Raspberry Pi OS has it
# What the ping runs on a node, and what it answers.
_PONG = "pong"
_PING = [_PYTHON, "-c", f"print({_PONG!r})"]
# Seconds a ping round waits for answers beyond ssh's connect timeout.
_ANSWER_WITHIN = 10.0


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
                             "ansible_python_interpreter": _PYTHON},
                    "children": {name: {"hosts": {h: dict(v) for h, v in hosts.items()}}
                                 for name, hosts in groups.items()}}}


def _control_dir(settings: Settings) -> Path:
    control = settings.ssh_dir / "cp"
    control.mkdir(parents=True, exist_ok=True)
    return control


def _ssh_args(settings: Settings, known_hosts: Path) -> list[str]:
    """The ssh options of Ansible's connections and of the ping: host keys checked, the
    connection kept (ControlPersist, longer than the ping interval), a dead peer noticed
    within two seconds."""
    persist = max(60, round(2 * settings.ping_interval))
    args = ["-C", "-o", "ControlMaster=auto", "-o", f"ControlPersist={persist}s",
            "-o", f"UserKnownHostsFile={known_hosts}", "-o", "StrictHostKeyChecking=yes",
            "-o", "ServerAliveInterval=1", "-o", "ServerAliveCountMax=1"]
    return args + (["-o", "IdentitiesOnly=yes"] if settings.ssh_key else [])


def _connect_timeout(settings: Settings) -> int:
    return max(1, round(settings.ping_timeout))


def _environment(settings: Settings, known_hosts: Path) -> dict[str, str]:
    key = {"ANSIBLE_PRIVATE_KEY_FILE": str(settings.ssh_key)} if settings.ssh_key else {}
    return {
        **key,
        "ANSIBLE_HOST_KEY_CHECKING": "True",
        # Setting ANSIBLE_SSH_ARGS replaces Ansible's defaults: ControlPersist is back above.
        "ANSIBLE_SSH_ARGS": shlex.join(_ssh_args(settings, known_hosts)),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(_control_dir(settings)),
        "ANSIBLE_PIPELINING": "True",
        "ANSIBLE_TIMEOUT": str(_connect_timeout(settings)),
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
    # few, and the master's `apply` would delete the artifacts of this node's own
    # playbook still running, or the other way round.
    private = settings.ansible_dir / kind
    private.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    import ansible_runner  # on first use: an agent loads it only once it runs a playbook

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
    """What `ansible -m ping` proves of each of `hosts` ({ip: hostvars}): ssh answers with
    the host key the node registered, logs `user` in, and runs Python.  One ssh per host,
    all at once, each over the connection kept from the last round; per-host result in
    `.hosts`.  An unreachable host is a result, not an error of the run."""
    started = time.monotonic()
    ssh = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={_connect_timeout(settings)}",
           "-o", f"ControlPath={_control_dir(settings)}/%C", *_ssh_args(settings, known_hosts)]
    if settings.ssh_key:
        ssh += ["-i", str(settings.ssh_key)]
    running = {host: subprocess.Popen([*ssh, "-l", user, host, shlex.join(_PING)],
                                      stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
               for host in hosts}
    deadline = started + _connect_timeout(settings) + _ANSWER_WITHIN
    results = {host: _answer(host, process, deadline) for host, process in running.items()}
    worst = max((_RANK[r.status] for r in results.values()), default=0)
    return AnsibleRun(0 if worst <= _RANK["ok"] else 4 if worst == _RANK["unreachable"] else 2,
                      "successful" if worst <= _RANK["ok"] else "failed", results,
                      time.monotonic() - started)


def _answer(host: str, process: subprocess.Popen[str], deadline: float) -> HostResult:
    """How one host answered the ping: ssh's exit 255 is ssh's own failure (no route, a
    refused connection or login, a host key that does not match), anything else Python's."""
    try:
        out, err = process.communicate(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        for pipe in (process.stdout, process.stderr):  # whatever it left running holds them
            if pipe is not None:
                pipe.close()
        return HostResult(host, "unreachable", "no answer over ssh in time")
    why = err.strip().splitlines()[-1] if err.strip() else ""
    if process.returncode == 255:
        return HostResult(host, "unreachable", why or "ssh failed")
    if process.returncode or out.strip() != _PONG:
        return HostResult(host, "failed", f"{_PYTHON} answered exit {process.returncode}"
                                          f"{': ' + why if why else ''}")
    return HostResult(host, "ok")


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
