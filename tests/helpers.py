"""Shared test helpers: a throwaway cluster repository, node configs, the real CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from picluster import layout
from picluster.gitstore import ClusterRepo, Snapshot, init_bare
from picluster.settings import Settings
from picluster.signing import signer_line
from picluster.tasks import Outcome

if TYPE_CHECKING:
    from picluster.lab import Lab, NodeStatus
    from picluster.lab.hosts import Node


def keypair(path: Path, comment: str = "test", passphrase: str = "") -> Path:
    """An ed25519 keypair at `path` (private) and `path`.pub."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", passphrase, "-C", comment,
                    "-f", str(path)], check=True)
    return path


def mac_of(number: int) -> str:
    return f"b827eb{number:06x}"


def ip_of(number: int) -> str:
    return f"198.18.{number // 250}.{number % 250 + 2}"


def run_cli(*args: str, config: Path | None = None, timeout: float = 120,
            check: bool = False) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "picluster"]
    if config is not None:
        command += ["--config", str(config)]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=timeout,
                          check=check, stdin=subprocess.DEVNULL)


@dataclass
class Cluster:
    """A bare cluster repository with a trusted operator key, and nodes' boot configs."""

    root: Path
    bare: Path
    operator_key: Path
    agents: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def node_config(self, number: int, **extra: object) -> Path:
        """Write the boot config of a node with a pinned MAC and IP; return its path."""
        values: dict[str, object] = {"repo": self.bare, "home": self.root / f"node{number}",
                                     "mac": mac_of(number), "ip": ip_of(number),
                                     "poll_interval": 0.5, "master_grace": 0}
        values.update(extra)
        path = self.root / f"node{number}.conf"
        path.write_text("".join(f"{k} = {v}\n" for k, v in values.items()))
        return path

    def operator_config(self) -> Path:
        path = self.root / "operator.conf"
        if not path.exists():
            path.write_text(f"repo = {self.bare}\nhome = {self.root / 'operator'}\n"
                            f"signing_key = {self.operator_key}\n")
        return path

    def operator_repo(self) -> ClusterRepo:
        return ClusterRepo.from_settings(Settings.load(self.operator_config()), "operator")

    def snapshot(self) -> Snapshot:
        return self.operator_repo().sync()

    def start_agent(self, config: Path, *command: str) -> subprocess.Popen[bytes]:
        """Run `picluster --config config <command>` (default: agent), logging to the
        config's path with the suffix .log; stop_agents stops it."""
        log = config.with_suffix(".log").open("ab")
        agent = subprocess.Popen([sys.executable, "-m", "picluster", "--config", str(config),
                                  *(command or ("agent",))], stdout=log, stderr=log,
                                 stdin=subprocess.DEVNULL)
        self.agents.append(agent)
        return agent

    def stop_agents(self) -> None:
        for agent in self.agents:
            if agent.poll() is None:
                agent.send_signal(signal.SIGINT)
        for agent in self.agents:
            try:
                agent.wait(timeout=20)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()
        self.agents.clear()


def make_cluster(root: Path) -> Cluster:
    key = keypair(root / "operator_key", "operator")
    files = layout.seed_files()
    files[layout.ALLOWED_SIGNERS] += signer_line(key.with_suffix(".pub").read_text(),
                                                 "operator") + "\n"
    init_bare(root / "cluster.git", files, "init")
    return Cluster(root, root / "cluster.git", key)


def master_of(lab: Lab) -> NodeStatus:
    """The status of the lab's master, from one lab.status()."""
    return next(n for n in lab.status() if n.role == "master")


def status_of(lab: Lab, name: str) -> NodeStatus:
    """The status of the lab's node `name`, from one lab.status()."""
    return {n.name: n for n in lab.status()}[name]


_READ_XML = """
import re, socket, sys
with socket.create_connection((sys.argv[1], 8651), timeout=3) as sock:
    xml = b"".join(iter(lambda: sock.recv(65536), b""))
print(" ".join(h.decode() for h in re.findall(rb'<HOST NAME="([^"]+)"', xml)))
"""


def gmetad_hosts(lab: Lab, name: str) -> set[str]:
    """The hosts in the XML of `name`'s gmetad (port 8651), read inside the lab."""
    node = lab.node(name)
    done = lab.exec(name, ["python3", "-c", _READ_XML, node.ip], capture_output=True,
                    text=True)
    return set(done.stdout.split())


def outcomes(lab: Lab, node: Node, task: str) -> list[Outcome]:
    """The outcomes of `task` tasks the lab's `node` pushed, oldest first."""
    snapshot = lab._observer().sync()
    folder = f"{layout.queue_dir(node.mac)}/done"
    found = [Outcome.from_json(snapshot.read(f"{folder}/{name}") or "")
             for name in snapshot.listdir(folder, files=True)]
    return sorted((o for o in found if o.task == task), key=lambda o: o.started_at or "")


def wait_until(condition: Callable[[], object], timeout: float, what: str,
               interval: float = 0.2) -> object:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
