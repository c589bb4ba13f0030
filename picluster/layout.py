"""The cluster repository's layout (docs/design.md): every path in it, and what may go there.

Names that come from outside (a MAC, a task id) are validated here before they become a
path, so nothing built from them can leave its directory.
"""

from __future__ import annotations

import re

__all__ = [
    "ALLOWED_SIGNERS",
    "ALLOWED_SIGNERS_SIG",
    "CLUSTER_VARS",
    "HEALTH",
    "HOSTFILE",
    "INVENTORY",
    "IP_DIR",
    "MASTER",
    "QUEUE_DIR",
    "SCHEDULES_DIR",
    "facts_path",
    "format_mac",
    "ip_path",
    "normalize_mac",
    "outcome_path",
    "pending_path",
    "queue_dir",
    "registration_sig_path",
    "revoked_path",
    "schedule_path",
    "schedule_run_path",
    "seed_files",
    "valid_hostname",
    "valid_task_id",
]

MASTER = "master"
IP_DIR = "ip"
QUEUE_DIR = "queue"
LOCAL_VARS = "local-vars"
CLUSTER_VARS = f"{LOCAL_VARS}/cluster.yml"
ALLOWED_SIGNERS = f"{LOCAL_VARS}/allowed_signers"
# An OpenSSH signature of allowed_signers' exact bytes by a signer the nodes trust.
ALLOWED_SIGNERS_SIG = f"{ALLOWED_SIGNERS}.sig"
NODES_VARS = f"{LOCAL_VARS}/nodes"
HEALTH = f"{LOCAL_VARS}/health.yml"  # what the master last saw of every node
SCHEDULES_DIR = f"{LOCAL_VARS}/schedules"
INVENTORY = "inventory"
HOSTFILE = "hostfile"

_MAC = re.compile(r"[0-9a-f]{12}")
_SCHEDULE = re.compile(r"[a-z0-9][a-z0-9_.-]{0,63}")
_TASK_ID = re.compile(r"[0-9A-Za-z][0-9A-Za-z_.-]{0,95}")
# RFC 1123: labels of letters, digits and inner hyphens, up to 63 characters each.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(_LABEL)
_DOTTED_HOSTNAME = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")


def normalize_mac(text: str) -> str:
    """'B8:27:EB:00:00:01' or 'b827eb000001' -> 'b827eb000001'; ValueError otherwise."""
    mac = text.strip().lower().replace(":", "").replace("-", "")
    if not _MAC.fullmatch(mac):
        raise ValueError(f"'{text}' is not a MAC address; use 12 hex digits, e.g. b827eb000001")
    return mac


def format_mac(mac: str) -> str:
    """'b827eb000001' -> 'b8:27:eb:00:00:01' (how `ip link` shows it)."""
    return ":".join(mac[i:i + 2] for i in range(0, 12, 2))


def valid_hostname(name: str, *, dotted: bool = False) -> bool:
    """A host name: one label (what a node is called), or with `dotted` a domain name
    (what a node may report; it reaches inventories and Ganglia's configs)."""
    return bool((_DOTTED_HOSTNAME if dotted else _HOSTNAME).fullmatch(name))


def valid_task_id(task_id: str) -> bool:
    return bool(_TASK_ID.fullmatch(task_id)) and ".." not in task_id


def ip_path(mac: str) -> str:
    return f"{IP_DIR}/{normalize_mac(mac)}"


def facts_path(mac: str) -> str:
    return f"{NODES_VARS}/{normalize_mac(mac)}.yml"


def registration_sig_path(mac: str) -> str:
    """The node's signature of its registration: its IP and its facts."""
    return f"{NODES_VARS}/{normalize_mac(mac)}.sig"


def queue_dir(mac: str) -> str:
    return f"{QUEUE_DIR}/{normalize_mac(mac)}"


def pending_path(mac: str, task_id: str) -> str:
    if not valid_task_id(task_id):
        raise ValueError(f"'{task_id}' is not a valid task id")
    return f"{queue_dir(mac)}/{task_id}.json"


