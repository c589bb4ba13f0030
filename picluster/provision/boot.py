"""From SD card to running node: `picluster prepare-boot` and `picluster boot`.

`prepare_boot` runs on the operator's machine and writes into a mounted boot partition
(FAT, which any computer can write): the boot config, the cluster key, the empty `ssh`
file that enables sshd on Raspberry Pi OS, and the first-boot hooks.  Both hooks run
picluster-firstboot.sh, which pip-installs picluster into /opt/picluster and runs
`picluster boot`:

*   images with cloud-init run the `runcmd` that `user-data` (#cloud-config) gains;
*   images without cloud-init run picluster-firstrun.sh through ``systemd.run=`` on
    cmdline.txt, as Raspberry Pi Imager runs its firstrun.sh: the one standard hook that
    a boot partition alone can set up (the root file system is ext4, which most
    operators' machines cannot write).  It installs a unit that runs the first boot
    once the network is online, and removes itself.

`boot` runs on the node, at first boot and at every start of picluster.service: it
installs the cluster key, sets the hostname, joins the cluster (clone, register, claim
`master` when due), then hands over to systemd, or becomes the agent where systemd does
not run (the lab, containers).  Each step is idempotent, each file is written
atomically, and every path comes from the node's Settings.
"""

from __future__ import annotations

import logging
import os
import pwd
import shlex
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import yaml

from picluster.files import install_file
from picluster.gitstore import ClusterRepo, GitError
from picluster.identity import IdentityError, identify
from picluster.node import reported_facts
from picluster.registry import Registration, register
from picluster.settings import ConfigError, Settings, config_path

__all__ = [
    "CONFIG_NAME",
    "DEFAULT_MOUNT",
    "DEFAULT_PACKAGE",
    "FIRSTBOOT",
    "FIRSTRUN",
    "KEY_NAME",
    "RUNCMD",
    "UNIT",
    "BootError",
    "Prepared",
    "boot",
    "boot_config",
    "hosts_text",
    "install_keys",
    "install_service",
    "join",
    "prepare_boot",
    "public_key",
    "set_hostname",
    "systemd_running",
    "unit_text",
]

log = logging.getLogger(__name__)

CONFIG_NAME = "picluster.conf"
KEY_NAME = "picluster_key"
FIRSTBOOT = "picluster-firstboot.sh"
FIRSTRUN = "picluster-firstrun.sh"
UNIT = "picluster.service"
# Where the node mounts its boot partition: Raspberry Pi OS Bookworm and later, Ubuntu.
# Bullseye and older mount it at /boot.
DEFAULT_MOUNT = "/boot/firmware"
DEFAULT_PACKAGE = "picluster"
# Every Raspberry Pi boot partition has these, whatever the model and release.
_BOOT_MARKERS = ("config.txt", "cmdline.txt")
# NoCloud's seed: an image that reads user-data has (or is given) meta-data beside it.
_CLOUD_INIT_SEED = "meta-data"
_FIRSTRUN_ARGS = ("systemd.run={mount}/" + FIRSTRUN, "systemd.run_success_action=reboot",
                  "systemd.unit=kernel-command-line.target")
# cloud-init does not know where this image mounts the boot partition; the shell finds it.
RUNCMD = ["sh", "-c", "for b in /boot/firmware /boot; do if [ -f $b/" + FIRSTBOOT + " ]; "
          "then exec sh $b/" + FIRSTBOOT + "; fi; done; "
          "echo picluster: no boot partition holds " + FIRSTBOOT + " >&2; exit 1"]
_IDENTITY_NAMES = {"ssh-ed25519": "id_ed25519", "ssh-rsa": "id_rsa",
                   "ecdsa-sha2-nistp256": "id_ecdsa", "ecdsa-sha2-nistp384": "id_ecdsa",
                   "ecdsa-sha2-nistp521": "id_ecdsa"}
_MAX_RETRY_DELAY = 60.0


