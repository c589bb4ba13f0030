"""The lab: a virtual Raspberry Pi cluster of real hosts in network namespaces (LAB.md).

One directory holds everything a lab is: its keys, the git server's bare repository,
every node's boot partition and home, logs and pid files.  The names of its network
namespaces derive from that directory, so a test lab and a demo lab coexist, and `down`
finds every piece of a lab even when a crashed `up` never wrote its state file.

    <lab>-br    the switch: bridge br0 with one port per host (never in the root namespace)
    <lab>-git   the git server, 198.18.0.2: sshd, or `git daemon`
    <lab>-nK    node pi-K, 198.18.0.(10+K): eth0 with a Raspberry Pi MAC, its own sshd

Network namespaces share the hostname, so each host has one long-lived *holder* process
with a UTS namespace of its own, inside the host's network namespace.  Everything a
host runs enters the holder's namespaces with nsenter: its processes see their node's
hostname, eth0 and /sys, exactly as on a Pi.

Every process the lab starts carries ``PICLUSTER_LAB=<lab>`` in its environment, so a
stale pid file can never make `down` signal an unrelated process that reused the pid.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import pwd
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import picluster
from picluster.files import install_file
from picluster.gitstore import ClusterRepo, GitError, Snapshot
from picluster.layout import MASTER, format_mac, ip_path
from picluster.provision import CONFIG_NAME, KEY_NAME, boot_config
from picluster.settings import Settings

__all__ = [
    "DEFAULT_DIR",
    "DIR_ENV",
    "FAST_TIMINGS",
    "GIT_IP",
    "GIT_MODES",
    "MAX_NODES",
    "REQUIRED",
    "Convergence",
    "Host",
    "Lab",
    "LabError",
    "LabState",
    "Node",
    "NodeStatus",
    "Report",
    "lab_dir",
    "lab_prefix",
    "node_ip",
    "node_mac",
    "parse_hostfile",
    "preflight",
    "render_lab_settings",
    "render_node_config",
    "render_sshd_config",
    "require_root",
    "status_json",
]

DEFAULT_DIR = Path("/tmp/picluster-lab")
DIR_ENV = "PICLUSTER_LAB_DIR"
GIT_MODES = ("ssh", "daemon")

# 198.18.0.0/15 is reserved for benchmarking networks: lab traffic can never be mistaken
# for, or leak into, anyone's real network.
_SUBNET = ipaddress.IPv4Network("198.18.0.0/24")
GIT_IP = str(_SUBNET.network_address + 2)
_NODE_BASE = 10  # node K is 198.18.0.(10+K)
MAX_NODES = _SUBNET.num_addresses - 2 - _NODE_BASE
_PI_OUI = "b827eb"  # the Raspberry Pi Foundation's MAC prefix
_SSH_PORT = 22
_GIT_DAEMON_PORT = 9418

# `--fast`: the timings (seconds) of a lab that converges and prunes while you watch.
FAST_TIMINGS: dict[str, float] = {"poll_interval": 1, "master_grace": 3, "ping_interval": 2,
                                  "prune_after": 2, "ping_timeout": 0.5}

# Every executable the lab runs, and the Debian package that has it.
REQUIRED = {
    "ip": "iproute2",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "mount": "mount",
    "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
    "git": "git",
    "mpirun": "openmpi-bin",
    "gmond": "ganglia-monitor",
    "gmetad": "gmetad",
}

_MARKER = "PICLUSTER_LAB"
_STATE = "lab.json"
# Everything `up` creates inside the lab directory; `down` removes exactly these.
_OWNED = (_STATE, "keys", "git", "nodes", "observer", "operator", "operator.conf",
          "known_hosts")
_PACKAGE_ROOT = str(Path(picluster.__file__).resolve().parent.parent)
# sshd and ip live in sbin, which a non-login root shell may not have on its PATH.
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
# ssh's ControlPath (Settings.ssh_command) is <home>/ssh/cm-<40 hex>, and ssh binds it
# with a 17-character temporary suffix first: all within a unix socket's 107 bytes.
_CONTROL_PATH_EXTRA = len("/cm-") + 40 + 17
_SOCKET_PATH_MAX = 107
# Git, Ansible and mpirun log in to lab hosts as root, and bash then reads root's startup
# files: this machine's, not a Pi's.  Each host sees them empty, so nothing they do
# reaches the lab (pyenv's rehash, say, takes a lock that a node killed mid-login leaves
# behind, and every later login waits a minute for it).
_ROOT_STARTUP_FILES = (".bashrc", ".bash_profile", ".bash_login", ".profile")

Report = Callable[[str, int, int], None]
"""Progress callback: (what is happening, how many done, out of how many; 0: unknown)."""


class LabError(RuntimeError):
    """The lab cannot do what was asked; `code` is the exit status the CLI uses."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# -- names and addresses: pure functions of the lab directory --------------------------


