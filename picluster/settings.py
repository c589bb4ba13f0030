"""Settings: the boot config, its keys and defaults, and every local path a node uses.

The boot config is `key = value` lines (``#`` starts a comment), so a person can edit
it on a FAT boot partition with any editor.  Each key is declared once, as a field of
``Settings``: its type, default, parser (with its bounds) and a one-line help.  The
parser, ``DEFAULTS`` and the README's table check all read those declarations; every
path a node uses derives from ``home`` through the ``Settings`` properties.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from picluster.layout import normalize_mac, valid_hostname

__all__ = ["DEFAULTS", "DEFAULT_CONFIG", "ConfigError", "Settings", "config_path"]

DEFAULT_CONFIG = Path("/boot/picluster.conf")
# Raspberry Pi OS Bookworm and later mount the boot partition at /boot/firmware.
_BOOT_CONFIGS = (Path("/boot/firmware/picluster.conf"), DEFAULT_CONFIG)
# The seed's one-line config said PI_repo_addr=<url>.
_ALIASES = {"pi_repo_addr": "repo"}

Parser = Callable[[str], Any]


_SHOWN = 60  # characters of a bad value an error quotes


def _cut(text: str) -> str:
    """`text` as an error shows it: a 100 KB value is never echoed whole."""
    return text if len(text) <= _SHOWN else text[:_SHOWN] + "…"


def _shown(text: str) -> str:
    return f"'{_cut(text)}'"


class ConfigError(ValueError):
    """A boot config that cannot be used; the message names file, line and key."""

    def __init__(self, path: Path | str, line: int | None, key: str | None, problem: str):
        self.path, self.line, self.key, self.problem = Path(path), line, key, problem
        where = f"{path}:{line}" if line else str(path)
        what = f" {_cut(key)}:" if key else ""
        super().__init__(f"{where}:{what} {problem}")


def config_path(explicit: str | Path | None = None) -> Path:
    """The boot config to read: --config, else $PICLUSTER_CONFIG, else the boot partition's
    (/boot/firmware/picluster.conf, else /boot/picluster.conf)."""
    if explicit:
        return Path(explicit)
    if os.environ.get("PICLUSTER_CONFIG"):
        return Path(os.environ["PICLUSTER_CONFIG"])
    return next((path for path in _BOOT_CONFIGS if path.exists()), DEFAULT_CONFIG)


# -- parsers: the text after `=` to a typed value; ValueError says why not ------------------

_BOOL_WORDS = {"true": True, "yes": True, "on": True, "1": True,
               "false": False, "no": False, "off": False, "0": False}
_DURATION_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def _text(raw: str) -> str:
    if not raw:
        raise ValueError("no value; give one or delete the line")
    return raw


def _path(raw: str) -> Path:
    """A path; `Settings.parse` makes a relative one relative to the config file."""
    return Path(_text(raw)).expanduser()


# Transports git runs nothing for: ssh runs ssh, the others speak git's protocols.
_SCHEMES = {"ssh", "git+ssh", "ssh+git", "git", "http", "https", "file"}
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*)(://|::)")
_USE = "use ssh://, git://, https://, file:// or a path"


def _repo(raw: str) -> str:
    """A git URL, an scp-like `user@host:path`, or a local path (`Settings.parse` makes a
    relative one relative to the config file).  Refused: anything git would run a
    command for (`ext::`, `fd::`, any other `<helper>::` or unknown `<scheme>://`) and
    what an ssh or git would take for an option."""
    text = _text(raw)
    if text.startswith("-"):
        raise ValueError(f"{_shown(text)} looks like a command-line option, not a "
                         f"repository; {_USE}")
    scheme = _SCHEME.match(text)
    if scheme and (scheme[2] == "::" or scheme[1].lower() not in _SCHEMES):
        raise ValueError(f"{_shown(text)}: git would run a program to reach it (ext:: runs "
                         f"any command); {_USE}")
    if scheme:
        host = text[scheme.end():].split("/", 1)[0]
    elif _scp_like(text):
        host = text.split(":", 1)[0]
    else:
        return os.path.expanduser(text)
    if any(part.startswith("-") for part in host.split("@")):
        raise ValueError(f"{_shown(text)}: a user or host that starts with '-' would be an "
                         f"option to ssh; {_USE}")
    return text


def _scp_like(text: str) -> bool:
    """`[user@]host:path`, as git tells it from a path: a colon before any slash."""
    colon, slash = text.find(":"), text.find("/")
    return colon > 0 and (slash < 0 or colon < slash)


def _anchored(key: str, value: Any, folder: Path) -> Any:
    """`value` with a relative path made relative to `folder`, the config file's: not to
    the cwd, nor (for `repo`, as git would take it) to the clone's folder."""
    if isinstance(value, Path) and not value.is_absolute():
        return folder / value
    if key == "repo" and not (_SCHEME.match(value) or _scp_like(value) or
                              Path(value).is_absolute()):
        return str(folder / value)
    return value


