"""The Lab: one directory, and everything a lab is.

The directory holds its keys, the git server's bare repository, every node's boot
partition and home, logs and pid files; the names of its namespaces derive from it
(picluster.lab.net).  A Lab builds its hosts from those pieces: the wire (net), the
processes (procs), the files and configs (hosts); and it answers for the cluster: has
it converged, what is each node's status.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from picluster.files import install_file
from picluster.gitstore import ClusterRepo, GitError, Snapshot
from picluster.lab.errors import LabError, run
from picluster.lab.hosts import (
    Host,
    Node,
    render_lab_settings,
    render_node_config,
    render_sshd_config,
)
from picluster.lab.machine import preflight, search_path
from picluster.lab.net import (
    GIT_IP,
    MAX_NODES,
    Network,
    lab_dir,
    lab_prefix,
    namespace,
    node_ip,
    node_mac,
)
from picluster.lab.procs import Processes, tail
from picluster.lab.status import Convergence, LabState, NodeStatus, parse_hostfile
from picluster.layout import MASTER, ip_path
from picluster.provision import anchor_text

__all__ = ["GIT_MODES", "Lab", "Report"]

GIT_MODES = ("ssh", "daemon")

_SSH_PORT = 22
_GIT_DAEMON_PORT = 9418
_STATE = "lab.json"
# Everything `up` creates inside the lab directory; `down` removes exactly these.
_OWNED = (_STATE, "keys", "git", "nodes", "observer", "operator", "operator.conf",
          "known_hosts")
# ssh's ControlPath (Settings.ssh_command) is <home>/ssh/cm-<40 hex>, and ssh binds it
# with a 17-character temporary suffix first: all within a unix socket's 107 bytes.
_CONTROL_PATH_EXTRA = len("/cm-") + 40 + 17
_SOCKET_PATH_MAX = 107

Report = Callable[[str, int, int], None]
"""Progress callback: (what is happening, how many done, out of how many; 0: unknown)."""


def _quiet(_step: str, _done: int, _total: int) -> None:
    """The Report of a caller that does not watch."""


class Lab:
    """A lab in one directory.  Constructing one touches nothing; `up` builds it."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.dir = lab_dir(directory)
        self.prefix = lab_prefix(self.dir)
        self.net = Network(self.prefix)
        self.procs = Processes(self.prefix, self.dir)
        self.bridge_ns = self.net.bridge_ns
        self.state_file = self.dir / _STATE
        self.keys_dir = self.dir / "keys"
        self.cluster_key = self.keys_dir / "cluster"  # every node's ssh identity
        self.operator_key = self.keys_dir / "operator"  # signs tasks
        self.bare_repo = self.dir / "git" / "cluster.git"
        self.known_hosts = self.dir / "known_hosts"  # every lab host's key, for mpirun
        self.operator_config = self.dir / "operator.conf"
        self.git_host = Host("git", namespace(self.prefix, "git"), GIT_IP, "git",
                             self.dir / "git")

    def __repr__(self) -> str:
        return f"Lab({str(self.dir)!r})"

    # -- what the lab is ----------------------------------------------------------------

    def state(self) -> LabState:
        try:
            return LabState(**json.loads(self.state_file.read_text()))
        except FileNotFoundError:
            raise LabError(f"no lab in {self.dir}; start one with `picluster lab up "
                           f"--dir {self.dir}`") from None
        except (ValueError, TypeError) as error:
            raise LabError(f"{self.state_file} is damaged ({error}); remove the lab with "
                           f"`picluster lab down --dir {self.dir}`") from None

    def _node(self, index: int) -> Node:
        return Node(name=f"pi-{index}", netns=namespace(self.prefix, f"n{index}"),
                    ip=node_ip(index), port=f"n{index}", dir=self.dir / "nodes" / f"pi-{index}",
                    mac=node_mac(self.prefix, index), index=index)

    @property
    def nodes(self) -> list[Node]:
        return [self._node(index) for index in range(1, self.state().nodes + 1)]

    def node(self, name: str) -> Node:
        """The node called `name` ('pi-3', or just '3')."""
        nodes = {node.name: node for node in self.nodes}
        found = nodes.get(name) or nodes.get(f"pi-{name}")
        if found is None:
            raise LabError(f"no node '{name}' in the lab at {self.dir}; its nodes are "
                           f"{', '.join(nodes)}")
        return found

    def _observer(self) -> ClusterRepo:
        # The lab reads the cluster as any node would: through a clone of its own.
        return ClusterRepo(url=str(self.bare_repo), clone_dir=self.dir / "observer" / "repo",
                           writer="lab-observer")

    def pids(self) -> dict[str, list[int]]:
        """Every living process of the lab, by namespace (what bench/ measures)."""
        return {netns: sorted(self.procs.pids([netns])) for netns in self.net.namespaces()}

    def agent_pid(self, node: Node) -> int | None:
        return self.procs.running(node, "agent")

    # -- building -----------------------------------------------------------------------

    def _keygen(self, path: Path, comment: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path))

    def _power_on(self, host: Host) -> None:
        """Plug the host's cable in and start its holder: the host is up, running nothing."""
        self.net.set_port(host, up=True)
        self.procs.start_holder(host)

    def _start_sshd(self, host: Host, authorized_keys: Path) -> None:
        host.sshd_config.write_text(render_sshd_config(host, authorized_keys))
        # -D: sshd stays the process spawn recorded; -e: its log goes to sshd.log.
        sshd = shutil.which("sshd", path=search_path()) or "/usr/sbin/sshd"
        self.procs.spawn(host, "sshd", [*self.procs.enter(host, host.dir), sshd, "-D", "-e",
                                        "-f", str(host.sshd_config)],
                         ready=lambda _: self.procs.listening(host, _SSH_PORT))

    def _serve_git(self, mode: str) -> None:
        host = self.git_host
        self._power_on(host)
        if mode == "ssh":
            self._start_sshd(host, Path(f"{self.cluster_key}.pub"))
            return
        # The daemon is the server end of git, not a client of the cluster repository.
        self.procs.spawn(host, "git-daemon", [
            *self.procs.enter(host, host.dir), "git", "daemon", f"--listen={host.ip}",
            "--reuseaddr", "--export-all", "--enable=receive-pack", "--informative-errors",
            f"--base-path={self.bare_repo.parent}", str(self.bare_repo.parent)],
            ready=lambda _: self.procs.listening(host, _GIT_DAEMON_PORT))

    def _init_repo(self) -> None:
        # The core's own commands seed the repository, so the lab tests what operators run:
        # the operator signs their tasks, the master signs its own with the cluster key.
        for args in (["init-repo", str(self.bare_repo), "--signer",
                      f"{self.operator_key}.pub", "--name", "operator"],
                     ["--config", str(self.operator_config), "trust",
                      f"{self.cluster_key}.pub", "--name", "cluster"]):
            result = subprocess.run([sys.executable, "-m", "picluster", *args],
                                    capture_output=True, text=True, env=self.procs.env(),
                                    check=False)
            if result.returncode:
                raise LabError(f"`picluster {' '.join(args)}` failed:\n"
                               f"{result.stderr.strip() or result.stdout.strip()}")

    def _boot(self, node: Node) -> None:
        """Switch on the node's software: its first-boot command, run as on a Pi.  Lab
        nodes have no systemd; --foreground makes sure `boot` never hands the node over to
        this machine's, should it run one."""
        self.procs.spawn(node, "agent", [*self.procs.enter(node, node.home), sys.executable,
                                         "-m", "picluster", "--config", str(node.config),
                                         "boot", "--foreground"])

    def _start_node(self, node: Node) -> None:
        self._power_on(node)
        # The master logs in with the key that `boot` authorizes: until it has, nobody can.
        self._start_sshd(node, node.settings().authorized_keys)
        self._boot(node)

    def _prepare_node(self, node: Node, repo: str, *, master: bool, fast: bool) -> None:
        """Write the node's boot partition (the cluster key, the operator's key as its
        trust anchor, the config), and seed its known_hosts with the git server's key, so
        the node's git over ssh checks the server strictly from the first fetch."""
        install_file(node.ssh_key, self.cluster_key.read_bytes(), mode=0o600)
        install_file(node.anchor, anchor_text(
            Path(f"{self.operator_key}.pub").read_text(), "operator"))
        node.config.write_text(render_node_config(node, repo, master=master, fast=fast))
        self._trust_git_host(node)

    def _trust_git_host(self, node: Node) -> None:
        settings = node.settings()
        settings.known_hosts.parent.mkdir(parents=True, exist_ok=True)
        settings.known_hosts.write_text(self._known_host(self.git_host))

    def _known_host(self, host: Host) -> str:
        key_type, key = Path(f"{host.host_key}.pub").read_text().split()[:2]
        return f"{host.ip} {key_type} {key}\n"

    def _leftovers(self) -> list[str]:
        found = [name for name in _OWNED if (self.dir / name).exists()]
        return found + self.net.namespaces()

    def up(self, nodes: int, *, master_index: int | None = None, fast: bool = False,
           git: str = "ssh", timeout: float = 180.0, report: Report = _quiet) -> Convergence:
        """Build and boot a lab of `nodes` nodes; return once the cluster converged.

        On an error the lab is left as it is, to be looked at; `down` removes it.
        """
        problems = preflight()
        if problems:
            raise LabError("\n".join(problems), code=2)
        if not 1 <= nodes <= MAX_NODES:
            raise LabError(f"--nodes must be between 1 and {MAX_NODES}", code=2)
        if master_index is not None and not 1 <= master_index <= nodes:
            raise LabError(f"--master-index must be between 1 and {nodes}", code=2)
        if git not in GIT_MODES:
            raise LabError(f"--git must be one of {', '.join(GIT_MODES)}", code=2)
        longest = len(str(self._node(nodes).home / "ssh")) + _CONTROL_PATH_EXTRA
        if longest > _SOCKET_PATH_MAX:
            raise LabError(f"the lab directory {self.dir} is too long: ssh's control sockets "
                           f"under it would exceed {_SOCKET_PATH_MAX} bytes; use a shorter "
                           "--dir", code=2)
        leftovers = self._leftovers()
        if leftovers:
            raise LabError(f"a lab already exists in {self.dir} ({', '.join(leftovers)}); "
                           f"remove it first with `picluster lab down --dir {self.dir}`")

        url = (f"ssh://root@{GIT_IP}{self.bare_repo}" if git == "ssh"
               else f"git://{GIT_IP}/{self.bare_repo.name}")
        self.dir.mkdir(parents=True, exist_ok=True)
        state = LabState(nodes, master_index, fast, git, url)
        self._save(state)
        members = self.nodes

        report("generating keys", 0, 0)
        self._keygen(self.cluster_key, "picluster-lab-cluster")
        self._keygen(self.operator_key, "picluster-lab-operator")
        for host in [self.git_host, *members]:
            self._keygen(host.host_key, f"root@{host.name}")
        self.known_hosts.write_text("".join(self._known_host(host)
                                            for host in [self.git_host, *members]))
        self.operator_config.write_text(
            f"# the operator's config (enqueue, status): picluster --config {self.operator_config}"
            f"\nrepo = {self.bare_repo}\nhome = {self.dir / 'operator'}\n"
            f"signing_key = {self.operator_key}\n")

        report("building the network", 0, 0)
        self.net.add_switch()
        self.net.add_host(self.git_host, None)
        for node in members:
            self.net.add_host(node, node.mac)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege separation

        report("starting the git server", 0, 0)
        self._init_repo()
        self._serve_git(git)

        # The designated master boots first, as an operator would power it on first: a
        # designated master never takes `master` from a node that registered before it.
        ordered = sorted(members, key=lambda node: node.index != master_index)
        for count, node in enumerate(ordered, start=1):
            report("booting nodes", count, nodes)
            designated = node.index == master_index
            self._prepare_node(node, url, master=designated, fast=fast)
            self._start_node(node)
            if designated:
                self.converge(timeout, report, [node])
        return self.converge(timeout, report)

    def _save(self, state: LabState) -> None:
        self.state_file.write_text(json.dumps(asdict(state), indent=2) + "\n")

    def add_node(self, boot_dir: Path, timeout: float = 180.0) -> Node:
        """Power on one more Pi whose boot partition is `boot_dir`, prepared as a real SD
        card is (`picluster prepare-boot`).  The lab copies it as the node's card and adds
        its settings (render_lab_settings); returns once the lab converged with it."""
        state = self.state()
        if state.nodes >= MAX_NODES:
            raise LabError(f"the lab has {MAX_NODES} nodes already", code=2)
        node = self._node(state.nodes + 1)
        self._save(replace(state, nodes=node.index))
        self._keygen(node.host_key, f"root@{node.name}")
        with self.known_hosts.open("a") as known_hosts:
            known_hosts.write(self._known_host(node))
        self.net.add_host(node, node.mac)
        shutil.copytree(boot_dir, node.boot_dir)
        with node.config.open("a") as config:
            config.write(render_lab_settings(node, fast=state.fast))
        self._trust_git_host(node)
        self._start_node(node)
        self.converge(timeout)
        return node

    # -- watching -------------------------------------------------------------------------

    def _convergence(self, snapshot: Snapshot, nodes: Sequence[Node]) -> Convergence:
        registered = [node.name for node in nodes
                      if (snapshot.read(ip_path(node.mac)) or "").strip() == node.ip]
        master_mac = (snapshot.read(MASTER) or "").strip()
        master = next((node.name for node in nodes if node.mac == master_mac), None)
        return Convergence(tuple(registered),
                           tuple(node.name for node in nodes if node.name not in registered),
                           master)

    def converge(self, timeout: float = 180.0, report: Report = _quiet,
                 nodes: Sequence[Node] | None = None) -> Convergence:
        """Wait until every node's (or every one of `nodes`') ip/<mac> is on the remote's
        main and a master is elected."""
        nodes = self.nodes if nodes is None else nodes
        observer = self._observer()
        deadline = time.monotonic() + timeout
        while True:
            state = self._convergence(observer.sync(), nodes)
            report(f"registering (master: {state.master or 'not yet'})",
                   len(state.registered), len(nodes))
            if state.converged:
                return state
            missing = [node for node in nodes if node.name in state.missing]
            stopped = [node for node in missing if self.procs.running(node, "agent") is None]
            if stopped:
                raise LabError("not converged: the agent of " + ", ".join(
                    f"{node.name} stopped; the end of {node.agent_log}:\n"
                    f"{tail(node.agent_log)}" for node in stopped))
            if time.monotonic() >= deadline:
                problems = [f"{', '.join(n.name for n in missing)} did not register"] \
                    if missing else []
                if state.master is None:
                    problems.append("no master was elected")
                logs = missing or nodes
                raise LabError(f"not converged after {timeout:.0f} s: {'; '.join(problems)}. "
                               f"See {', '.join(str(node.agent_log) for node in logs)}")
            time.sleep(0.5)

    def _look(self) -> tuple[list[Node], Convergence, Node | None]:
        """The nodes, the remote's view of them, and the master node (if elected)."""
        nodes = self.nodes
        try:
            state = self._convergence(self._observer().sync(), nodes)
        except GitError as error:
            raise LabError(f"cannot read the lab's cluster repository: {error}") from None
        return nodes, state, next((node for node in nodes if node.name == state.master), None)

    def status(self) -> list[NodeStatus]:
        nodes, state, master = self._look()
        hosts: set[str] = set()
        if master is not None:
            with contextlib.suppress(FileNotFoundError):  # not rendered yet
                hosts = parse_hostfile(master.settings().hostfile.read_text())
        return [NodeStatus(
            name=node.name, mac=node.mac, ip=node.ip,
            role="master" if node is master else "node",
            state="down" if self.procs.running(node, "holder") is None else "up",
            registered=node.name in state.registered, in_hostfile=node.ip in hosts,
            agent=self.procs.running(node, "agent") is not None,
        ) for node in nodes]

    # -- operating ----------------------------------------------------------------------

    def exec(self, name: str, argv: Sequence[str],
             **options: Any) -> subprocess.CompletedProcess[Any]:
        """Run `argv` on node `name` (in the caller's directory); `options` go to
        subprocess.run (e.g. capture_output=True)."""
        node = self.node(name)
        return subprocess.run([*self.procs.enter(node), *argv], env=self.procs.env(),
                              check=False, **options)

    def kill(self, name: str) -> Node:
        """Pull the node's power: its cable goes dark and every process of it dies at once."""
        node = self.unplug(name)
        self.procs.stop([node.netns])
        return node

    def unplug(self, name: str) -> Node:
        """Pull the node's cable only: it keeps running but nobody reaches it."""
        node = self.node(name)
        self.net.set_port(node, up=False)
        return node

    def plug(self, name: str) -> Node:
        """Plug the node's cable back in."""
        node = self.node(name)
        self.net.set_port(node, up=True)
        return node

    def revive(self, name: str) -> Node:
        """Power the node on again: the same cable, MAC and disk; it boots as before."""
        node = self.node(name)
        if self.procs.running(node, "holder") is not None:
            raise LabError(f"{node.name} is already up")
        self._start_node(node)
        return node

    def mpirun(self, args: Sequence[str], **options: Any) -> subprocess.CompletedProcess[Any]:
        """Run mpirun from the master node over the master's rendered hostfile."""
        master = self._look()[2]
        if master is None:
            raise LabError("the cluster has no master yet; see `picluster lab status`")
        settings = master.settings()
        hostfile = settings.hostfile
        if not hostfile.exists():
            raise LabError(f"the master {master.name} has not rendered its MPI hostfile "
                           f"({hostfile}) yet; see {master.agent_log}")
        env = {**self.procs.env(), "OMPI_ALLOW_RUN_AS_ROOT": "1",
               "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
               "OMPI_MCA_plm_rsh_agent": settings.ssh_command(known_hosts=self.known_hosts)}
        argv = ["mpirun", "--hostfile", str(hostfile), "--mca", "btl_tcp_if_include", "eth0",
                "--mca", "oob_tcp_if_include", "eth0", *args]
        return subprocess.run([*self.procs.enter(master), *argv], env=env, check=False,
                              **options)

    def down(self) -> list[str]:
        """Remove the lab, whatever state it is in: stop its processes, delete its
        namespaces and files.  Returns the namespaces it deleted."""
        namespaces = self.net.namespaces()
        pid_files = sorted(self.dir.rglob("*.pid")) if self.dir.is_dir() else []
        self.procs.stop(namespaces, pid_files, grace=3.0)
        self.net.remove(namespaces)
        for name in _OWNED:
            path = self.dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # gone already, or holds files not the lab's
            self.dir.rmdir()
        return namespaces
