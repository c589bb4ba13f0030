"""Membership: who is in the cluster, who is master, and how a node joins.

Everything here reads a `Snapshot` or returns ops for `ClusterRepo.transact`; nothing
else touches git.  Malformed files are reported with their path, line and fix, and are
never deleted or overwritten on a node's behalf.

A node signs its registration (its IP and its facts) with the cluster key every member
holds; the master acts only on registrations that verify (`verify_registrations`), so
whoever can push but lacks the cluster key cannot put an address or a host key into the
inventory, hostfile, known_hosts, Ganglia or the NFS exports.
"""

from __future__ import annotations

import functools
import ipaddress
import logging
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from picluster import layout, wakeup
from picluster.bounded import LimitError, load_yaml
from picluster.gitstore import ClusterRepo, Create, Op, Put, Remove, Snapshot
from picluster.identity import NodeIdentity, address_problem
from picluster.signing import NODE_NAMESPACE, AllowedSigners, SignatureError, sign

__all__ = [
    "HOST_KEY_PATTERN",
    "SSH_USER_PATTERN",
    "ClusterVars",
    "Member",
    "Membership",
    "Registration",
    "read_cluster_vars",
    "read_membership",
    "register",
    "registration_message",
    "registration_ops",
    "unregister_ops",
    "verify_registrations",
]

log = logging.getLogger(__name__)

# What may reach an inventory, a Ganglia config or an Ansible variable from the repository:
# plain names only, since Ansible expands {{ templates }} and INI takes `key=value` pairs.
_HOST_KEY = re.compile(r"(ssh-ed25519|ssh-rsa|ecdsa-sha2-nistp(256|384|521)) [A-Za-z0-9+/]+=*")
_PLAIN = {"name": re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"),
          "ssh_user": re.compile(r"[a-z_][a-z0-9_-]{0,31}")}
# The same rules, for task schemas that carry these values to a node.
HOST_KEY_PATTERN = _HOST_KEY.pattern
SSH_USER_PATTERN = _PLAIN["ssh_user"].pattern
# A facts file or cluster.yml is a few hundred bytes; anything near this is not one.
_MAX_YAML = 64 << 10
# What `cores` may say: a Pi has 4, a big server a few hundred.
_MAX_CORES = 1024
_RANGES = {"wakeup_port": range(0, 65536)}  # 0: off


@dataclass(frozen=True)
class Member:
    mac: str
    ip: str
    facts: dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def hostname(self) -> str:
        """The hostname the node reported, if it is a plain one; else its IP.  (Facts end
        up in the inventory and Ganglia's configs, and a signature proves only who wrote
        them.)"""
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
        """The cores the node reported, if that is a sane count (1 to 1024); else 1."""
        cores = self.facts.get("cores")
        return cores if _sane_cores(cores) else 1


def _sane_cores(cores: object) -> bool:
    return isinstance(cores, int) and not isinstance(cores, bool) and 0 < cores <= _MAX_CORES


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


