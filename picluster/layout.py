"""The cluster repository's layout (docs/design.md): every path in it, and what may go there.

Names that come from outside (a MAC, a task id) are validated here before they become a
path, so nothing built from them can leave its directory.
"""

from __future__ import annotations

import re

__all__ = [
    "ALLOWED_SIGNERS",
    "CLUSTER_VARS",
    "HOSTFILE",
    "INVENTORY",
    "IP_DIR",
    "MASTER",
    "QUEUE_DIR",
    "facts_path",
    "format_mac",
    "ip_path",
    "normalize_mac",
    "outcome_path",
    "pending_path",
    "queue_dir",
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
NODES_VARS = f"{LOCAL_VARS}/nodes"
INVENTORY = "inventory"
HOSTFILE = "hostfile"

_MAC = re.compile(r"[0-9a-f]{12}")
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


def queue_dir(mac: str) -> str:
    return f"{QUEUE_DIR}/{normalize_mac(mac)}"


def pending_path(mac: str, task_id: str) -> str:
    if not valid_task_id(task_id):
        raise ValueError(f"'{task_id}' is not a valid task id")
    return f"{queue_dir(mac)}/{task_id}.json"


def outcome_path(mac: str, name: str, status: str) -> str:
    """Where a task's outcome goes: done/ for ran (ok or error), rejected/ for never ran."""
    if not valid_task_id(name):
        raise ValueError(f"'{name}' is not a valid task id")
    folder = "rejected" if status == "rejected" else "done"
    return f"{queue_dir(mac)}/{folder}/{name}.json"


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
| `local-vars/nodes/<mac>.yml` | facts each node reports about itself |
| `queue/<mac>/<id>.json` | a signed task waiting for that node |
| `queue/<mac>/done/<id>.json` | its outcome; `rejected/` holds tasks that never ran, with why |
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
