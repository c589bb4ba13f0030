"""The views that follow membership: the Ansible inventory, the OpenMPI hostfile and
known_hosts, rendered deterministically (the same membership always gives the same bytes,
so a view is rewritten, and its users restarted, only when it changes).

`Views` keeps them, and this node's Ganglia config, current on the master: installed here
first, then the inventory and hostfile committed for everyone.  (Workers get theirs, and
the cluster files, through the `converge` job.)
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

from picluster import ganglia, layout
from picluster.files import install_file
from picluster.gitstore import ClusterRepo, Put, Snapshot
from picluster.identity import NodeIdentity
from picluster.master.members import Members
from picluster.master.state import MasterState
from picluster.registry import Member, Membership, read_cluster_vars
from picluster.settings import Settings

__all__ = ["RenderedViews", "Views", "render_views"]

log = logging.getLogger(__name__)

_HEADER = "# Rendered by picluster from ip/, master and local-vars/; rewritten on every change.\n"


def _by_ip(members: Sequence[Member]) -> list[Member]:
    return sorted(members, key=lambda m: ipaddress.IPv4Address(m.ip))


@dataclass(frozen=True)
class RenderedViews:
    inventory: str
    hostfile: str
    known_hosts: str

    def files(self) -> dict[str, str]:
        """Repository path -> content, for the views committed to the repository."""
        return {layout.INVENTORY: self.inventory, layout.HOSTFILE: self.hostfile}


def render_views(membership: Membership, ssh_user: str) -> RenderedViews:
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
    return RenderedViews(inventory, hostfile, known_hosts)


class _Installed(NamedTuple):
    snapshot: Snapshot
    membership: Membership
    views: RenderedViews


class Views:
    """The master's views and its own Ganglia config, following the verified registry as
    last synced, less the nodes being pruned."""

    def __init__(self, settings: Settings, repo: ClusterRepo,
                 node: Callable[[], NodeIdentity], daemons: ganglia.Daemons,
                 state: MasterState, members: Members) -> None:
        self._settings = settings
        self._repo = repo
        self._node = node
        self._daemons = daemons
        self._state = state
        self._members = members
        # One install at a time, each from the newest state, read under the lock: a slow
        # render from an older state can never install its views after a newer one.
        self._installing = threading.Lock()

    def render(self) -> None:
        """Install the views and Ganglia config here, then commit the inventory and
        hostfile."""
        installed = self._install()
        if installed is None:
            return
        snapshot, membership, views = installed
        if any(snapshot.read(path) != text for path, text in views.files().items()):
            # Compare-and-set, rendered again from the tip it lands on: a render that
            # lost the race never commits views older than the winner's.
            self._repo.transact(self._committed_views,
                                f"render inventory and hostfile for {len(membership.members)} "
                                "nodes")

    @contextmanager
    def without(self, macs: set[str]) -> Iterator[None]:
        """Drop `macs` from the views here at once, before their prune reaches git; every
        render leaves them out until the block ends (from then on the repository says who
        is in: a pruned node may register again)."""
        with self._state.leaving(macs):
            try:
                self._install()
            except Exception:
                log.exception("could not drop %s from the local views; pruning anyway",
                              ", ".join(sorted(macs)))
            yield

    def _install(self) -> _Installed | None:
        """Install the views and this node's Ganglia config for the newest synced state;
        None when this node is not (or no longer) a master with a registration."""
        with self._installing:
            snapshot = self._repo.snapshot()
            membership = self._state.present(self._members.read(snapshot))
            cluster = read_cluster_vars(snapshot)
            for problem in (*membership.problems, *cluster.problems,
                            *ganglia.config_problems(cluster)):
                log.warning("%s", problem)
            if membership.master_member is None or membership.master != self._node().mac:
                return None
            views = render_views(membership, cluster.ssh_user)
            config = ganglia.cluster_config(self._settings, membership, cluster)
            installed = [name for name, path, text in (
                ("inventory", self._settings.inventory_file, views.inventory),
                ("hostfile", self._settings.hostfile, views.hostfile),
                ("known_hosts", self._settings.cluster_known_hosts, views.known_hosts))
                if install_file(path, text)]
            if installed:
                log.info("rendered %s for %d nodes", ", ".join(installed),
                         len(membership.members))
            me = self._node()
            if ganglia.apply(self._settings, config, own_ip=me.ip,
                             hostname=socket.gethostname(), is_master=True):
                log.info("ganglia: gmond listens to %d members; gmetad reads %s:%d",
                         len(config.members), config.master_ip, config.gmond_port)
            self._daemons.ensure(is_master=True, own_ip=me.ip)
            self._state.saw(membership, cluster)
        return _Installed(snapshot, membership, views)

    def _committed_views(self, tip: Snapshot) -> list[Put]:
        # transact() leaves out what is unchanged: no commit when the tip has these views.
        views = render_views(self._state.present(self._members.read(tip)),
                             read_cluster_vars(tip).ssh_user)
        return [Put(path, text) for path, text in views.files().items()]