def lab_dir(explicit: str | Path | None = None) -> Path:
    """The lab's directory: --dir, else $PICLUSTER_LAB_DIR, else /tmp/picluster-lab."""
    return Path(explicit or os.environ.get(DIR_ENV) or DEFAULT_DIR).resolve()


def lab_prefix(directory: str | Path) -> str:
    """'pcl' + 6 hex digits of the directory's hash: short enough that every namespace
    and interface name built on it stays within the kernel's 15 characters."""
    digest = hashlib.sha256(str(Path(directory).resolve()).encode()).hexdigest()
    return f"pcl{digest[:6]}"


def node_mac(prefix: str, index: int) -> str:
    """Node `index`'s MAC: the Pi prefix, two bytes of the lab's hash, then the index, so
    MACs never repeat within a lab and rarely between labs."""
    _check_index(index)
    return f"{_PI_OUI}{prefix[3:7]}{index:02x}"


def node_ip(index: int) -> str:
    _check_index(index)
    return str(_SUBNET.network_address + _NODE_BASE + index)


def _check_index(index: int) -> None:
    if not 1 <= index <= MAX_NODES:
        raise ValueError(f"node index {index} is not between 1 and {MAX_NODES}")


# -- hosts ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Host:
    """One machine of the lab: a network namespace with eth0 plugged into the switch."""

    name: str
    netns: str
    ip: str
    port: str  # the other end of its eth0: a port of br0, in the bridge namespace
    dir: Path

    @property
    def host_key(self) -> Path:
        """sshd's private host key (the public one is next to it, `.pub`)."""
        return self.dir / "ssh_host_ed25519_key"

    @property
    def sshd_config(self) -> Path:
        return self.dir / "sshd_config"

    def pid_file(self, process: str) -> Path:
        return self.dir / f"{process}.pid"

    def log(self, process: str) -> Path:
        return self.dir / f"{process}.log"


@dataclass(frozen=True)
class Node(Host):
    """A Raspberry Pi: a host with a boot partition, a home and an agent."""

    mac: str
    index: int

    @property
    def boot_dir(self) -> Path:
        return self.dir / "boot"

    @property
    def config(self) -> Path:
        return self.boot_dir / CONFIG_NAME

    @property
    def ssh_key(self) -> Path:
        """The cluster's private key, as it sits on this node's boot partition."""
        return self.boot_dir / KEY_NAME

    @property
    def home(self) -> Path:
        return self.dir / "home"

    @property
    def agent_log(self) -> Path:
        return self.log("agent")

    def settings(self) -> Settings:
        return Settings.load(self.config)