def _boolean(raw: str) -> bool:
    if raw.lower() not in _BOOL_WORDS:
        raise ValueError(f"'{raw}' is not a boolean; use true or false")
    return _BOOL_WORDS[raw.lower()]


def _duration(*, zero: bool = False) -> Callable[[str], float]:
    """Seconds: `30`, `30s`, `5m`, `1h` or `7d`; finite, more than 0 (or 0 too, with
    `zero`)."""

    def parse(raw: str) -> float:
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
        if seconds < 0 or (seconds == 0 and not zero):
            raise ValueError(f"'{raw}' must be more than 0")
        return seconds

    return parse


def _whole(*, at_least: int) -> Callable[[str], int]:
    def parse(raw: str) -> int:
        if not raw.isdigit() or int(raw) < at_least:
            raise ValueError(f"'{raw}' is not a whole number of at least {at_least}")
        return int(raw)

    return parse


def _ipv4(raw: str) -> str:
    try:
        return str(ipaddress.IPv4Address(raw))
    except ValueError:
        raise ValueError(f"'{raw}' is not an IPv4 address, e.g. 198.18.0.11") from None


def _hostname(raw: str) -> str:
    if not valid_hostname(raw):
        raise ValueError(f"'{raw}' is not a host name: up to 63 letters, digits and inner "
                         "hyphens, e.g. pi-3")
    return raw


def _choice(*options: str) -> Callable[[str], str]:
    def parse(raw: str) -> str:
        if raw.lower() not in options:
            raise ValueError(f"'{raw}' is not one of {', '.join(sorted(options))}")
        return raw.lower()

    return parse


# -- declaring a key ----------------------------------------------------------------------


def _key(parse: Parser, help: str) -> dict[str, object]:
    """What a `Settings` field needs to be a boot-config key: the parser of its value
    (bounds included) and a line on what it is for."""
    return {"parse": parse, "help": help}


