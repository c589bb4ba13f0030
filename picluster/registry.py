"""Membership: who is in the cluster, who is master, and how a node joins.

Everything here reads a `Snapshot` or returns ops for `ClusterRepo.transact`; nothing
else touches git.  Malformed files are reported with their path, line and fix, and are
never deleted or overwritten on a node's behalf.
"""

from __future__ import annotations

import ipaddress
import logging
import re
from dataclasses import dataclass, field

import yaml

from picluster import layout, wakeup
from picluster.gitstore import ClusterRepo, Create, Op, Put, Remove, Snapshot
from picluster.identity import NodeIdentity

__all__ = [
    "ClusterVars",
    "Member",
    "Membership",
    "Registration",
    "read_cluster_vars",
    "read_membership",
    "register",
    "registration_ops",
    "unregister_ops",
]

log = logging.getLogger(__name__)

# What may reach an inventory, a Ganglia config or an Ansible variable from the repository:
# plain names only, since Ansible expands {{ templates }} and INI takes `key=value` pairs.
_HOST_KEY = re.compile(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+=*")
_PLAIN = {"name": re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"),
          "ssh_user": re.compile(r"[a-z_][a-z0-9_-]{0,31}")}
_RANGES = {"wakeup_port": range(0, 65536)}  # 0: off


@dataclass(frozen=True)
class Member:
    mac: str
    ip: str
    facts: dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def hostname(self) -> str:
        """The hostname the node reported, if it is a plain one; else its IP.  (Facts are
        unsigned and end up in the inventory and Ganglia's configs.)"""
        name = self.facts.get("hostname")
        return name if isinstance(name, str) and layout.valid_hostname(name, dotted=True) \
            else self.ip

    @property
    def host_key(self) -> str | None:
        """The ssh host key the node reported (`type base64`), if it is one: a stray
        newline would add lines of its own to the master's known_hosts."""
        key = self.facts.get("host_key")
        return key if isinstance(key, str) and _HOST_KEY.fullmatch(key) else None

    @property
    def cores(self) -> int:
        cores = self.facts.get("cores")
        return cores if isinstance(cores, int) and cores > 0 else 1


@dataclass(frozen=True)
class Membership:
    """The registry as one commit of the repository shows it."""

    members: tuple[Member, ...]
    master: str | None  # the MAC in `master`, if it holds a valid one
    problems: tuple[str, ...] = ()  # malformed files, each with its fix

    def get(self, mac: str) -> Member | None:
        return next((m for m in self.members if m.mac == mac), None)

    @property
    def master_member(self) -> Member | None:
        return self.get(self.master) if self.master else None

    @property
    def workers(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.mac != self.master)


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0].strip() if text.strip() else ""


def read_master(snapshot: Snapshot) -> tuple[str | None, str | None]:
    """(the master's MAC or None, a problem or None)."""
    text = snapshot.read(layout.MASTER)
    if text is None:
        return None, None
    try:
        return layout.normalize_mac(_first_line(text)), None
    except ValueError as error:
        return None, (f"{layout.MASTER}: line 1: {error}; write the master's MAC there, or "
                      "delete the file to let the next node to register claim it")


def read_membership(snapshot: Snapshot) -> Membership:
    problems = []
    master, problem = read_master(snapshot)
    if problem:
        problems.append(problem)
    members = []
    for name in snapshot.listdir(layout.IP_DIR):
        if name.startswith("."):
            continue
        path = f"{layout.IP_DIR}/{name}"
        try:
            mac = layout.normalize_mac(name)
        except ValueError:
            problems.append(f"{path}: the file name is not a MAC (12 hex digits); "
                            "rename or delete it")
            continue
        if mac != name:
            problems.append(f"{path}: write the name as {mac} (lower case, no colons)")
            continue
        text = snapshot.read(path) or ""
        try:
            ip = str(ipaddress.IPv4Address(_first_line(text)))
        except ValueError:
            problems.append(f"{path}: line 1: '{_first_line(text)}' is not an IPv4 address; "
                            "the node rewrites it when it next registers")
            continue
        members.append(Member(mac, ip, _read_facts(snapshot, mac, problems)))
    return Membership(tuple(members), master, tuple(problems))


def _read_facts(snapshot: Snapshot, mac: str, problems: list[str]) -> dict[str, object]:
    path = layout.facts_path(mac)
    text = snapshot.read(path)
    if text is None:
        return {}
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        problems.append(_yaml_problem(path, error, "the node rewrites it when it next "
                                                   "registers"))
        return {}
    return data if isinstance(data, dict) else {}


def _yaml_problem(path: str, error: yaml.YAMLError, consequence: str) -> str:
    mark = getattr(error, "problem_mark", None)
    where = f": line {mark.line + 1}" if mark else ""
    return f"{path}{where}: not valid YAML; {consequence}"