def outcome_path(mac: str, name: str, status: str) -> str:
    """Where a task's outcome goes: done/ for ran (ok, error, timeout), rejected/ for never
    ran (rejected, revoked)."""
    if not valid_task_id(name):
        raise ValueError(f"'{name}' is not a valid task id")
    folder = "rejected" if status in ("rejected", "revoked") else "done"
    return f"{queue_dir(mac)}/{folder}/{name}.json"


def revoked_path(mac: str, task_id: str) -> str:
    """A signed revocation of the pending task `task_id`: the node never runs it."""
    if not valid_task_id(task_id):
        raise ValueError(f"'{task_id}' is not a valid task id")
    return f"{queue_dir(mac)}/revoked/{task_id}.json"


def schedule_path(name: str) -> str:
    """A signed schedule: what the master enqueues, for whom, and when."""
    if not _SCHEDULE.fullmatch(name) or ".." in name:
        raise ValueError(f"'{name}' is not a schedule name: lower-case letters, digits, '.', "
                         "'_' and '-', up to 64")
    return f"{SCHEDULES_DIR}/{name}.json"


def schedule_run_path(name: str) -> str:
    """When the master last enqueued schedule `name`'s tasks (one ISO 8601 line)."""
    return schedule_path(name).removesuffix(".json") + ".last"


_README = """\
# picluster cluster repository

This repository is the cluster's shared state; every node keeps a clone.
Every file is plain text: read it with `cat`, fix it with an editor, commit, push.

| path | what |
|---|---|
| `master` | MAC of the master node (absent until the first node registers) |
| `ip/<mac>` | IPv4 of each live node, one line; `cat ip/*` lists the cluster |
| `local-vars/cluster.yml` | cluster settings (ssh user, ports, timings) |
| `local-vars/allowed_signers` | OpenSSH keys allowed to sign tasks (`picluster trust`) |
| `local-vars/allowed_signers.sig` | its signature; nodes ignore a change nobody they trust signed |
| `local-vars/nodes/<mac>.yml` | facts each node reports about itself |
| `local-vars/nodes/<mac>.sig` | the node's signature of its IP and facts, with the cluster key |
| `local-vars/health.yml` | when the master last saw each node, by the master's clock |
| `queue/<mac>/<id>.json` | a signed task waiting for that node |
| `queue/<mac>/done/<id>.json` | its outcome; `rejected/` holds tasks that never ran, with why |
| `queue/<mac>/revoked/<id>.json` | a signed revocation: the pending task never runs |
| `local-vars/schedules/<name>.json` | a signed schedule the master enqueues tasks from |
| `inventory`, `hostfile` | Ansible inventory and MPI hostfile, rendered by the master |
"""

_CLUSTER_VARS = """\
# Cluster-wide settings, read by every node.  Edit, commit and push to change them.
name: picluster
# account Ansible and mpirun log in as on every node
ssh_user: root
# Ganglia's ports, when the packages' defaults do not suit:
# ganglia:
#   gmond_port: <port>
#   gmetad_xml_port: <port>
# UDP port of wake-ups: after a push for a node, its writer nudges that node to fetch at
# once rather than at its next poll (0 turns them off; the default is 8650):
# wakeup_port: <port>
"""

_ALLOWED_SIGNERS = """\
# OpenSSH allowed signers (man ssh-keygen, ALLOWED SIGNERS): keys whose signed tasks run.
# Add one with: picluster trust ~/.ssh/id_ed25519.pub --name you
# Nodes accept a change to this file only with allowed_signers.sig beside it, signed by a
# signer they already trust (`picluster trust` writes both).
"""


def seed_files() -> dict[str, str]:
    """The files `init-repo` starts a cluster repository with (no `master` yet)."""
    return {
        "README.md": _README,
        f"{IP_DIR}/.gitkeep": "",
        f"{QUEUE_DIR}/.gitkeep": "",
        f"{NODES_VARS}/.gitkeep": "",
        CLUSTER_VARS: _CLUSTER_VARS,
        ALLOWED_SIGNERS: _ALLOWED_SIGNERS,
    }
