"""The node's first boot: `picluster boot`.

Runs on the node, at first boot (picluster-firstboot.sh, which prepare-boot put on the
card) and at every start of picluster.service: it installs the cluster key, sets the
hostname, installs the card's trust anchor (outside the clone), joins the cluster (clone,
register, trust on first use when the card holds no anchor, claim `master` when due),
then hands over to systemd, or becomes the agent where systemd does not run (the lab,
containers).  Each step
is idempotent, each file is written atomically, and every path comes from the node's
Settings.
"""

from __future__ import annotations

import logging
import os
import pwd
import socket
import time
from pathlib import Path

from picluster.files import install_file
from picluster.gitstore import ClusterRepo, GitError
from picluster.identity import IdentityError, identify
from picluster.node import reported_facts
from picluster.node.process import become_agent
from picluster.proc import CommandError, run
from picluster.provision.common import BootError, package_text, public_key
from picluster.registry import Registration, register
from picluster.retry import retry
from picluster.settings import Settings, config_path
from picluster.trust import Trust, TrustError

__all__ = [
    "IMAGE_HOSTNAMES",
    "UNIT",
    "boot",
    "default_hostname",
    "hosts_text",
    "install_keys",
    "install_service",
    "join",
    "set_hostname",
    "systemd_running",
    "unit_text",
]

log = logging.getLogger(__name__)

UNIT = "picluster.service"
# The names images give every machine they boot: a node never keeps one of these.
IMAGE_HOSTNAMES = frozenset({"raspberrypi", "localhost", "debian", "ubuntu"})
_IDENTITY_NAMES = {"ssh-ed25519": "id_ed25519", "ssh-rsa": "id_rsa",
                   "ecdsa-sha2-nistp256": "id_ecdsa", "ecdsa-sha2-nistp384": "id_ecdsa",
                   "ecdsa-sha2-nistp521": "id_ecdsa"}


def _system(*argv: str) -> str:
    """Run hostnamectl or systemctl: boot cannot go on without them (exit status 1)."""
    try:
        return run(*argv)
    except CommandError as error:
        raise BootError(str(error), code=1) from None


def systemd_running() -> bool:
    """Whether systemd is PID 1 (the test of sd_booted(3))."""
    return Path("/run/systemd/system").is_dir()


def _owner(settings: Settings) -> tuple[int, int] | None:
    """(uid, gid) of `user`; None when unset (files belong to whoever runs boot: root)."""
    if settings.user is None:
        return None
    try:
        entry = pwd.getpwnam(settings.user)
    except KeyError:
        raise BootError(f"{settings.source}: user: there is no account '{settings.user}' on "
                        "this node; create it, or remove the line to run as root") from None
    return entry.pw_uid, entry.pw_gid


def _authorized(text: str, public: str) -> str:
    """authorized_keys `text` with `public` in it (once, whatever comment or options)."""
    blob = public.split()[1]
    if any(blob in line.split() for line in text.splitlines()):
        return text
    return text + ("" if text.endswith("\n") or not text else "\n") + public


def install_keys(settings: Settings) -> Path:
    """Install the cluster key (`ssh_key`) as `user`'s ssh identity, and authorize it, so
    the master reaches this node with Ansible and mpirun.  Returns the identity's path:
    the boot partition's copy is readable by every local user, which ssh refuses."""
    if settings.ssh_key is None:
        raise BootError(f"{settings.source}: ssh_key: not set; point it at the cluster's "
                        "private key (prepare-boot copies it next to the boot config)")
    try:
        private = settings.ssh_key.read_bytes()
    except OSError as error:
        raise BootError(f"{settings.source}: ssh_key: {settings.ssh_key}: {error.strerror}") \
            from None
    public = public_key(private, settings.ssh_key)
    name = _IDENTITY_NAMES.get(public.split()[0])
    if name is None:
        raise BootError(f"{settings.ssh_key}: a {public.split()[0]} key; use an ed25519, RSA "
                        "or ECDSA key")
    owner = _owner(settings)
    directory = settings.account_ssh_dir
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    if owner is not None:
        os.chown(directory, *owner)
    identity = directory / name
    install_file(identity, private, mode=0o600, owner=owner)
    install_file(directory / f"{name}.pub", public, mode=0o644, owner=owner)
    try:
        current = settings.authorized_keys.read_text()
    except FileNotFoundError:
        current = ""
    if install_file(settings.authorized_keys, _authorized(current, public), mode=0o600,
                    owner=owner):
        log.info("authorized the cluster key in %s", settings.authorized_keys)
    return identity


def hosts_text(text: str, hostname: str) -> str:
    """/etc/hosts with Debian's 127.0.1.1 line naming `hostname` (sudo resolves it there)."""
    lines = [line for line in text.splitlines() if line.split()[:1] != ["127.0.1.1"]]
    return "\n".join([*lines, f"127.0.1.1\t{hostname}"]) + "\n"


def default_hostname(mac: str) -> str:
    """The name of a node whose card names none: `pi-` and the last six hex digits of its
    MAC, unique in any cluster of Pis (they share the first six)."""
    return f"pi-{mac[-6:]}"