def _quoted(value: object, limit: int = 60) -> str:
    """`value` as an error message may show it: a 100 KB value is not echoed whole."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def read_master(snapshot: Snapshot) -> tuple[str | None, str | None]:
    """(the master's MAC or None, a problem or None).  A file of several lines names the
    MAC on its first, and is a problem."""
    try:
        text = snapshot.read(layout.MASTER, max_size=_MAX_YAML)
    except LimitError as error:
        return None, f"{layout.MASTER}: {error}; write the master's MAC there, one line"
    if text is None:
        return None, None
    try:
        mac = layout.normalize_mac(_first_line(text)[:40])
    except ValueError as error:
        return None, (f"{layout.MASTER}: line 1: {error}; write the master's MAC there, or "
                      "delete the file to let the next node to register claim it")
    lines = len([line for line in text.splitlines() if line.strip()])
    if lines > 1:
        return mac, (f"{layout.MASTER}: holds {lines} lines; it names one node, its MAC on "
                     f"one line: {mac}, from line 1, counts until it is fixed")
    return mac, None


def read_membership(snapshot: Snapshot) -> Membership:
    """Who is in, as `snapshot` says; each file that cannot be read is a problem of its
    own, and the rest of the registry is read without it."""
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
            member = _read_member(snapshot, path, name, problems)
        except Exception as error:  # a file no check foresaw must not stop the render
            problems.append(f"{path}: cannot be read ({type(error).__name__}: {error})")
            continue
        if member is not None:
            members.append(member)
    if master is not None and all(m.mac != master for m in members):
        problems.append(f"{layout.MASTER}: names {layout.format_mac(master)}, which is not "
                        f"registered (no valid {layout.ip_path(master)}); until it registers "
                        "no node acts as master: write a registered node's MAC there")
    return Membership(tuple(members), master, tuple(problems))


def _read_member(snapshot: Snapshot, path: str, name: str, problems: list[str]
                 ) -> Member | None:
    try:
        mac = layout.normalize_mac(name)
    except ValueError:
        problems.append(f"{path}: the file name is not a MAC (12 hex digits); "
                        "rename or delete it")
        return None
    if mac != name:
        problems.append(f"{path}: write the name as {mac} (lower case, no colons)")
        return None
    text = snapshot.read(path, max_size=_MAX_YAML) or ""
    try:
        ip = str(ipaddress.IPv4Address(_first_line(text)))
    except ValueError:
        problems.append(f"{path}: line 1: {_quoted(_first_line(text))} is not an IPv4 "
                        "address; the node rewrites it when it next registers")
        return None
    problem = address_problem(mac, ip)
    if problem:
        problems.append(f"{path}: {problem}; not a member (no node registers so; delete "
                        "the file)")
        return None
    facts = _read_facts(snapshot, mac, problems)
    if "cores" in facts and not _sane_cores(facts["cores"]):
        problems.append(f"{layout.facts_path(mac)}: cores: {_quoted(facts['cores'])} is not "
                        f"a count from 1 to {_MAX_CORES}; counted as 1")
    return Member(mac, ip, facts)


def _read_facts(snapshot: Snapshot, mac: str, problems: list[str]) -> dict[str, object]:
    path = layout.facts_path(mac)
    data = _read_yaml(snapshot, path, problems,
                      "the node rewrites it when it next registers; until then its facts "
                      "are left out")
    return data if isinstance(data, dict) else {}


def _read_yaml(snapshot: Snapshot, path: str, problems: list[str], consequence: str) -> object:
    """The YAML in `path` (None when absent); a file too large, too deeply nested or not
    YAML is a problem, and None."""
    try:
        text = snapshot.read(path, max_size=_MAX_YAML)
        return None if text is None else load_yaml(text, max_size=_MAX_YAML)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f": line {mark.line + 1}" if mark else ""
        problems.append(f"{path}{where}: not valid YAML; {consequence}")
    except LimitError as error:
        problems.append(f"{path}: {error}; {consequence}")
    return None


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
    problems: list[str] = []
    data = _read_yaml(snapshot, layout.CLUSTER_VARS, problems,
                      "defaults apply until it is fixed")
    if problems:
        return ClusterVars(problems=tuple(problems))
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
                            f"{type(default).__name__}, not {_quoted(value)}; using {default!r}")
            continue
        if key in _PLAIN and not _PLAIN[key].fullmatch(value):
            problems.append(f"{layout.CLUSTER_VARS}: '{key}' must be a plain name "
                            f"({_PLAIN[key].pattern}), not {_quoted(value)}; using {default!r}")
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


def registration_message(mac: str, ip: str, facts_text: str) -> bytes:
    """What a node signs when it registers: its MAC, its IP and its facts file's text."""
    return (f"picluster registration\nmac {mac}\nip {ip}\n{layout.facts_path(mac)}:\n"
            f"{facts_text}").encode()


@functools.lru_cache(maxsize=8)
def _signature(message: bytes, key: Path) -> str:
    # A node registers at every poll: one ssh-keygen per change, not per poll (and an
    # ECDSA signature, which differs at each signing, makes no commit per poll).
    (signature,) = sign([message], key, NODE_NAMESPACE)
    return signature


def registration_ops(node: NodeIdentity, facts: dict[str, object] | None = None, *,
                     key: Path | None = None) -> list[Op]:
    """The ops of one registration: the IP file, the facts (signed with the cluster key
    `key`, when given), and `master` if absent.

    `master` is only ever created, never overwritten: whichever registration reaches
    main first wins, and the repository decides that, race-free.
    """
    ops: list[Op] = [Put(layout.ip_path(node.mac), f"{node.ip}\n")]
    if facts is not None:
        text = _facts_text(node.mac, facts)
        ops.append(Put(layout.facts_path(node.mac), text))
        if key is not None:
            ops.append(Put(layout.registration_sig_path(node.mac),
                           _signature(registration_message(node.mac, node.ip, text), key)))
    ops.append(Create(layout.MASTER, f"{node.mac}\n"))
    return ops


def verify_registrations(snapshot: Snapshot, membership: Membership,
                         cluster_key: str) -> tuple[Membership, dict[str, str]]:
    """`membership` less the members whose registration the cluster key (`cluster_key`,
    its public half) did not sign, and why each of those is left out, by MAC."""
    judge = AllowedSigners.parse(f'cluster namespaces="{NODE_NAMESPACE}" {cluster_key}',
                                 "the cluster key", NODE_NAMESPACE)
    kept, refused = [], {}
    for member in membership.members:
        path = layout.registration_sig_path(member.mac)
        signature = snapshot.read(path)
        if signature is None:
            why = f"there is no {path}"
        else:
            try:
                judge.verify(registration_message(
                    member.mac, member.ip, snapshot.read(layout.facts_path(member.mac)) or ""),
                    signature)
            except SignatureError as error:
                why = f"{path}: {error}"
            else:
                kept.append(member)
                continue
        refused[member.mac] = (
            f"{layout.ip_path(member.mac)}: the registration of {member.ip} does not verify "
            f"({why}); left out of the inventory, hostfile, known_hosts, Ganglia and pings. "
            f"A node signs its IP and {layout.facts_path(member.mac)} into {path} with the "
            "cluster key (ssh_key)")
    return replace(membership, members=tuple(kept)), refused


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
             *, designated: bool = False, key: Path | None = None) -> Registration:
    """Register `node` (the seed's ip2file + up2git + master check), signed with the
    cluster key `key` when given, and push."""
    result = repo.transact(registration_ops(node, facts, key=key),
                           f"register {node.mac} at {node.ip}")
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
