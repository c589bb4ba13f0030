"""Settings: the boot config, its defaults, and every local path a node uses.

The boot config is `key = value` lines (``#`` starts a comment), so a person can edit
it on a FAT boot partition with any editor. Every default lives in ``DEFAULTS`` below;
every path a node uses derives from ``home`` through the ``Settings`` properties.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from picluster.layout import normalize_mac, valid_hostname

__all__ = ["DEFAULTS", "DEFAULT_CONFIG", "ConfigError", "Settings", "config_path"]

DEFAULT_CONFIG = Path("/boot/picluster.conf")
# Raspberry Pi OS Bookworm and later mount the boot partition at /boot/firmware.
_BOOT_CONFIGS = (Path("/boot/firmware/picluster.conf"), DEFAULT_CONFIG)

# The one place defaults are documented.  Durations are seconds.
DEFAULTS: dict[str, object] = {
    "repo": None,  # git URL or path of the cluster repository (required)
    "home": "/var/lib/picluster",  # state dir: clone, huey database, rendered files
    "branch": "main",  # the branch that holds the cluster's state
    "interface": "eth0",  # identity: MAC and IPv4 are read from this interface
    "mac": None,  # pin the MAC (tests, odd hardware); else read from `interface`
    "ip": None,  # pin the IPv4; else read from `interface`
    "master": False,  # true: the operator designated this node as master
    "hostname": None,  # hostname to set at first boot (prepare-boot --hostname)
    "ssh_key": None,  # cluster private key: git over ssh, Ansible, mpirun
    "host_key": "/etc/ssh/ssh_host_ed25519_key.pub",  # this node's sshd key, for known_hosts
    "signing_key": None,  # private key that `enqueue` signs tasks with
    "signer": "operator",  # the name tasks are signed as: its entry in allowed_signers
    "user": None,  # local account that runs the agent and owns the keys (None: root)
    # `boot` installs the cluster key here as `user`'s identity and authorized key (None:
    # ~user/.ssh).  The lab points this and etc_dir into each node's own directory.
    "user_ssh_dir": None,
    "etc_dir": "/etc",  # `boot` installs picluster.service here, on nodes that run systemd
    "workers": 2,  # huey consumer threads
    "poll_interval": 30.0,  # every node polls git this often
    "master_grace": 300.0,  # the master waits this long before its first poll
    "ping_interval": 60.0,  # the master pings every node this often
    "prune_after": 3,  # consecutive failed pings before a node is pruned
    "ping_timeout": 5.0,  # ssh ConnectTimeout of one ping
    "log_level": "info",
}

_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True,
               "false": False, "no": False, "off": False, "0": False}
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}
_DURATIONS = {"poll_interval", "master_grace", "ping_interval", "ping_timeout"}
_POSITIVE_INTS = {"workers", "prune_after"}
_PATHS = {"home", "ssh_key", "signing_key", "host_key", "user_ssh_dir", "etc_dir"}
_LOG_LEVELS = {"debug", "info", "warning", "error"}


class ConfigError(ValueError):
    """A boot config that cannot be used; the message names file, line and key."""

    def __init__(self, path: Path | str, line: int | None, key: str | None, problem: str):
        self.path, self.line, self.key, self.problem = Path(path), line, key, problem
        where = f"{path}:{line}" if line else str(path)
        what = f" {key}:" if key else ""
        super().__init__(f"{where}:{what} {problem}")


def config_path(explicit: str | Path | None = None) -> Path:
    """The boot config to read: --config, else $PICLUSTER_CONFIG, else the boot partition's
    (/boot/firmware/picluster.conf, else /boot/picluster.conf)."""
    if explicit:
        return Path(explicit)
    if os.environ.get("PICLUSTER_CONFIG"):
        return Path(os.environ["PICLUSTER_CONFIG"])
    return next((path for path in _BOOT_CONFIGS if path.exists()), DEFAULT_CONFIG)


def _parse_value(key: str, raw: str) -> object:
    """Turn the text after `=` into the typed value of `key`; ValueError says why not."""
    if key == "master":
        if raw.lower() not in _BOOL_WORDS:
            raise ValueError(f"'{raw}' is not a boolean; use true or false")
        return _BOOL_WORDS[raw.lower()]
    if key in _DURATIONS:
        number, scale = raw, 1.0
        if raw and raw[-1].lower() in _DURATION_UNITS:
            number, scale = raw[:-1], _DURATION_UNITS[raw[-1].lower()]
        try:
            seconds = float(number) * scale
            if not math.isfinite(seconds):
                raise ValueError
        except ValueError:
            raise ValueError(f"'{raw}' is not a duration; use seconds, e.g. 30 or 30s or 5m") \
                from None
        if seconds < 0 or (seconds == 0 and key != "master_grace"):
            raise ValueError(f"'{raw}' must be more than 0")
        return seconds
    if key in _POSITIVE_INTS:
        if not raw.isdigit() or int(raw) < 1:
            raise ValueError(f"'{raw}' is not a whole number of at least 1")
        return int(raw)
    if key == "mac":
        return normalize_mac(raw)
    if key == "ip":
        import ipaddress

        try:
            return str(ipaddress.IPv4Address(raw))
        except ValueError:
            raise ValueError(f"'{raw}' is not an IPv4 address, e.g. 198.18.0.11") from None
    if key == "hostname" and not valid_hostname(raw):
        raise ValueError(f"'{raw}' is not a host name: up to 63 letters, digits and inner "
                         "hyphens, e.g. pi-3")
    if key == "log_level":
        if raw.lower() not in _LOG_LEVELS:
            raise ValueError(f"'{raw}' is not one of {', '.join(sorted(_LOG_LEVELS))}")
        return raw.lower()
    if not raw:
        raise ValueError("no value; give one or delete the line")
    return raw


@dataclass(frozen=True)
class Settings:
    """Everything a node (or a CLI user) is configured with.  Build with `Settings.load`."""

    repo: str
    home: Path = Path(str(DEFAULTS["home"]))
    branch: str = str(DEFAULTS["branch"])
    interface: str = str(DEFAULTS["interface"])
    mac: str | None = None
    ip: str | None = None
    master: bool = False
    hostname: str | None = None
    ssh_key: Path | None = None
    host_key: Path = Path(str(DEFAULTS["host_key"]))
    signing_key: Path | None = None
    signer: str = str(DEFAULTS["signer"])
    user: str | None = None
    user_ssh_dir: Path | None = None
    etc_dir: Path = Path(str(DEFAULTS["etc_dir"]))
    workers: int = int(DEFAULTS["workers"])  # type: ignore[call-overload]
    poll_interval: float = float(DEFAULTS["poll_interval"])  # type: ignore[arg-type]
    master_grace: float = float(DEFAULTS["master_grace"])  # type: ignore[arg-type]
    ping_interval: float = float(DEFAULTS["ping_interval"])  # type: ignore[arg-type]
    prune_after: int = int(DEFAULTS["prune_after"])  # type: ignore[call-overload]
    ping_timeout: float = float(DEFAULTS["ping_timeout"])  # type: ignore[arg-type]
    log_level: str = str(DEFAULTS["log_level"])
    source: Path | None = field(default=None, compare=False)

    # -- loading ---------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str, source: Path | str = "<config>") -> Settings:
        """Parse boot-config text; raise ConfigError naming file, line and key."""
        values: dict[str, object] = {}
        seen: dict[str, int] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.split("#", 1)[0].strip()
            if not stripped:
                continue
            if "=" not in stripped:
                raise ConfigError(source, number, None,
                                  f"'{stripped}' is not 'key = value'")
            key, raw = (part.strip() for part in stripped.split("=", 1))
            key = key.lower().replace("-", "_")
            # The seed's one-line config said PI_repo_addr=<url>.
            if key == "pi_repo_addr":
                key = "repo"
            if key not in DEFAULTS:
                close = difflib.get_close_matches(key, DEFAULTS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else \
                    f"; known keys: {', '.join(DEFAULTS)}"
                raise ConfigError(source, number, key, f"unknown key{hint}")
            if key in seen:
                raise ConfigError(source, number, key,
                                  f"set twice (first on line {seen[key]}); keep one")
            raw = raw.strip().strip('"').strip("'")
            try:
                values[key] = _parse_value(key, raw)
            except ValueError as error:
                raise ConfigError(source, number, key, str(error)) from None
            seen[key] = number
        if "repo" not in values:
            raise ConfigError(source, None, "repo",
                              "missing; add a line 'repo = <git URL or path>'")
        for key in _PATHS:
            if key in values:
                path = Path(str(values[key])).expanduser()
                # Relative paths are relative to the config file, not to the cwd.
                if not path.is_absolute() and isinstance(source, Path):
                    path = source.parent / path
                values[key] = path
        return cls(source=Path(source), **values)  # type: ignore[arg-type]

    @classmethod
    def load(cls, path: str | Path | None = None) -> Settings:
        """Read the boot config at `path` (see `config_path` for the default)."""
        source = config_path(path)
        try:
            text = source.read_text(encoding="utf-8-sig")
        except FileNotFoundError:
            raise ConfigError(source, None, None,
                              "not found; write one (picluster prepare-boot) or pass "
                              "--config PATH / set PICLUSTER_CONFIG") from None
        except UnicodeDecodeError as error:
            raise ConfigError(source, None, None,
                              f"is not UTF-8 text ({error.reason}); save it as plain text") \
                from None
        except OSError as error:
            raise ConfigError(source, None, None, f"cannot be read: {error.strerror}") from None
        return cls.parse(text, source)

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    # -- paths: every local file a node uses ------------------------------------------

    @property
    def clone_dir(self) -> Path:
        return self.home / "repo"

    @property
    def huey_db(self) -> Path:
        return self.home / "huey.db"

    @property
    def ssh_dir(self) -> Path:
        """Known hosts and ssh control sockets of this node (never shared between nodes)."""
        return self.home / "ssh"

    @property
    def known_hosts(self) -> Path:
        return self.ssh_dir / "known_hosts"

    @property
    def rendered_dir(self) -> Path:
        """Where the master installs the views it renders (inventory, hostfile, ganglia)."""
        return self.home / "rendered"

    @property
    def inventory_file(self) -> Path:
        """The Ansible inventory the master renders: groups [master] and [nodes]."""
        return self.rendered_dir / "inventory"

    @property
    def hostfile(self) -> Path:
        """The OpenMPI hostfile the master renders: `<ip> slots=<cores>` per live node."""
        return self.rendered_dir / "hostfile"

    @property
    def cluster_known_hosts(self) -> Path:
        """Host keys of the registered nodes (from local-vars/), for Ansible and mpirun."""
        return self.rendered_dir / "known_hosts"

    @property
    def ganglia_state(self) -> Path:
        """The Ganglia config this node last applied (JSON with its digest, a fact)."""
        return self.rendered_dir / "ganglia.json"

    @property
    def account_ssh_dir(self) -> Path:
        """`user`'s ssh directory: `user_ssh_dir`, else ~user/.ssh."""
        if self.user_ssh_dir is not None:
            return self.user_ssh_dir
        return Path(os.path.expanduser(f"~{self.user or 'root'}")) / ".ssh"

    @property
    def authorized_keys(self) -> Path:
        """Where `boot` authorizes the cluster key: the master logs in with it."""
        return self.account_ssh_dir / "authorized_keys"

    @property
    def run_dir(self) -> Path:
        """Pid files and scratch space of the services the agent starts."""
        return self.home / "run"

    @property
    def ansible_dir(self) -> Path:
        return self.home / "ansible"

    def ssh_command(self, *, known_hosts: Path | None = None) -> str:
        """The ssh command line git and mpirun use: this node's key, its own control
        sockets, and host keys checked against `known_hosts` (trust on first use)."""
        parts = ["ssh", "-o", "BatchMode=yes", "-o", "ConnectTimeout=10",
                 "-o", "StrictHostKeyChecking=accept-new",
                 "-o", f"UserKnownHostsFile={known_hosts or self.known_hosts}",
                 "-o", "ControlMaster=auto", "-o", f"ControlPath={self.ssh_dir}/cm-%C",
                 "-o", "ControlPersist=60"]
        if self.ssh_key:
            parts += ["-i", str(self.ssh_key), "-o", "IdentitiesOnly=yes"]
        return shlex.join(parts)