def render_sshd_config(host: Host, authorized_keys: Path) -> str:
    """An sshd of the host's own: its address, key and pid file; root by key only."""
    return "\n".join([
        f"# sshd of lab host {host.name} (written by picluster lab)",
        f"ListenAddress {host.ip}",
        f"HostKey {host.host_key}",
        f"PidFile {host.pid_file('sshd')}",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        f"AuthorizedKeysFile {authorized_keys}",
        # The lab lives under /tmp, whose permissions StrictModes refuses.
        "StrictModes no",
        "PrintMotd no",
        "Subsystem sftp internal-sftp",
        "",
    ])


def render_node_config(node: Node, repo: str, *, master: bool, fast: bool) -> str:
    """The boot config (picluster.conf) of a lab node: what prepare-boot writes for a Pi,
    then the lab's settings (render_lab_settings); keys as in picluster.settings."""
    return boot_config(repo, master=master, hostname=node.name) + \
        render_lab_settings(node, fast=fast)


def render_lab_settings(node: Node, *, fast: bool) -> str:
    """The lines the lab adds to a node's boot config: where the node's own disk is.  A Pi
    keeps these at their defaults (/var/lib/picluster, ~root/.ssh, /etc, its sshd's key);
    lab nodes share this machine's file system, so `boot` must write only into the node's
    own directory.  With `fast`, also the lab's quick timings."""
    values: dict[str, object] = {
        "home": node.home,
        "interface": "eth0",
        "host_key": f"{node.host_key}.pub",
        "user_ssh_dir": node.dir / "root" / ".ssh",
        "etc_dir": node.dir / "etc",
    }
    if fast:
        values.update(FAST_TIMINGS)
    return "".join(f"{key} = {value}\n" for key, value in values.items())


def parse_hostfile(text: str) -> set[str]:
    """The hosts of an OpenMPI hostfile (`<ip> slots=<n>` lines, `#` comments)."""
    return {line.split()[0] for line in (raw.split("#", 1)[0] for raw in text.splitlines())
            if line.strip()}


# -- what the lab reports ----------------------------------------------------------------


@dataclass(frozen=True)
class LabState:
    """What `up` was asked for: the lab's state file, lab.json."""

    nodes: int
    master_index: int | None
    fast: bool
    git: str
    repo: str  # the URL nodes clone the cluster repository from


@dataclass(frozen=True)
class Convergence:
    """How far the cluster is: which nodes registered, and who won the election."""

    registered: tuple[str, ...]
    missing: tuple[str, ...]
    master: str | None  # the master's node name; None before the election

    @property
    def converged(self) -> bool:
        return not self.missing and self.master is not None


@dataclass(frozen=True)
class NodeStatus:
    name: str
    mac: str  # 12 lower-case hex digits, as in the cluster repository
    ip: str
    role: str  # "master" or "node"
    state: str  # "up" (powered on) or "down"
    registered: bool  # ip/<mac> holds the node's IP on the remote's main
    in_hostfile: bool  # the master's rendered MPI hostfile lists the node
    agent: bool  # the node's agent process is running


def status_json(nodes: Iterable[NodeStatus]) -> dict[str, list[dict[str, Any]]]:
    return {"nodes": [asdict(node) for node in nodes]}


# -- the machine ------------------------------------------------------------------------


def _search_path() -> str:
    """PATH for everything the lab runs: this Python's bin first (the agent runs Ansible
    from it), then the caller's PATH, then sbin."""
    parts = [str(Path(sys.executable).parent), *os.environ.get("PATH", "").split(os.pathsep),
             *_SBIN]
    return os.pathsep.join(dict.fromkeys(part for part in parts if part))


_NOT_ROOT = ("picluster lab must run as root: it creates and enters network namespaces "
             "(try: sudo picluster lab ...)")


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError(_NOT_ROOT, code=2)


def preflight() -> list[str]:
    """What stops a lab from starting here, as sentences that say how to fix it."""
    problems = [] if os.geteuid() == 0 else [_NOT_ROOT]
    path = _search_path()
    missing = sorted({package for exe, package in REQUIRED.items()
                      if not shutil.which(exe, path=path)})
    if missing:
        problems.append("missing packages; install them with:\n"
                        f"  apt-get install -y {' '.join(missing)}")
    return problems