class BootError(RuntimeError):
    """prepare-boot or boot cannot go on; `code` is the CLI's exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def _run(*argv: str) -> str:
    try:
        result = subprocess.run(argv, capture_output=True, text=True, check=False,
                                stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise BootError(f"{argv[0]} is not installed", code=1) from None
    if result.returncode:
        why = (result.stderr.strip() or result.stdout.strip()).splitlines()
        raise BootError(f"`{shlex.join(argv)}` failed: {why[-1] if why else result.returncode}",
                        code=1)
    return result.stdout


def _data(name: str) -> str:
    return resources.files("picluster").joinpath("data", name).read_text()


def public_key(private: bytes, source: Path) -> str:
    """The public half of the OpenSSH private key `private` (read from `source`), which
    must need no passphrase: the agent uses it unattended."""
    # ssh-keygen refuses a key that others may read, and FAT shows every file so: it
    # reads a private copy.
    with tempfile.TemporaryDirectory(prefix="picluster-") as scratch:
        copy = Path(scratch) / "key"
        install_file(copy, private, mode=0o600)
        try:
            line = _run("ssh-keygen", "-y", "-P", "", "-f", str(copy)).strip()
        except BootError as error:
            raise BootError(f"{source}: not an OpenSSH private key without a passphrase "
                            f"({str(error).rsplit(': ', 1)[-1]}); make one with "
                            f"ssh-keygen -t ed25519 -N '' -f {source.name}") from None
    return line + "\n"


# -- prepare-boot: on the operator's machine -----------------------------------------------


@dataclass(frozen=True)
class Prepared:
    boot_dir: Path
    written: tuple[str, ...]  # names of the files this run wrote, in the boot partition
    hooks: tuple[str, ...]  # "cloud-init", and "firstrun" on images without cloud-init


def boot_config(repo: str, *, master: bool, hostname: str | None) -> str:
    """The picluster.conf prepare-boot writes, next to the cluster key (KEY_NAME)."""
    lines = ["# picluster boot config, written by `picluster prepare-boot`.",
             "# Keys and defaults: picluster/settings.py; paths are relative to this file.",
             f"repo = {repo}", f"ssh_key = {KEY_NAME}"]
    if master:
        lines.append("master = true")
    if hostname:
        lines.append(f"hostname = {hostname}")
    return "\n".join(lines) + "\n"


def _cloud_config(text: str) -> dict[str, object] | None:
    """The settings of a #cloud-config picluster can add a runcmd to, else None."""
    if not text.strip():
        return {}
    if not text.startswith("#cloud-config"):
        return None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if loaded is None:
        return {}
    if isinstance(loaded, dict) and isinstance(loaded.get("runcmd") or [], list):
        return loaded
    return None


def _user_data(existing: str | None, force: bool) -> str:
    """`user-data` with picluster's runcmd added once.  Another #cloud-config (Raspberry
    Pi Imager writes the user, Wi-Fi and ssh keys there) keeps all its settings."""
    config = _cloud_config(existing) if existing is not None else {}
    if config is None:
        if not force:
            raise BootError("user-data exists and is not a #cloud-config that picluster can "
                            "add to; pass --force to replace it")
        config = {}
    runcmd = config.get("runcmd") or []
    assert isinstance(runcmd, list)
    config["runcmd"] = [*(command for command in runcmd if command != RUNCMD), RUNCMD]
    return ("#cloud-config\n# picluster prepare-boot added the last runcmd: it installs "
            "picluster and runs `picluster boot`.\n"
            + yaml.safe_dump(config, sort_keys=False, width=1000, default_flow_style=None))


def _cmdline_with_firstrun(text: str, mount: str) -> str:
    """cmdline.txt (one line; the firmware ignores any other) that runs picluster-firstrun.sh
    once.  It takes the place of Raspberry Pi Imager's firstrun.sh, which it runs first."""
    line, newline, rest = text.partition("\n")
    ours = [arg.format(mount=mount) for arg in _FIRSTRUN_ARGS]
    kept = []
    for arg in line.split():
        if arg.startswith("systemd.run="):
            if not arg.endswith(("/firstrun.sh", f"/{FIRSTRUN}")):
                raise BootError(f"cmdline.txt already runs {arg.split('=', 1)[1]} at first "
                                "boot; remove that systemd.run= first")
        elif not (arg.startswith("systemd.run_") or arg in ours):
            kept.append(arg)
    return " ".join([*kept, *ours]) + (newline or "\n") + rest


def _write_all(files: dict[Path, tuple[bytes | str, int]]) -> None:
    """Write every file or, on an error, put back what was there before."""
    before = {path: path.read_bytes() if path.is_file() else None for path in files}
    done: list[Path] = []
    try:
        for path, (data, mode) in files.items():
            install_file(path, data, mode=mode)
            done.append(path)
    except OSError as error:
        for written in reversed(done):
            old = before[written]
            try:
                if old is None:
                    written.unlink()
                else:
                    install_file(written, old, mode=files[written][1])
            except OSError:
                log.warning("could not restore %s", written)
        raise BootError(f"{error.filename or path}: cannot write it ({error.strerror}); "
                        "nothing was changed", code=1) from None


