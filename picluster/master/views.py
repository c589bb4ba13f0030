"""Views of the registry, rendered deterministically: the same membership always gives the
same bytes, so a view is rewritten (and its users restarted) only when it changes.

`Views` holds what the master renders for the cluster (Ansible inventory, OpenMPI hostfile,
known_hosts).  `picluster.files.install_file` puts them in place atomically.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from picluster import layout
from picluster.registry import Member, Membership

__all__ = ["Views", "render_views"]

_HEADER = "# Rendered by picluster from ip/, master and local-vars/; rewritten on every change.\n"


def _by_ip(members: Sequence[Member]) -> list[Member]:
    return sorted(members, key=lambda m: ipaddress.IPv4Address(m.ip))


@dataclass(frozen=True)
class Views:
    inventory: str
    hostfile: str
    known_hosts: str

    def files(self) -> dict[str, str]:
        """Repository path -> content, for the views committed to the repository."""
        return {layout.INVENTORY: self.inventory, layout.HOSTFILE: self.hostfile}


def render_views(membership: Membership, ssh_user: str) -> Views:
    """The inventory (groups [master] and [nodes], as in the seed), the MPI hostfile
    (master first, `<ip> slots=<cores>`) and the host keys nodes registered."""
    master = membership.master_member
    workers = _by_ip(membership.workers)

    def host(member: Member) -> str:
        return f"{member.ip} mac={member.mac} hostname={member.hostname}\n"

    inventory = _HEADER + "[master]\n" + (host(master) if master else "") + "\n[nodes]\n"
    inventory += "".join(host(m) for m in workers)
    inventory += (f"\n[all:vars]\nansible_user={ssh_user}\n"
                  "ansible_python_interpreter=/usr/bin/python3\n")
    ordered = ([master] if master else []) + workers
    hostfile = _HEADER + "".join(f"{m.ip} slots={m.cores}\n" for m in ordered)
    known_hosts = "".join(f"{m.ip} {m.host_key}\n" for m in ordered if m.host_key)
    return Views(inventory, hostfile, known_hosts)