def _run(*argv: str, stdin: str | None = None) -> str:
    """Run a short command; LabError with its message if it fails."""
    result = subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    if result.returncode:
        why = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise LabError(f"`{shlex.join(argv)}` failed: {why[-1] if why else result.returncode}")
    return result.stdout


def _alive(pid: int) -> bool:
    """True while `pid` runs; a zombie is dead (it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def _comm(pid: int) -> str:
    """The name of the program `pid` runs ('' when it is gone)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _reap(pids: Iterable[int]) -> None:
    # Processes this process started (a pytest session, say) stay zombies until waited
    # for; reaping them keeps "nothing left" true in the process table too.
    for pid in pids:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)


def _tail(path: Path, lines: int = 8) -> str:
    try:
        text = path.read_text(errors="replace").rstrip().splitlines()[-lines:]
    except OSError:
        return f"    ({path} does not exist)"
    return "\n".join(f"    {line}" for line in text) or f"    ({path} is empty)"


def _quiet(_step: str, _done: int, _total: int) -> None:
    """The Report of a caller that does not watch."""


class Lab:
    """A lab in one directory.  Constructing one touches nothing; `up` builds it."""

    def __init__(self, directory: str | Path | None = None) -> None:
        self.dir = lab_dir(directory)
        self.prefix = lab_prefix(self.dir)
        self.bridge_ns = f"{self.prefix}-br"
        self.state_file = self.dir / _STATE
        self.keys_dir = self.dir / "keys"
        self.cluster_key = self.keys_dir / "cluster"  # every node's ssh identity
        self.operator_key = self.keys_dir / "operator"  # signs tasks
        self.bare_repo = self.dir / "git" / "cluster.git"
        self.known_hosts = self.dir / "known_hosts"  # every lab host's key, for mpirun
        self.operator_config = self.dir / "operator.conf"
        self.git_host = Host("git", f"{self.prefix}-git", GIT_IP, "git", self.dir / "git")

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
        return Node(name=f"pi-{index}", netns=f"{self.prefix}-n{index}", ip=node_ip(index),
                    port=f"n{index}", dir=self.dir / "nodes" / f"pi-{index}",
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

    def _namespaces(self) -> list[str]:
        """This lab's namespaces that exist, whatever the state file says."""
        listing = _run("ip", "netns", "list")
        names = (line.split()[0] for line in listing.splitlines() if line.strip())
        return sorted(name for name in names if name.startswith(f"{self.prefix}-"))

    def _observer(self) -> ClusterRepo:
        # The lab reads the cluster as any node would: through a clone of its own.
        return ClusterRepo(url=str(self.bare_repo), clone_dir=self.dir / "observer" / "repo",
                           writer="lab-observer")

    # -- processes ----------------------------------------------------------------------

    def _env(self) -> dict[str, str]:
        pythonpath = [_PACKAGE_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]
        return {**os.environ, _MARKER: self.prefix, "PATH": _search_path(),
                "PYTHONPATH": os.pathsep.join(pythonpath)}

    def _is_ours(self, pid: int) -> bool:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return False
        return f"{_MARKER}={self.prefix}".encode() in environ.split(b"\0")

    @staticmethod
    def _in_netns(pid: int, netns: str) -> bool:
        try:
            mine, theirs = os.stat(f"/proc/{pid}/ns/net"), os.stat(f"/run/netns/{netns}")
        except OSError:
            return False
        return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)

    def _running(self, host: Host, process: str) -> int | None:
        """The pid of the host's `process` while it runs, else None."""
        pid = _read_pid(host.pid_file(process))
        return pid if pid is not None and _alive(pid) and self._is_ours(pid) else None

    def _holder(self, host: Host) -> int:
        pid = self._running(host, "holder")
        if pid is None or not self._in_netns(pid, host.netns):
            raise LabError(f"{host.name} is down; power it on with `picluster lab revive "
                           f"{host.name} --dir {self.dir}`")
        return pid

    def _enter(self, host: Host, cwd: Path | None = None) -> list[str]:
        """The command prefix that runs a command on `host`, as the host itself would."""
        return ["nsenter", f"--target={self._holder(host)}", "--uts", "--net", "--mount",
                f"--wd={cwd or os.getcwd()}", "--"]

    def _spawn(self, host: Host, process: str, argv: Sequence[str],
               ready: Callable[[int], bool] | None = None, timeout: float = 10.0) -> None:
        """Start a long-lived process of `host`, logging to <process>.log, and record its
        pid; then wait until `ready(pid)`, if given."""
        host.dir.mkdir(parents=True, exist_ok=True)
        with host.log(process).open("ab") as log:
            pid = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, env=self._env(),
                                   start_new_session=True).pid
        host.pid_file(process).write_text(f"{pid}\n")
        deadline = time.monotonic() + timeout
        while ready is not None and not ready(pid):
            if not _alive(pid):
                raise LabError(f"{process} of {host.name} exited; the end of "
                               f"{host.log(process)}:\n{_tail(host.log(process))}")
            if time.monotonic() > deadline:
                raise LabError(f"{process} of {host.name} was not ready after {timeout:.0f} s;"
                               f" see {host.log(process)}")
            time.sleep(0.02)

    def _listening(self, host: Host, port: int) -> bool:
        """Whether something on `host` listens on its IP and `port`.  Read from the host's
        /proc/net/tcp, so checking sends no packet anywhere."""
        # /proc/net/tcp shows the address as the kernel's u32, in the machine's byte order.
        local = "{:08X}:{:04X}".format(struct.unpack("=I", socket.inet_aton(host.ip))[0], port)
        table = Path(f"/proc/{self._holder(host)}/net/tcp").read_text().splitlines()[1:]
        return any(fields[1] == local and fields[3] == "0A"  # 0A: LISTEN
                   for fields in (line.split() for line in table))

    def _lab_pids(self, namespaces: Iterable[str], pid_files: Iterable[Path]) -> set[int]:
        """Living processes in `namespaces`, and those the pid files name that are ours."""
        pids = set()
        for netns in namespaces:
            try:
                pids.update(int(pid) for pid in _run("ip", "netns", "pids", netns).split())
            except LabError:
                continue  # deleted meanwhile
        pids.update(pid for pid in map(_read_pid, pid_files)
                    if pid is not None and self._is_ours(pid))
        return {pid for pid in pids if _alive(pid)}

    def _stop(self, namespaces: Sequence[str], pid_files: Sequence[Path] = (),
              grace: float = 0.0) -> None:
        """Stop every process of `namespaces` and `pid_files`: SIGTERM for `grace` seconds,
        then SIGKILL (at once when grace is 0: pulling the power)."""
        deadline = time.monotonic() + grace
        while pids := self._lab_pids(namespaces, pid_files):
            late = time.monotonic() - deadline
            if late > 10:
                raise LabError(f"processes {sorted(pids)} of the lab at {self.dir} do not "
                               "stop even on SIGKILL")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM if late < 0 else signal.SIGKILL)
            time.sleep(0.05)
            _reap(pids)

    def pids(self) -> dict[str, list[int]]:
        """Every living process of the lab, by namespace (what bench/ measures)."""
        return {netns: sorted(self._lab_pids([netns], ())) for netns in self._namespaces()}

    def agent_pid(self, node: Node) -> int | None:
        return self._running(node, "agent")

    # -- building -----------------------------------------------------------------------

    def _keygen(self, path: Path, comment: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path))

    def _plug(self, host: Host, mac: str | None) -> None:
        """Create the host's namespace and cable its eth0 to the switch (port still down)."""
        _run("ip", "netns", "add", host.netns)
        # The veth is created in the bridge namespace with its peer born in the host's:
        # no interface ever appears in the root namespace.
        _run("ip", "-n", self.bridge_ns, "link", "add", host.port, "type", "veth",
             "peer", "name", "eth0", "netns", host.netns)
        _run("ip", "-n", self.bridge_ns, "link", "set", host.port, "master", "br0")
        commands = [f"address add {host.ip}/{_SUBNET.prefixlen} dev eth0",
                    "link set eth0 up", "link set lo up"]
        if mac:  # else the kernel picks one
            commands.insert(0, f"link set eth0 address {format_mac(mac)}")
        _run("ip", "-n", host.netns, "-batch", "-", stdin="\n".join(commands) + "\n")

    def _power_on(self, host: Host) -> None:
        """Plug the host's cable in and start its holder: the host is up, running nothing."""
        _run("ip", "-n", self.bridge_ns, "link", "set", host.port, "up")
        # `sleep` runs only once the hostname is set and root's startup files are hidden,
        # in the mount namespace of the host's own that `ip netns exec` made.
        home = Path(pwd.getpwuid(0).pw_dir)
        hidden = [str(home / name) for name in _ROOT_STARTUP_FILES if (home / name).is_file()]
        self._spawn(host, "holder", [
            "ip", "netns", "exec", host.netns, "unshare", "--uts", "sh", "-c",
            'hostname "$1" && shift && for rc do mount --bind /dev/null "$rc" || exit 1; done'
            " && exec sleep infinity", "holder", host.name, *hidden],
            ready=lambda pid: _comm(pid) == "sleep")

    def _start_sshd(self, host: Host, authorized_keys: Path) -> None:
        host.sshd_config.write_text(render_sshd_config(host, authorized_keys))
        # -D: sshd stays the process _spawn recorded; -e: its log goes to sshd.log.
        sshd = shutil.which("sshd", path=_search_path()) or "/usr/sbin/sshd"
        self._spawn(host, "sshd", [*self._enter(host, host.dir), sshd, "-D", "-e",
                                   "-f", str(host.sshd_config)],
                    ready=lambda _: self._listening(host, _SSH_PORT))

    def _serve_git(self, mode: str) -> None:
        host = self.git_host
        self._power_on(host)
        if mode == "ssh":
            self._start_sshd(host, Path(f"{self.cluster_key}.pub"))
            return
        # The daemon is the server end of git, not a client of the cluster repository.
        self._spawn(host, "git-daemon", [
            *self._enter(host, host.dir), "git", "daemon", f"--listen={host.ip}",
            "--reuseaddr", "--export-all", "--enable=receive-pack", "--informative-errors",
            f"--base-path={self.bare_repo.parent}", str(self.bare_repo.parent)],
            ready=lambda _: self._listening(host, _GIT_DAEMON_PORT))

    def _init_repo(self) -> None:
        # The core's own commands seed the repository, so the lab tests what operators run:
        # the operator signs their tasks, the master signs its own with the cluster key.
        for args in (["init-repo", str(self.bare_repo), "--signer",
                      f"{self.operator_key}.pub", "--name", "operator"],
                     ["--config", str(self.operator_config), "trust",
                      f"{self.cluster_key}.pub", "--name", "cluster"]):
            result = subprocess.run([sys.executable, "-m", "picluster", *args],
                                    capture_output=True, text=True, env=self._env(),
                                    check=False)
            if result.returncode:
                raise LabError(f"`picluster {' '.join(args)}` failed:\n"
                               f"{result.stderr.strip() or result.stdout.strip()}")

    def _boot(self, node: Node) -> None:
        """Switch on the node's software: its first-boot command, run as on a Pi.  Lab
        nodes have no systemd; --foreground makes sure `boot` never hands the node over to
        this machine's, should it run one."""
        self._spawn(node, "agent", [*self._enter(node, node.home), sys.executable, "-m",
                                    "picluster", "--config", str(node.config), "boot",
                                    "--foreground"])

    def _start_node(self, node: Node) -> None:
        self._power_on(node)
        # The master logs in with the key that `boot` authorizes: until it has, nobody can.
        self._start_sshd(node, node.settings().authorized_keys)
        self._boot(node)

    def _prepare_node(self, node: Node, repo: str, *, master: bool, fast: bool) -> None:
        """Write the node's boot partition, and seed its known_hosts with the git server's
        key, so the node's git over ssh checks the server strictly from the first fetch."""
        install_file(node.ssh_key, self.cluster_key.read_bytes(), mode=0o600)
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
        return found + self._namespaces()

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
        _run("ip", "netns", "add", self.bridge_ns)
        _run("ip", "-n", self.bridge_ns, "-batch", "-",
             stdin="link add br0 type bridge\nlink set br0 up\n")
        self._plug(self.git_host, None)
        for node in members:
            self._plug(node, node.mac)
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
        self._plug(node, node.mac)
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
            stopped = [node for node in missing if self._running(node, "agent") is None]
            if stopped:
                raise LabError("not converged: the agent of " + ", ".join(
                    f"{node.name} stopped; the end of {node.agent_log}:\n"
                    f"{_tail(node.agent_log)}" for node in stopped))
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
            state="down" if self._running(node, "holder") is None else "up",
            registered=node.name in state.registered, in_hostfile=node.ip in hosts,
            agent=self._running(node, "agent") is not None,
        ) for node in nodes]

    # -- operating ----------------------------------------------------------------------

    def exec(self, name: str, argv: Sequence[str],
             **options: Any) -> subprocess.CompletedProcess[Any]:
        """Run `argv` on node `name` (in the caller's directory); `options` go to
        subprocess.run (e.g. capture_output=True)."""
        node = self.node(name)
        return subprocess.run([*self._enter(node), *argv], env=self._env(), check=False,
                              **options)

    def kill(self, name: str) -> Node:
        """Pull the node's power: its cable goes dark and every process of it dies at once."""
        node = self.unplug(name)
        self._stop([node.netns])
        return node

    def unplug(self, name: str) -> Node:
        """Pull the node's cable only: it keeps running but nobody reaches it."""
        node = self.node(name)
        _run("ip", "-n", self.bridge_ns, "link", "set", node.port, "down")
        return node

    def plug(self, name: str) -> Node:
        """Plug the node's cable back in."""
        node = self.node(name)
        _run("ip", "-n", self.bridge_ns, "link", "set", node.port, "up")
        return node

    def revive(self, name: str) -> Node:
        """Power the node on again: the same cable, MAC and disk; it boots as before."""
        node = self.node(name)
        if self._running(node, "holder") is not None:
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
        env = {**self._env(), "OMPI_ALLOW_RUN_AS_ROOT": "1",
               "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
               "OMPI_MCA_plm_rsh_agent": settings.ssh_command(known_hosts=self.known_hosts)}
        argv = ["mpirun", "--hostfile", str(hostfile), "--mca", "btl_tcp_if_include", "eth0",
                "--mca", "oob_tcp_if_include", "eth0", *args]
        return subprocess.run([*self._enter(master), *argv], env=env, check=False, **options)

    def down(self) -> list[str]:
        """Remove the lab, whatever state it is in: stop its processes, delete its
        namespaces and files.  Returns the namespaces it deleted."""
        namespaces = self._namespaces()
        pid_files = sorted(self.dir.rglob("*.pid")) if self.dir.is_dir() else []
        self._stop(namespaces, pid_files, grace=3.0)
        for netns in namespaces:
            _run("ip", "netns", "del", netns)
        for name in _OWNED:
            path = self.dir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):  # gone already, or holds files not the lab's
            self.dir.rmdir()
        return namespaces