def prepare_boot(boot_dir: Path, *, repo: str, key: Path, master: bool = False,
                 hostname: str | None = None, force: bool = False,
                 mount: str = DEFAULT_MOUNT, package: str = DEFAULT_PACKAGE) -> Prepared:
    """Make the mounted boot partition `boot_dir` boot a node of the cluster at `repo`."""
    if not boot_dir.is_dir():
        raise BootError(f"{boot_dir}: no such directory; give the mount point of the SD "
                        "card's boot partition")
    missing = [name for name in _BOOT_MARKERS if not (boot_dir / name).is_file()]
    if missing and not force:
        raise BootError(f"{boot_dir} does not look like a Raspberry Pi boot partition (no "
                        f"{' or '.join(missing)}); give the SD card's boot partition, or "
                        "pass --force")
    config = boot_dir / CONFIG_NAME
    if config.exists() and not force:
        raise BootError(f"{config} exists; pass --force to replace it")
    if not mount.startswith("/"):
        raise BootError(f"--mount {mount}: give the absolute path where the node mounts its "
                        "boot partition, e.g. /boot/firmware")
    try:
        private = key.read_bytes()
    except OSError as error:
        raise BootError(f"--key {key}: {error.strerror}") from None
    text = boot_config(repo, master=master, hostname=hostname)
    try:
        Settings.parse(text, config)
    except ConfigError as error:
        raise BootError(f"{error.key}: {error.problem}") from None

    def existing(name: str) -> str | None:
        path = boot_dir / name
        return path.read_text(errors="replace") if path.is_file() else None

    files: dict[Path, tuple[bytes | str, int]] = {
        config: (text, 0o644),
        boot_dir / KEY_NAME: (private, 0o600),
        boot_dir / f"{KEY_NAME}.pub": (public_key(private, key), 0o644),
        boot_dir / FIRSTBOOT: (_data(FIRSTBOOT).replace("@PACKAGE@", shlex.quote(package)),
                               0o755),
        boot_dir / "user-data": (_user_data(existing("user-data"), force), 0o644),
    }
    hooks = ["cloud-init"]
    cmdline = existing("cmdline.txt")
    if cmdline is not None and not (boot_dir / _CLOUD_INIT_SEED).exists():
        files[boot_dir / FIRSTRUN] = (_data(FIRSTRUN), 0o755)
        files[boot_dir / "cmdline.txt"] = (_cmdline_with_firstrun(cmdline, mount), 0o644)
        hooks.append("firstrun")
    if not (boot_dir / "ssh").exists():
        files[boot_dir / "ssh"] = ("", 0o644)
    _write_all(files)
    return Prepared(boot_dir, tuple(path.name for path in files), tuple(hooks))


# -- boot: on the node -----------------------------------------------------------------------


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


def set_hostname(settings: Settings) -> bool:
    """Give the node the configured `hostname`, if it has another.  Only under systemd (a
    real Pi): elsewhere the hostname belongs to whatever runs the node (the lab's UTS
    namespace, a container), and boot leaves it alone."""
    wanted, current = settings.hostname, socket.gethostname()
    if wanted is None or wanted == current:
        return False
    if not systemd_running():
        log.warning("the hostname is %s, the boot config says %s; without systemd it is "
                    "left as it is", current, wanted)
        return False
    _run("hostnamectl", "set-hostname", wanted)
    hosts = settings.etc_dir / "hosts"
    try:
        current_hosts = hosts.read_text()
    except FileNotFoundError:
        current_hosts = "127.0.0.1\tlocalhost\n"
    install_file(hosts, hosts_text(current_hosts, wanted))
    log.info("hostname %s (was %s)", wanted, current)
    return True


def join(settings: Settings, *, timeout: float | None = None) -> Registration:
    """Clone the cluster repository and register (claiming `master` when due), retrying
    with backoff while the network or the git server is not there yet; BootError once
    `timeout` seconds (None: never) have passed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    delay = 1.0
    while True:
        try:
            node = identify(settings)
            repo = ClusterRepo.from_settings(settings, node.mac)
            if deadline is not None:  # git's own retries end when boot's do
                repo.deadline = max(deadline - time.monotonic(), 0.0)
            return register(repo, node, reported_facts(settings), designated=settings.master)
        except (GitError, IdentityError) as error:
            problem = str(error).strip().splitlines()[-1]
            if deadline is not None and time.monotonic() + delay > deadline:
                raise BootError(f"cannot join the cluster at {settings.repo}: {problem}",
                                code=1) from None
            log.warning("cannot join the cluster yet (%s); retrying in %.0f s", problem, delay)
            time.sleep(delay)
            delay = min(delay * 2, _MAX_RETRY_DELAY)


def unit_text() -> str:
    """picluster.service, as the package ships it."""
    return _data(UNIT)


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
    node = settings.replace(ssh_key=identity)
    registration = join(node, timeout=timeout)
    if owner is not None:
        _chown_tree(settings.home, owner)  # the clone join made, as root
    log.info("joined the cluster as %s at %s (%s)", registration.mac, registration.ip,
             "master" if registration.is_master else f"master: {registration.master}")
    if systemd_running() and not foreground:
        changed = install_service(settings)
        if changed:
            _run("systemctl", "daemon-reload")
            _run("systemctl", "try-restart", UNIT)
        _run("systemctl", "enable", "--now", UNIT)
        log.info("%s is enabled and running; it runs the agent from now on", UNIT)
        return
    if settings.user is not None:
        _become(settings.user)
    # Imported here: prepare-boot, on the operator's machine, needs none of the agent's
    # dependencies loaded.
    from picluster.node import Agent

    Agent(node).run()