@dataclass(frozen=True)
class ClusterVars:
    """Cluster-wide settings from local-vars/cluster.yml (defaults when absent)."""

    name: str = "picluster"
    ssh_user: str = "root"
    # The `ganglia:` section as written; picluster.ganglia checks it, with its defaults.
    ganglia: dict[str, object] = field(default_factory=dict)
    # UDP port of wake-ups (picluster.wakeup); 0 turns them off and nodes keep to polling.
    wakeup_port: int = wakeup.PORT
    problems: tuple[str, ...] = ()


def read_cluster_vars(snapshot: Snapshot) -> ClusterVars:
    text = snapshot.read(layout.CLUSTER_VARS) or ""
    problems: list[str] = []
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as error:
        return ClusterVars(problems=(_yaml_problem(layout.CLUSTER_VARS, error,
                                                   "defaults apply until it is fixed"),))
    data = data if isinstance(data, dict) else {}
    ganglia = data.get("ganglia") if isinstance(data.get("ganglia"), dict) else {}
    values = {"name": data.get("name"), "ssh_user": data.get("ssh_user"),
              "wakeup_port": data.get("wakeup_port")}
    defaults = ClusterVars()
    chosen: dict[str, object] = {}
    for key, value in values.items():
        default = getattr(defaults, key)
        if value is None:
            continue
        if not isinstance(value, type(default)) or isinstance(value, bool):
            problems.append(f"{layout.CLUSTER_VARS}: '{key}' should be a "
                            f"{type(default).__name__}, not {value!r}; using {default!r}")
            continue
        if key in _PLAIN and not _PLAIN[key].fullmatch(value):
            problems.append(f"{layout.CLUSTER_VARS}: '{key}' must be a plain name "
                            f"({_PLAIN[key].pattern}), not {value!r}; using {default!r}")
            continue
        if key in _RANGES and value not in _RANGES[key]:
            problems.append(f"{layout.CLUSTER_VARS}: '{key}' must be between "
                            f"{_RANGES[key].start} and {_RANGES[key].stop - 1}, not {value}; "
                            f"using {default!r}")
            continue
        chosen[key] = value
    return ClusterVars(**chosen, ganglia=ganglia,  # type: ignore[arg-type]
                       problems=tuple(problems))


def _facts_text(mac: str, facts: dict[str, object]) -> str:
    return (f"# Facts node {mac} reports about itself; rewritten when it registers.\n"
            + yaml.safe_dump(facts, sort_keys=True, default_flow_style=False))


def registration_ops(node: NodeIdentity, facts: dict[str, object] | None = None) -> list[Op]:
    """The ops of one registration: the IP file, the facts, and `master` if absent.

    `master` is only ever created, never overwritten: whichever registration reaches
    main first wins, and the repository decides that, race-free.
    """
    ops: list[Op] = [Put(layout.ip_path(node.mac), f"{node.ip}\n")]
    if facts is not None:
        ops.append(Put(layout.facts_path(node.mac), _facts_text(node.mac, facts)))
    ops.append(Create(layout.MASTER, f"{node.mac}\n"))
    return ops


def unregister_ops(mac: str, ip: str) -> list[Op]:
    """Remove a node's IP file, but only while it still names `ip`: a node that
    re-registered meanwhile (with a new address) stays."""
    return [Remove(layout.ip_path(mac), expect=f"{ip}\n")]


@dataclass(frozen=True)
class Registration:
    mac: str
    ip: str
    master: str | None  # who holds `master` after this registration
    changed: tuple[str, ...]  # repository paths this registration changed
    commit: str | None  # None: nothing changed, nothing pushed
    attempts: int

    @property
    def is_master(self) -> bool:
        return self.master == self.mac

    def as_dict(self) -> dict[str, object]:
        return {"mac": self.mac, "ip": self.ip, "master": self.master,
                "is_master": self.is_master, "changed": list(self.changed),
                "commit": self.commit, "attempts": self.attempts}


def register(repo: ClusterRepo, node: NodeIdentity, facts: dict[str, object] | None = None,
             *, designated: bool = False) -> Registration:
    """Register `node` (the seed's ip2file + up2git + master check) and push."""
    result = repo.transact(registration_ops(node, facts), f"register {node.mac} at {node.ip}")
    snapshot = repo.snapshot()
    master, problem = read_master(snapshot)
    if problem:
        log.warning("%s", problem)
    if designated and master != node.mac:
        log.warning("this node (%s) is the designated master, but %s already holds `master`; "
                    "it is not overwritten. To hand over, write %s into `master` in the "
                    "cluster repository and push", node.mac, master or "an invalid entry",
                    node.mac)
    # `changed` was judged when the change was sent; whether its claim of `master` won
    # is only known now.
    changed = tuple(p for p in result.changed if p != layout.MASTER or master == node.mac)
    if result.commit and master not in (None, node.mac):
        # A join or a move reaches the master's views now, not at its next poll.
        wakeup.send(snapshot, [master], read_cluster_vars(snapshot).wakeup_port,
                    source=node.ip)
    return Registration(node.mac, node.ip, master, changed, result.commit, result.attempts)
