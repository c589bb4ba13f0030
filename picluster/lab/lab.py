"""The Lab: one directory, and everything a lab is.

The directory holds its keys, the git server's bare repository, every node's boot
partition and home (a machine node's disk), logs and pid files; the names of its
namespaces derive from it (picluster.lab.net).  A Lab builds its hosts from those pieces:
the wire (net), the processes (procs), the files and configs (hosts), and for machine
nodes the image (image) and their cards and disks (machines); and it answers for the
cluster: is it usable, what is each node's status.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from picluster.files import install_file
from picluster.gitstore import ClusterRepo, GitError, Snapshot
from picluster.lab.errors import LabError, run
from picluster.lab.hosts import (
    Host,
    MachineNode,
    Node,
    card_settings,
    render_lab_settings,
    render_node_config,
    render_settings,
    render_sshd_config,
)
from picluster.lab.image import Image, ensure_image, ensure_wheelhouse
from picluster.lab.machine import preflight, search_path
from picluster.lab.machines import agent_pid as machine_agent_pid
from picluster.lab.machines import (
    mount_disk,
    mounts_under,
    nspawn_argv,
    problem,
    unmount_all,
    write_card,
)
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
from picluster.master.desired import progress
from picluster.provision import BootError, anchor_text
from picluster.provision.wheels import build_wheel
from picluster.registry import read_cluster_vars, read_membership
from picluster.settings import ConfigError, Settings

__all__ = ["GIT_MODES", "Lab", "Report"]

GIT_MODES = ("ssh", "daemon")

_SSH_PORT = 22
_GIT_DAEMON_PORT = 9418
_STATE = "lab.json"
# Seconds `up` waits for the cluster after the master's grace period, by default.
_TIMEOUT, _MACHINE_TIMEOUT = 180.0, 600.0
# Seconds machine nodes have to install what their role's playbooks install (apt, from
# the lab's local repository), once registered.
_CONFIGURE_TIMEOUT = 900.0
# Everything `up` creates inside the lab directory; `down` removes exactly these.
_OWNED = (_STATE, "keys", "git", "nodes", "observer", "operator", "operator.conf", "wheel")
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
        self.wheel_dir = self.dir / "wheel"  # the picluster wheel machine nodes install
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

    def _node(self, index: int, *, machine: bool = False) -> Node:
        kind = MachineNode if machine else Node
        return kind(name=f"pi-{index}", netns=namespace(self.prefix, f"n{index}"),
                    ip=node_ip(index), port=f"n{index}", dir=self.dir / "nodes" / f"pi-{index}",
                    mac=node_mac(self.prefix, index), index=index)

    @property
    def nodes(self) -> list[Node]:
        state = self.state()
        return [self._node(index, machine=state.machines) for index in range(1, state.nodes + 1)]

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
        """The pid (on this machine) of the node's agent while it runs."""
        if isinstance(node, MachineNode):
            return machine_agent_pid(node)
        return self.procs.running(node, "agent")

    def _image(self) -> Image:
        image = self.state().image
        if image is None:
            raise LabError(f"the lab at {self.dir} has no machine nodes")
        return Image(Path(image))

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
        """Switch on a namespace node's software: its first-boot command, run as on a Pi.
        These nodes have no systemd; --foreground makes sure `boot` never hands the node
        over to this machine's, should it run one."""
        self.procs.spawn(node, "agent", [*self.procs.enter(node, node.home), sys.executable,
                                         "-m", "picluster", "--config", str(node.config),
                                         "boot", "--foreground"])

    def _start_node(self, node: Node) -> None:
        if isinstance(node, MachineNode):
            # Power on: the cable, the disk, and the node's systemd; it boots by itself.
            image = self._image()
            self.net.set_port(node, up=True)
            mount_disk(node, image)
            self.procs.start_container(node, nspawn_argv(node, image))
            return
        self._power_on(node)
        # The master logs in with the key that `boot` authorizes: until it has, nobody can.
        self._start_sshd(node, node.settings().authorized_keys)
        self._boot(node)

    def _prepare_node(self, node: Node, repo: str, *, master: bool,
                      extra: Mapping[str, object]) -> None:
        """Write the node's boot partition (the cluster key, the operator's key as its
        trust anchor, the config), and seed its known_hosts with the git server's key, so
        the node's git over ssh checks the server strictly from the first fetch."""
        install_file(node.ssh_key, self.cluster_key.read_bytes(), mode=0o600)
        install_file(node.anchor, anchor_text(
            Path(f"{self.operator_key}.pub").read_text(), "operator"))
        node.config.write_text(render_node_config(node, repo, master=master, extra=extra))
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
        mounts = [str(point) for point in mounts_under(self.dir)] if self.dir.is_dir() else []
        return found + mounts + self.net.namespaces()

    def up(self, nodes: int, *, master_index: int | None = None, fast: bool = False,
           git: str = "ssh", machines: bool = False, timeout: float | None = None,
           settings: Mapping[str, object] | None = None,
           report: Report = _quiet) -> Convergence:
        """Build and boot a lab of `nodes` nodes (machine nodes with `machines`; every card
        with the boot-config keys `settings` too, e.g. converge_batch); return once
        the cluster is usable: every node registered, a master elected, and every node in
        the master's MPI hostfile; machine nodes also configured (`configured`).  `timeout`
        defaults to 180 s (600 s for machine nodes, which install picluster first) after
        the master's grace period, and 900 s more for machine nodes to configure themselves.

        On an error the lab is left as it is, to be looked at; `down` removes it.
        """
        problems = preflight(machines=machines)
        if problems:
            raise LabError("\n".join(problems), code=2)
        if not 1 <= nodes <= MAX_NODES:
            raise LabError(f"--nodes must be between 1 and {MAX_NODES}", code=2)
        if master_index is not None and not 1 <= master_index <= nodes:
            raise LabError(f"--master-index must be between 1 and {nodes}", code=2)
        if git not in GIT_MODES:
            raise LabError(f"--git must be one of {', '.join(GIT_MODES)}", code=2)
        asked = {key: str(value) for key, value in (settings or {}).items()}
        extra = card_settings(fast, asked)
        try:  # a key no node could boot with stops `up` here, not every node's boot
            Settings.parse(render_node_config(self._node(1), str(self.bare_repo), master=False,
                                              extra=extra))
        except ConfigError as error:
            raise LabError(f"--set {error.key}: {error.problem}", code=2) from None
        # A machine node's home is on its own disk; the others' is in the lab directory.
        longest = len(str(self._node(nodes).home / "ssh")) + _CONTROL_PATH_EXTRA
        if not machines and longest > _SOCKET_PATH_MAX:
            raise LabError(f"the lab directory {self.dir} is too long: ssh's control sockets "
                           f"under it would exceed {_SOCKET_PATH_MAX} bytes; use a shorter "
                           "--dir", code=2)
        leftovers = self._leftovers()
        if leftovers:
            raise LabError(f"a lab already exists in {self.dir} ({', '.join(leftovers)}); "
                           f"remove it first with `picluster lab down --dir {self.dir}`")

        wait = (_MACHINE_TIMEOUT if machines else _TIMEOUT) if timeout is None else timeout
        url = (f"ssh://root@{GIT_IP}{self.bare_repo}" if git == "ssh"
               else f"git://{GIT_IP}/{self.bare_repo.name}")
        self.dir.mkdir(parents=True, exist_ok=True)
        image = None
        if machines:
            image = ensure_image(lambda step: report(step, 0, 0))
        state = LabState(nodes, master_index, fast, git, url, machines,
                         str(image.dir) if image else None, asked)
        self._save(state)
        members = self.nodes

        report("generating keys", 0, 0)
        self._keygen(self.cluster_key, "picluster-lab-cluster")
        self._keygen(self.operator_key, "picluster-lab-operator")
        # A machine node makes its own host keys at first boot (cloud-init), as a Pi does.
        for host in [self.git_host, *(node for node in members if not machines)]:
            self._keygen(host.host_key, f"root@{host.name}")
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

        if machines:
            report("building picluster's wheel", 0, 0)
            try:
                wheel = build_wheel(self.wheel_dir)
            except BootError as error:
                raise LabError(str(error)) from None
            wheelhouse = ensure_wheelhouse(wheel, lambda step: report(step, 0, 0))

        # The designated master boots first, as an operator would power it on first: a
        # designated master never takes `master` from a node that registered before it.
        ordered = sorted(members, key=lambda node: node.index != master_index)
        for count, node in enumerate(ordered, start=1):
            report("booting nodes", count, nodes)
            designated = node.index == master_index
            if isinstance(node, MachineNode):
                write_card(node, url, self.cluster_key, signer=Path(f"{self.operator_key}.pub"),
                           master=designated, extra=extra, wheel=wheel, wheelhouse=wheelhouse,
                           env=self.procs.env())
            else:
                self._prepare_node(node, url, master=designated, extra=extra)
            self._start_node(node)
            if designated:
                self.converge(wait, report, [node], hostfile=False)
        converged = self.converge(wait + self._grace() if timeout is None else wait, report)
        if machines:
            # A machine node has OpenMPI and Ganglia only once its own playbook tasks
            # installed them: the cluster is usable then, not at registration.
            self.configured(_CONFIGURE_TIMEOUT if timeout is None else wait, report)
        return converged

    def configured(self, timeout: float = 900.0, report: Report = _quiet,
                   nodes: Sequence[Node] | None = None) -> dict[str, dict[str, Any]]:
        """Wait until every node (or every one of `nodes`) is configured as `picluster
        status` says it: its role's playbooks applied (by its own `playbook` tasks) and
        the current cluster files.  Returns each node's progress, by name; a node whose
        playbook failed is named in the error, with the failing task's message."""
        nodes = self.nodes if nodes is None else nodes
        observer = self._observer()
        deadline = time.monotonic() + timeout
        while True:
            snapshot = observer.sync()
            found = progress(read_membership(snapshot), read_cluster_vars(snapshot))
            by_name = {node.name: found[node.mac] for node in nodes if node.mac in found}
            done = [name for name, entry in by_name.items() if entry["configured"]]
            report("configuring: each node applies its role's playbooks", len(done),
                   len(nodes))
            if len(done) == len(nodes):
                return by_name
            if time.monotonic() >= deadline:
                failed = [f"{name}: {playbook} failed at '{entry['task']}': {entry['message']}."
                          for name, node in sorted(by_name.items())
                          for playbook, entry in node["playbooks"].items()
                          if entry["state"] == "failed"]
                waiting = [node.name for node in nodes if node.name not in done]
                raise LabError(" ".join([f"not configured after {timeout:.0f} s: "
                                         f"{', '.join(waiting)}.", *failed,
                                         f"See `picluster --config {self.operator_config} "
                                         "status`."]))
            time.sleep(1.0)

    def _grace(self) -> float:
        """How long the master waits after it starts before its first render, as the
        cards say (every card says the same)."""
        return self.nodes[0].settings().master_grace

    def _save(self, state: LabState) -> None:
        self.state_file.write_text(json.dumps(asdict(state), indent=2) + "\n")

    def add_node(self, boot_dir: Path, timeout: float = 180.0) -> Node:
        """Power on one more Pi whose boot partition is `boot_dir`, prepared as a real SD
        card is (`picluster prepare-boot`).  The lab copies it as the node's card and adds
        its settings (render_lab_settings; a machine node's card gets only those of every
        card, `card_settings`); returns once the cluster is usable with it (with machine
        nodes: every node configured, `configured`)."""
        state = self.state()
        if state.nodes >= MAX_NODES:
            raise LabError(f"the lab has {MAX_NODES} nodes already", code=2)
        node = self._node(state.nodes + 1, machine=state.machines)
        self._save(replace(state, nodes=node.index))
        self.net.add_host(node, node.mac)
        shutil.copytree(boot_dir, node.boot_dir)
        extra = card_settings(state.fast, state.settings)
        if isinstance(node, MachineNode):
            with node.config.open("a") as config:
                config.write(render_settings(extra))
        else:
            self._keygen(node.host_key, f"root@{node.name}")
            with node.config.open("a") as config:
                config.write(render_lab_settings(node, extra=extra))
            self._trust_git_host(node)
        self._start_node(node)
        self.converge(timeout)
        if state.machines:
            self.configured(_CONFIGURE_TIMEOUT)
        return node

    # -- watching -------------------------------------------------------------------------

    def _hostfile(self, master: Node) -> set[str]:
        """The hosts of the master's rendered MPI hostfile (none before its first render)."""
        path = master.settings().hostfile
        if isinstance(master, MachineNode):
            path = master.on_host(path)
        try:
            return parse_hostfile(path.read_text())
        except OSError:
            return set()

    def _convergence(self, snapshot: Snapshot, nodes: Sequence[Node], *,
                     hostfile: bool = False) -> Convergence:
        registered = [node.name for node in nodes
                      if (snapshot.read(ip_path(node.mac)) or "").strip() == node.ip]
        master_mac = (snapshot.read(MASTER) or "").strip()
        master = next((node for node in self.nodes if node.mac == master_mac), None)
        listed = self._hostfile(master) if hostfile and master is not None else set()
        return Convergence(
            tuple(registered), tuple(node.name for node in nodes if node.name not in registered),
            master.name if master else None,
            tuple(node.name for node in nodes if hostfile and node.ip not in listed))

    def _logs(self, node: Node) -> str:
        """Where to read what a node's agent (or a machine node's boot) said."""
        if isinstance(node, MachineNode):
            return f"`picluster lab exec {node.name} --dir {self.dir} -- journalctl -b`"
        return str(node.agent_log)

    def _check_booting(self, nodes: Sequence[Node], *, probe: bool) -> None:
        """LabError when one of `nodes` will not join by itself: its agent (a netns node's)
        or its container (a machine node's) stopped, or (with `probe`) its boot failed."""
        broken = []
        for node in nodes:
            if isinstance(node, MachineNode):
                if self.procs.running(node, "holder") is None:
                    broken.append(f"the container of {node.name} stopped; the end of "
                                  f"{node.log('holder')}:\n{tail(node.log('holder'))}")
                elif probe and (trouble := problem(self.procs, node)):
                    broken.append(f"{node.name}: {trouble}")
            elif self.procs.running(node, "agent") is None:
                broken.append(f"the agent of {node.name} stopped; the end of "
                              f"{node.agent_log}:\n{tail(node.agent_log)}")
        if broken:
            raise LabError("not converged: " + "; ".join(broken))

    def converge(self, timeout: float = 180.0, report: Report = _quiet,
                 nodes: Sequence[Node] | None = None, *, hostfile: bool = True) -> Convergence:
        """Wait until every node's (or every one of `nodes`') ip/<mac> is on the remote's
        main, a master is elected and (with `hostfile`) the master's MPI hostfile lists
        every node: until `lab mpirun` works."""
        nodes = self.nodes if nodes is None else nodes
        observer = self._observer()
        started = time.monotonic()
        deadline, probed = started + timeout, started
        while True:
            state = self._convergence(observer.sync(), nodes, hostfile=hostfile)
            if state.missing or state.master is None:
                report(f"registering (master: {state.master or 'not yet'})",
                       len(state.registered), len(nodes))
            else:
                report("waiting for the master's MPI hostfile",
                       len(nodes) - len(state.unlisted), len(nodes))
            if state.converged:
                return state
            waiting = [node for node in nodes if node.name in state.missing]
            # Asking a machine node how its boot goes costs a process in it: now and then.
            probe = time.monotonic() - probed > 5
            probed = time.monotonic() if probe else probed
            self._check_booting(waiting, probe=probe)
            if time.monotonic() >= deadline:
                problems = [f"{', '.join(n.name for n in waiting)} did not register"] \
                    if waiting else []
                if state.master is None:
                    problems.append("no master was elected")
                elif state.unlisted and not waiting:
                    problems.append(f"the master's MPI hostfile lacks "
                                    f"{', '.join(state.unlisted)}")
                logs = waiting or nodes
                raise LabError(f"not converged after {timeout:.0f} s: {'; '.join(problems)}. "
                               f"See {', '.join(self._logs(node) for node in logs)}")
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
        hosts = self._hostfile(master) if master is not None else set()
        statuses = []
        for node in nodes:
            up = self.procs.running(node, "holder") is not None
            statuses.append(NodeStatus(
                name=node.name, mac=node.mac, ip=node.ip,
                role="master" if node is master else "node", state="up" if up else "down",
                registered=node.name in state.registered, in_hostfile=node.ip in hosts,
                agent=self.agent_pid(node) is not None,
                problem=problem(self.procs, node) if up and isinstance(node, MachineNode)
                else ""))
        return statuses

    # -- operating ----------------------------------------------------------------------

    def _command(self, node: Node, argv: Sequence[str],
                 **options: Any) -> subprocess.CompletedProcess[Any]:
        env = self.procs.machine_env() if isinstance(node, MachineNode) else self.procs.env()
        return subprocess.run([*self.procs.enter(node), *argv], env=env, check=False,
                              **options)

    def exec(self, name: str, argv: Sequence[str],
             **options: Any) -> subprocess.CompletedProcess[Any]:
        """Run `argv` on node `name` (in the caller's directory; in a machine node, at its
        /, with its own environment); `options` go to subprocess.run (capture_output=...)."""
        return self._command(self.node(name), argv, **options)

    def kill(self, name: str) -> Node:
        """Pull the node's power: its cable goes dark and every process of it dies at once."""
        node = self.unplug(name)
        if isinstance(node, MachineNode):
            self.procs.power_cut(node)
        self.procs.stop([node.netns])
        if isinstance(node, MachineNode):
            unmount_all(node.dir)  # the disk stays, as an SD card does
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

    def mpirun(self, args: Sequence[str], node: str | None = None,
               **options: Any) -> subprocess.CompletedProcess[Any]:
        """Run `picluster mpirun ARGS` on the master (or on node `node`), as an operator
        logged in there would."""
        if node is None:
            target = self._look()[2]
            if target is None:
                raise LabError("the cluster has no master yet; see `picluster lab status`")
        else:
            target = self.node(node)
        command = ["picluster"] if isinstance(target, MachineNode) else \
            [sys.executable, "-m", "picluster", "--config", str(target.config)]
        return self._command(target, [*command, "mpirun", "--", *args], **options)

    def down(self) -> list[str]:
        """Remove the lab, whatever state it is in: shut its machine nodes down, stop its
        processes, unmount their disks, delete its namespaces and files.  Returns the
        namespaces it deleted."""
        namespaces = self.net.namespaces()
        # Where the lab writes pid files: each host's folder, and the run folder of each
        # node's agent.  Never a walk of the whole lab: the git server's objects change
        # under a push, and a machine node's root file system is not the lab's.
        folders = [self.dir / "git", *self.dir.glob("nodes/*"), *self.dir.glob("nodes/*/home/run")]
        pid_files = sorted(path for folder in folders for path in folder.glob("*.pid"))
        self.procs.shut_down(pid_files, grace=20.0)
        self.procs.stop(namespaces, pid_files, grace=3.0)
        if self.dir.is_dir():
            unmount_all(self.dir)  # before any file goes: never delete through a mount
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