@dataclass(frozen=True)
class Settings:
    """Everything a node (or a CLI user) is configured with.  Build with `Settings.load`.

    Each field but `source` is a boot-config key: its type, its default (none: the key is
    required) and, through `_key`, its parser and help.  Durations are seconds.  The order
    of the fields is the order an `unknown key` error lists the keys in.
    """

    repo: str = field(metadata=_key(
        _repo, "git URL (ssh://, git://, https://, file://) or path of the cluster repository"))
    home: Path = field(default=Path("/var/lib/picluster"), metadata=_key(
        _path, "state dir: clone, huey database, rendered files"))
    branch: str = field(default="main", metadata=_key(
        _text, "the branch that holds the cluster's state"))
    interface: str = field(default="eth0", metadata=_key(
        _text, "identity: MAC and IPv4 are read from this interface"))
    mac: str | None = field(default=None, metadata=_key(
        normalize_mac, "pin the MAC (tests, odd hardware); else read from `interface`"))
    ip: str | None = field(default=None, metadata=_key(
        _ipv4, "pin the IPv4; else read from `interface`"))
    master: bool = field(default=False, metadata=_key(
        _boolean, "true: the operator designated this node as master"))
    hostname: str | None = field(default=None, metadata=_key(
        _hostname, "hostname to set at first boot (prepare-boot --hostname)"))
    ssh_key: Path | None = field(default=None, metadata=_key(
        _path, "cluster private key: git over ssh, Ansible, mpirun"))
    host_key: Path = field(default=Path("/etc/ssh/ssh_host_ed25519_key.pub"), metadata=_key(
        _path, "this node's sshd key, for known_hosts"))
    signing_key: Path | None = field(default=None, metadata=_key(
        _path, "private key that `enqueue` signs tasks with"))
    signer: str = field(default="operator", metadata=_key(
        _text, "the name tasks are signed as: its entry in allowed_signers"))
    trust_anchor: Path | None = field(default=None, metadata=_key(
        _path, "allowed-signers file on the card (prepare-boot --signer): the signers this "
               "node trusts from its first boot, whatever the repository says"))
    user: str | None = field(default=None, metadata=_key(
        _text, "local account that runs the agent and owns the keys (None: root)"))
    # The lab points user_ssh_dir and etc_dir into each node's own directory.
    user_ssh_dir: Path | None = field(default=None, metadata=_key(
        _path, "`boot` installs the cluster key here as `user`'s identity and authorized "
               "key (None: ~user/.ssh)"))
    etc_dir: Path = field(default=Path("/etc"), metadata=_key(
        _path, "the system's /etc: `boot` installs picluster.service here (where systemd "
               "runs), the `hosts` task the cluster's hosts, host keys and hostfile"))
    workers: int = field(default=2, metadata=_key(_whole(at_least=1), "huey consumer threads"))
    poll_interval: float = field(default=30.0, metadata=_key(
        _duration(), "every node polls git this often"))
    master_grace: float = field(default=300.0, metadata=_key(
        _duration(zero=True), "the master waits this long before its first poll"))
    ping_interval: float = field(default=60.0, metadata=_key(
        _duration(), "the master pings every node this often"))
    prune_after: int = field(default=3, metadata=_key(
        _whole(at_least=1), "consecutive failed pings before a node is pruned"))
    ping_timeout: float = field(default=5.0, metadata=_key(
        _duration(), "ssh ConnectTimeout of one ping"))
    keep_outcomes: float = field(default=7 * 86400.0, metadata=_key(
        _duration(), "the master removes outcomes older than this from the repository"))
    keep_outcomes_per_node: int = field(default=1000, metadata=_key(
        _whole(at_least=1), "and keeps at most this many outcomes per node, the newest"))
    converge_batch: int = field(default=8, metadata=_key(
        _whole(at_least=0), "the master has role playbooks on their way to at most this "
                            "many nodes at once; the others wait their turn (0: no cap)"))
    log_level: str = field(default="info", metadata=_key(
        _choice("debug", "info", "warning", "error"), "how much the agent logs"))
    source: Path | None = field(default=None, compare=False)  # the file it was read from

    # -- loading ---------------------------------------------------------------------

    @classmethod
    def parse(cls, text: str, source: Path | str = "<config>") -> Settings:
        """Parse boot-config text; raise ConfigError naming file, line and key."""
        values: dict[str, Any] = {}
        seen: dict[str, int] = {}
        for number, line in enumerate(text.splitlines(), start=1):
            stripped = line.split("#", 1)[0].strip()
            if not stripped:
                continue
            if "=" not in stripped:
                raise ConfigError(source, number, None,
                                  f"{_shown(stripped)} is not 'key = value'")
            key, raw = (part.strip() for part in stripped.split("=", 1))
            key = key.lower().replace("-", "_")
            key = _ALIASES.get(key, key)
            if key not in _PARSERS:
                close = difflib.get_close_matches(key, _PARSERS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else \
                    f"; known keys: {', '.join(_PARSERS)}"
                raise ConfigError(source, number, key, f"unknown key{hint}")
            if key in seen:
                raise ConfigError(source, number, key,
                                  f"set twice (first on line {seen[key]}); keep one")
            raw = raw.strip().strip('"').strip("'")
            try:
                value = _PARSERS[key](raw)
            except ValueError as error:
                # Every parser quotes the value it refuses: a long one is cut.
                raise ConfigError(source, number, key,
                                  str(error).replace(f"'{raw}'", _shown(raw))) from None
            if isinstance(source, Path):
                value = _anchored(key, value, source.parent)
            values[key] = value
            seen[key] = number
        if "repo" not in values:
            raise ConfigError(source, None, "repo",
                              "missing; add a line 'repo = <git URL or path>'")
        return cls(source=Path(source), **values)

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

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

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
    def playbook_state(self) -> Path:
        """The playbooks this node applied to itself, and its last failures (JSON; the
        `playbooks` fact)."""
        return self.rendered_dir / "playbooks.json"

    @property
    def cluster_files_state(self) -> Path:
        """The cluster files this node installed last: their version (the `cluster_files`
        fact) and the NFS server the clients mount."""
        return self.rendered_dir / "cluster.json"

    @property
    def cluster_hostfile(self) -> Path:
        """The MPI hostfile every node gets from the master (`hosts` task): `<ip>
        slots=<cores>`, the master first.  The same path on every node."""
        return self.etc_dir / "picluster" / "hostfile"

    @property
    def etc_hosts(self) -> Path:
        """/etc/hosts: picluster keeps a block of it, every node's name and IP."""
        return self.etc_dir / "hosts"

    @property
    def ssh_known_hosts(self) -> Path:
        """ssh's system-wide known hosts: picluster keeps a block of it, every node's
        registered host key (ssh, and so mpirun, check nodes against it)."""
        return self.etc_dir / "ssh" / "ssh_known_hosts"

    @property
    def trust_dir(self) -> Path:
        """The signers this node trusts, outside the clone that any writer can change."""
        return self.home / "trust"

    @property
    def trusted_signers(self) -> Path:
        """The allowed signers this node verifies tasks against: the card's anchor, or
        what it pinned at its first clone, then each change a signer in it signed."""
        return self.trust_dir / "allowed_signers"

    @property
    def installed_anchor(self) -> Path:
        """The card's anchor as last installed: a new one replaces the trusted signers."""
        return self.trust_dir / "anchor"

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


_KEYS = [key for key in dataclasses.fields(Settings) if "parse" in key.metadata]
_PARSERS: dict[str, Parser] = {key.name: key.metadata["parse"] for key in _KEYS}
# Every key's default (None: none, or required).  Durations are seconds.
DEFAULTS: dict[str, object] = {
    key.name: None if key.default is dataclasses.MISSING else key.default for key in _KEYS}
