"""The processes of a lab's hosts: each host's holder, what runs inside it, and stopping
every one of them.

Network namespaces share the hostname, so each host has one long-lived *holder* process
with a UTS namespace of its own, inside the host's network namespace.  Everything a
host runs enters the holder's namespaces with nsenter: its processes see their node's
hostname, eth0 and /sys, exactly as on a Pi.

A machine node has no holder of its own making: its holder is systemd-nspawn, whose child
(the node's systemd, PID 1 inside) holds all the node's namespaces, and is entered whole.

Every process the lab starts carries ``PICLUSTER_LAB=<prefix>`` in its environment, so a
stale pid file can never make `down` signal an unrelated process that reused the pid.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from picluster.lab.errors import LabError, run
from picluster.lab.hosts import Host, MachineNode
from picluster.lab.machine import search_path

__all__ = ["Processes", "alive", "container_init", "tail"]

_MARKER = "PICLUSTER_LAB"
_KILL_WAIT = 60.0  # seconds `stop` keeps sending SIGKILL before it gives up
# The directory that holds the picluster package: every host imports this very copy.
_PACKAGE_ROOT = str(Path(__file__).resolve().parents[2])
# Git, Ansible and mpirun log in to lab hosts as root, and bash then reads root's startup
# files: this machine's, not a Pi's.  Each host sees them empty, so nothing they do
# reaches the lab (pyenv's rehash, say, takes a lock that a node killed mid-login leaves
# behind, and every later login waits a minute for it).
_ROOT_STARTUP_FILES = (".bashrc", ".bash_profile", ".bash_login", ".profile")


def alive(pid: int) -> bool:
    """True while `pid` runs; a zombie is dead (it only waits to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


def tail(path: Path, lines: int = 8) -> str:
    """The end of a log, indented, for an error message."""
    try:
        text = path.read_text(errors="replace").rstrip().splitlines()[-lines:]
    except OSError:
        return f"    ({path} does not exist)"
    return "\n".join(f"    {line}" for line in text) or f"    ({path} is empty)"


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


def _children(pid: int) -> list[int]:
    try:
        return [int(child) for child in
                Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def container_init(nspawn: int) -> int | None:
    """The container's PID 1 (systemd), once systemd-nspawn has started it."""
    return next((child for child in _children(nspawn) if _comm(child) == "systemd"), None)


def _in_netns(pid: int, netns: str) -> bool:
    try:
        mine, theirs = os.stat(f"/proc/{pid}/ns/net"), os.stat(f"/run/netns/{netns}")
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (theirs.st_dev, theirs.st_ino)


class Processes:
    """The processes of the lab whose prefix is `prefix` (and whose directory is
    `directory`, named in the errors): each recorded in its host's <process>.pid."""

    def __init__(self, prefix: str, directory: Path) -> None:
        self.prefix = prefix
        self.dir = directory

    def env(self) -> dict[str, str]:
        """The environment of everything the lab runs: marked as the lab's."""
        pythonpath = [_PACKAGE_ROOT, *filter(None, [os.environ.get("PYTHONPATH")])]
        return {**os.environ, _MARKER: self.prefix, "PATH": search_path(),
                "PYTHONPATH": os.pathsep.join(pythonpath)}

    def is_ours(self, pid: int) -> bool:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes()
        except OSError:
            return False
        return f"{_MARKER}={self.prefix}".encode() in environ.split(b"\0")

    def running(self, host: Host, process: str) -> int | None:
        """The pid of the host's `process` while it runs, else None."""
        pid = _read_pid(host.pid_file(process))
        return pid if pid is not None and alive(pid) and self.is_ours(pid) else None

    def holder(self, host: Host) -> int:
        """The process whose namespaces are the host's: its holder, or a machine node's
        systemd."""
        pid = self.running(host, "holder")
        if pid is not None and isinstance(host, MachineNode):
            pid = container_init(pid)
        if pid is None or not _in_netns(pid, host.netns):
            raise LabError(f"{host.name} is down; power it on with `picluster lab revive "
                           f"{host.name} --dir {self.dir}`")
        return pid

    def enter(self, host: Host, cwd: Path | None = None) -> list[str]:
        """The command prefix that runs a command on `host`, as the host itself would: in
        a machine node, in all its namespaces (at its /)."""
        if isinstance(host, MachineNode):
            return ["nsenter", f"--target={self.holder(host)}", "--all", "--"]
        return ["nsenter", f"--target={self.holder(host)}", "--uts", "--net", "--mount",
                f"--wd={cwd or os.getcwd()}", "--"]

    def machine_env(self) -> dict[str, str]:
        """The environment of a command run in a machine node: the node's own, as a login
        gives it; none of this machine's (its PYTHONPATH, say), but the lab's marker."""
        return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "HOME": "/root", "LANG": "C.UTF-8", "TERM": os.environ.get("TERM", "dumb"),
                _MARKER: self.prefix}

    def spawn(self, host: Host, process: str, argv: Sequence[str],
              ready: Callable[[int], bool] | None = None, timeout: float = 10.0) -> None:
        """Start a long-lived process of `host`, logging to <process>.log, and record its
        pid; then wait until `ready(pid)`, if given."""
        host.dir.mkdir(parents=True, exist_ok=True)
        with host.log(process).open("ab") as log:
            pid = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, env=self.env(),
                                   start_new_session=True).pid
        host.pid_file(process).write_text(f"{pid}\n")
        deadline = time.monotonic() + timeout
        while ready is not None and not ready(pid):
            if not alive(pid):
                raise LabError(f"{process} of {host.name} exited; the end of "
                               f"{host.log(process)}:\n{tail(host.log(process))}")
            if time.monotonic() > deadline:
                raise LabError(f"{process} of {host.name} was not ready after {timeout:.0f} s;"
                               f" see {host.log(process)}")
            time.sleep(0.02)

    def start_holder(self, host: Host) -> None:
        """Start the host's holder: the host is up, running nothing yet."""
        # `sleep` runs only once the hostname is set and root's startup files are hidden,
        # in the mount namespace of the host's own that `ip netns exec` made.
        home = Path(pwd.getpwuid(0).pw_dir)
        hidden = [str(home / name) for name in _ROOT_STARTUP_FILES if (home / name).is_file()]
        self.spawn(host, "holder", [
            "ip", "netns", "exec", host.netns, "unshare", "--uts", "sh", "-c",
            'hostname "$1" && shift && for rc do mount --bind /dev/null "$rc" || exit 1; done'
            " && exec sleep infinity", "holder", host.name, *hidden],
            ready=lambda pid: _comm(pid) == "sleep")

    def start_container(self, host: Host, argv: Sequence[str], timeout: float = 60.0) -> None:
        """Start a machine node's systemd-nspawn as its holder; return once the node's
        systemd runs (its boot goes on)."""
        self.spawn(host, "holder", argv, ready=lambda pid: container_init(pid) is not None,
                   timeout=timeout)

    def power_cut(self, host: Host) -> None:
        """A machine node loses power: its PID 1 dies, and with it every process of its
        PID namespace (SIGKILL to systemd-nspawn alone would leave them running)."""
        nspawn = self.running(host, "holder")
        if nspawn is None:
            return
        for pid in filter(None, (container_init(nspawn), nspawn)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while alive(nspawn) and time.monotonic() < deadline:
            _reap([nspawn])
            time.sleep(0.05)

    def shut_down(self, pid_files: Iterable[Path], grace: float) -> None:
        """Shut the machine nodes among `pid_files` down in order (SIGTERM to their
        systemd-nspawn: the node's systemd halts it), waiting up to `grace` seconds; what
        still runs then is left to `stop`."""
        pids = [pid for pid in map(_read_pid, pid_files)
                if pid is not None and alive(pid) and self.is_ours(pid)
                and _comm(pid) == "systemd-nspawn"]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while (living := [pid for pid in pids if alive(pid)]) and time.monotonic() < deadline:
            _reap(living)
            time.sleep(0.1)

    def listening(self, host: Host, port: int) -> bool:
        """Whether something on `host` listens on its IP and `port`.  Read from the host's
        /proc/net/tcp, so checking sends no packet anywhere."""
        # /proc/net/tcp shows the address as the kernel's u32, in the machine's byte order.
        local = "{:08X}:{:04X}".format(struct.unpack("=I", socket.inet_aton(host.ip))[0], port)
        table = Path(f"/proc/{self.holder(host)}/net/tcp").read_text().splitlines()[1:]
        return any(fields[1] == local and fields[3] == "0A"  # 0A: LISTEN
                   for fields in (line.split() for line in table))

    def pids(self, namespaces: Iterable[str], pid_files: Iterable[Path] = ()) -> set[int]:
        """Living processes in `namespaces`, and those the pid files name that are ours."""
        pids = set()
        for netns in namespaces:
            try:
                pids.update(int(pid) for pid in run("ip", "netns", "pids", netns).split())
            except LabError:
                continue  # deleted meanwhile
        pids.update(pid for pid in map(_read_pid, pid_files)
                    if pid is not None and self.is_ours(pid))
        return {pid for pid in pids if alive(pid)}

    def stop(self, namespaces: Sequence[str], pid_files: Sequence[Path] = (),
             grace: float = 0.0) -> None:
        """Stop every process of `namespaces` and `pid_files`: SIGTERM for `grace` seconds,
        then SIGKILL (at once when grace is 0: pulling the power)."""
        deadline = time.monotonic() + grace
        while pids := self.pids(namespaces, pid_files):
            late = time.monotonic() - deadline
            # A busy machine (a 64-node lab at a load of hundreds) takes tens of seconds to
            # reap what SIGKILL ended, while the agents' last children still appear.
            if late > _KILL_WAIT:
                raise LabError(f"processes {sorted(pids)} of the lab at {self.dir} do not "
                               "stop even on SIGKILL")
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM if late < 0 else signal.SIGKILL)
            time.sleep(0.05)
            _reap(pids)