def _wanted_hostname(settings: Settings, current: str) -> str | None:
    """The configured `hostname`; without one, default_hostname while the node still has
    its image's shared name (which would make every Pi one host to Ganglia and MPI)."""
    if settings.hostname is not None:
        return settings.hostname
    if current not in IMAGE_HOSTNAMES:
        return None  # named by its owner (Raspberry Pi Imager, say): theirs to keep
    try:
        return default_hostname(identify(settings).mac)
    except IdentityError as error:
        log.warning("the hostname stays %s: %s", current, error)
        return None


def set_hostname(settings: Settings) -> bool:
    """Give the node the configured `hostname` (or default_hostname), if it has another.
    Only under systemd (a real Pi): elsewhere the hostname belongs to whatever runs the node
    (the lab's UTS namespace, a container), and boot leaves it alone."""
    current = socket.gethostname()
    wanted = _wanted_hostname(settings, current)
    if wanted is None or wanted == current:
        return False
    if not systemd_running():
        log.warning("the hostname is %s, the boot config says %s; without systemd it is "
                    "left as it is", current, wanted)
        return False
    _system("hostnamectl", "set-hostname", wanted)
    hosts = settings.etc_dir / "hosts"
    try:
        current_hosts = hosts.read_text()
    except FileNotFoundError:
        current_hosts = "127.0.0.1\tlocalhost\n"
    install_file(hosts, hosts_text(current_hosts, wanted))
    log.info("hostname %s (was %s)", wanted, current)
    return True


def join(settings: Settings, *, timeout: float | None = None) -> Registration:
    """Clone the cluster repository and register (signed with the cluster key, claiming
    `master` when due), retrying with backoff while the network or the git server is not
    there yet; BootError once `timeout` seconds (None: never) have passed.  A node that
    trusts no signer yet trusts those of its first clone."""
    deadline = None if timeout is None else time.monotonic() + timeout
    # ssh keeps the git server's host key and its control sockets there: without the
    # directory, git over ssh fails ("Could not read from remote repository").
    settings.ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)

    def attempt() -> Registration:
        node = identify(settings)
        repo = ClusterRepo.from_settings(settings, node.mac, shallow=True)
        if deadline is not None:  # git's own retries end when boot's do
            repo.deadline = max(deadline - time.monotonic(), 0.0)
        registration = register(repo, node, reported_facts(settings),
                                designated=settings.master, key=settings.ssh_key)
        Trust(settings).follow(repo.snapshot())
        return registration

    try:
        return retry(attempt, retry_on=(GitError, IdentityError), what="join the cluster",
                     deadline=deadline)
    except (GitError, IdentityError) as error:
        problem = str(error).strip().splitlines()[-1]
        raise BootError(f"cannot join the cluster at {settings.repo}: {problem}",
                        code=1) from None


def unit_text() -> str:
    """picluster.service, as the package ships it."""
    return package_text(UNIT)


def _dropin(settings: Settings) -> str:
    source = str((settings.source or config_path()).resolve()).replace("%", "%%")
    lines = ["# Written by `picluster boot`: the boot config this node's agent reads.",
             "[Service]", f'Environment="PICLUSTER_CONFIG={source}"']
    if settings.user:
        lines.append(f"User={settings.user}")
    return "\n".join(lines) + "\n"


def install_service(settings: Settings) -> bool:
    """Install picluster.service and its drop-in under `etc_dir`; True if either changed."""
    units = settings.etc_dir / "systemd" / "system"
    changed = install_file(units / UNIT, unit_text())
    return install_file(units / f"{UNIT}.d" / "boot.conf", _dropin(settings)) or changed


def _chown_tree(root: Path, owner: tuple[int, int]) -> None:
    for directory, _, names in os.walk(root):
        os.chown(directory, *owner)
        for name in names:
            os.chown(os.path.join(directory, name), *owner, follow_symlinks=False)


def _become(user: str) -> None:
    """Drop root for `user` (under systemd, User= has done it already)."""
    entry = pwd.getpwnam(user)
    if os.geteuid() != entry.pw_uid:
        os.initgroups(user, entry.pw_gid)
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
        os.environ["HOME"] = entry.pw_dir


def boot(settings: Settings, *, foreground: bool = False, timeout: float | None = None) -> None:
    """Bring this node from its boot config to a running agent.

    With systemd (and not `foreground`): install and enable picluster.service, which runs
    `boot --foreground`, and return.  Otherwise become the agent: return only when it stops.
    """
    owner = _owner(settings)
    identity = install_keys(settings)
    set_hostname(settings)
    try:
        Trust(settings).install_anchor()  # before the first clone: no trust on first use
    except TrustError as error:
        raise BootError(str(error)) from None
    node = settings.replace(ssh_key=identity)
    registration = join(node, timeout=timeout)
    if owner is not None:
        _chown_tree(settings.home, owner)  # the clone join made, as root
    log.info("joined the cluster as %s at %s (%s)", registration.mac, registration.ip,
             "master" if registration.is_master else f"master: {registration.master}")
    if systemd_running() and not foreground:
        changed = install_service(settings)
        if changed:
            _system("systemctl", "daemon-reload")
            _system("systemctl", "try-restart", UNIT)
        _system("systemctl", "enable", "--now", UNIT)
        log.info("%s is enabled and running; it runs the agent from now on", UNIT)
        return
    if settings.user is not None:
        _become(settings.user)
    # The agent runs in a process of its own (the same pid) that loads none of this one's
    # command-line libraries.
    become_agent(node)
