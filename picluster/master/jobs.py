"""The master's jobs (DESIGN §5): render the views that follow membership, keep every
node's Ganglia config current, and ping nodes (a knock on their ssh port, and Ansible's
ping module), pruning the dead.

The agent runs these on the node that holds `master`, from APScheduler jobs; nothing here
runs git except through `ClusterRepo`, and nothing here is scheduled by itself.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from picluster import ansible, ganglia
from picluster.files import install_file
from picluster.ganglia import GangliaConfig
from picluster.gitstore import ClusterRepo, GitError, Put, Snapshot
from picluster.identity import NodeIdentity, is_local
from picluster.master.views import render_views
from picluster.queue import enqueue, make_task, pending_tasks
from picluster.registry import (
    ClusterVars,
    Member,
    Membership,
    read_cluster_vars,
    read_membership,
    unregister_ops,
)
from picluster.settings import Settings

__all__ = ["Master", "PingReport"]

log = logging.getLogger(__name__)


@dataclass
class PingReport:
    """One ping round: who did not answer, who was pruned."""

    failed: dict[str, str] = field(default_factory=dict)  # ip -> why
    pruned: list[str] = field(default_factory=list)  # macs


class Master:
    """The master's state between jobs: failed-ping counts and the configs it sent."""

    def __init__(self, settings: Settings, repo: ClusterRepo, node: Callable[[], NodeIdentity],
                 daemons: ganglia.Daemons) -> None:
        self.settings = settings
        self.repo = repo
        self._node = node
        self._daemons = daemons
        # ("reach" or "ping", mac) -> consecutive failed pings of that kind
        self._misses: dict[tuple[str, str], int] = {}
        self._answering: set[str] | None = None  # IPs that answered the last port knock
        self._seen: tuple[Membership, ClusterVars] | None = None  # as the last render saw
        self._leaving: set[str] = set()  # MACs being pruned: gone from the views already
        self._said_offline = False
        self._counting = threading.Lock()
        # mac -> (digest of the Ganglia config last sent, when): resent only when it is
        # neither applied nor waiting, and not more often than every few polls.
        self._sent: dict[str, tuple[str, float]] = {}
        self._configuring = threading.Lock()  # guards _sent
        # Renders (the poll's, a prune's) install this node's files one at a time.
        self._rendering = threading.Lock()

    # -- views and configs that follow membership --------------------------------------

    def ganglia_config(self, membership: Membership, cluster: ClusterVars) -> GangliaConfig:
        master = membership.master_member
        assert master is not None
        # Unicast gmond needs metadata resent; a heartbeat as often as nodes are pinged
        # (within reason) lets a restarted master gmond know every host again quickly.
        beat = int(min(20, max(2, self.settings.ping_interval)))
        dmax = int(max(60, self.settings.ping_interval * self.settings.prune_after * 4))
        return GangliaConfig(cluster.name, master.ip, cluster.gmond_port,
                             cluster.gmetad_xml_port, beat, dmax,
                             tuple(m.ip for m in membership.workers))

    def render(self, *, local: bool = False) -> Membership:
        """Make every view match the registry as last synced, less the nodes being pruned:
        install the inventory, hostfile and known_hosts and configure Ganglia here; then
        (unless `local`) commit the inventory and hostfile and configure Ganglia on the
        workers."""
        # One render at a time, each from the newest state, read under the lock: a slow
        # render from an older state can never install its views after a newer one.
        with self._rendering:
            snapshot = self.repo.snapshot()
            membership = self._membership(snapshot)
            cluster = read_cluster_vars(snapshot)
            for problem in membership.problems + cluster.problems:
                log.warning("%s", problem)
            if membership.master_member is None:
                return membership  # not (or no longer) a master with a registration
            views = render_views(membership, cluster.ssh_user)
            config = self.ganglia_config(membership, cluster)
            installed = [name for name, path, text in (
                ("inventory", self.settings.inventory_file, views.inventory),
                ("hostfile", self.settings.hostfile, views.hostfile),
                ("known_hosts", self.settings.cluster_known_hosts, views.known_hosts))
                if install_file(path, text)]
            if installed:
                log.info("rendered %s for %d nodes", ", ".join(installed),
                         len(membership.members))
            me = self._node()
            if ganglia.apply(self.settings, config, own_ip=me.ip,
                             hostname=socket.gethostname(), is_master=True):
                log.info("ganglia: gmond listens to %d members; gmetad reads %s:%d",
                         len(config.members), config.master_ip, config.gmond_port)
            self._daemons.ensure(is_master=True, own_ip=me.ip)
            self._seen = (membership, cluster)
        if local:
            return membership
        if any(snapshot.read(path) != text for path, text in views.files().items()):
            # Compare-and-set, rendered again from the tip it lands on: a render that
            # lost the race never commits views older than the winner's.
            self.repo.transact(self._committed_views,
                               f"render inventory and hostfile for {len(membership.members)} "
                               "nodes")
        with self._configuring:
            self._configure_workers(snapshot, membership, config)
        return membership

    def _membership(self, snapshot: Snapshot) -> Membership:
        """The registry in `snapshot`, less the nodes being pruned."""
        with self._counting:
            leaving = set(self._leaving)
        membership = read_membership(snapshot)
        return replace(membership, members=tuple(
            m for m in membership.members if m.mac not in leaving))

    def _committed_views(self, tip: Snapshot) -> list[Put]:
        # transact() leaves out what is unchanged: no commit when the tip has these views.
        views = render_views(self._membership(tip), read_cluster_vars(tip).ssh_user)
        return [Put(path, text) for path, text in views.files().items()]

    def _configure_workers(self, snapshot: Snapshot, membership: Membership,
                           config: GangliaConfig) -> None:
        """Send a `ganglia` task to each worker whose reported config is not the one its
        gmond should run, unless one is already on its way."""
        wanted = config.for_worker()
        want = ganglia.digest(wanted)
        key = self.settings.signing_key or self.settings.ssh_key
        tasks = []
        for member in membership.workers:
            if member.facts.get("ganglia") == want:
                self._sent.pop(member.mac, None)
                continue
            digest, when = self._sent.get(member.mac, ("", 0.0))
            if digest == want and (pending_tasks(snapshot, member.mac)
                                   or time.monotonic() - when < 10 * self.settings.poll_interval):
                continue
            tasks.append(make_task(member.mac, "ganglia", dict(vars(wanted)), self._signer))
            self._sent[member.mac] = (want, time.monotonic())
        if not tasks:
            return
        if key is None:
            log.warning("cannot configure Ganglia on %d nodes: no signing_key or ssh_key to "
                        "sign tasks with", len(tasks))
            return
        enqueue(self.repo, tasks, key)
        log.info("sent the ganglia config to %s", ", ".join(t.node for t in tasks))

    @property
    def _signer(self) -> str:
        # Without a signing key of its own the master signs with the cluster key, trusted
        # as "cluster" (picluster trust cluster_key.pub --name cluster).
        return self.settings.signer if self.settings.signing_key else "cluster"

    # -- ping and prune ------------------------------------------------------------------

    def _workers(self) -> tuple[dict[str, Member], ClusterVars]:
        """The workers that can be pinged (they reported a host key), by IP, as the last
        render saw them: a ping never waits for a git transaction in progress."""
        if self._seen is None:
            snapshot = self.repo.snapshot()
            self._seen = (read_membership(snapshot), read_cluster_vars(snapshot))
        membership, cluster = self._seen
        workers = {m.ip: m for m in membership.workers if m.host_key}
        for member in membership.workers:
            if member.ip not in workers:
                log.warning("node %s reported no ssh host key; it cannot be pinged safely",
                            member.mac)
        with self._counting:
            # Forget the counts of nodes that left (pruned, or removed by hand).
            macs = {m.mac for m in workers.values()}
            self._misses = {key: n for key, n in self._misses.items() if key[1] in macs}
        return workers, cluster

    def _offline(self) -> bool:
        """This node's IP is not its own (pinned in a test, a typo): it pings nobody,
        since its packets would leave through whatever route this host has."""
        ip = self._node().ip
        offline = not is_local(ip)
        if offline and not self._said_offline:
            log.warning("%s is not an address of this host: not pinging anyone", ip)
        self._said_offline = offline
        return offline

    def reach(self) -> PingReport:
        """Knock on every worker's ssh port; a worker that does not answer within
        `ping_timeout` misses this ping.  Dead nodes are found here, on the ping schedule,
        however long Ansible takes with the live ones."""
        if self._offline():
            return PingReport()
        workers, _ = self._workers()
        self._answering = ansible.answering(workers, self.settings.ping_timeout)
        report = PingReport()
        self._judge("reach", report, {ip: ansible.HostResult(
            ip, "ok" if ip in self._answering else "unreachable",
            "" if ip in self._answering else
            f"ssh port 22 did not answer within {self.settings.ping_timeout:g} s")
            for ip in workers}, workers)
        return report

    def ping(self) -> PingReport:
        """`ansible -m ping` every worker that answers on its ssh port: it proves ssh (with
        the host key it registered) and Python work, not only that the port is open."""
        if self._offline():
            return PingReport()
        workers, cluster = self._workers()
        targets = {ip: m for ip, m in workers.items()
                   if self._answering is None or ip in self._answering}
        report = PingReport()
        if targets:
            run = ansible.ping(self.settings, {ip: {"mac": m.mac} for ip, m in targets.items()},
                               cluster.ssh_user, self.settings.cluster_known_hosts)
            self._judge("ping", report, {ip: run.hosts.get(ip) or ansible.HostResult(
                ip, "unreachable", "no answer from ansible") for ip in targets}, workers)
        return report

    def _judge(self, kind: str, report: PingReport, results: dict[str, ansible.HostResult],
               workers: dict[str, Member]) -> None:
        """Count each result; prune the nodes that are due, then re-render once.  The port
        knock and the Ansible ping count apart: a node that answers one but keeps failing
        the other is still pruned."""
        due: list[tuple[Member, int, str]] = []
        for ip, result in results.items():
            member = workers[ip]
            key = (kind, member.mac)
            with self._counting:
                if result.status == "ok":
                    if self._misses.pop(key, 0):
                        log.info("node %s (%s) answers again", member.mac, ip)
                    continue
                misses = self._misses[key] = self._misses.get(key, 0) + 1
            why = result.message or result.status
            report.failed[ip] = why
            last = why.strip().splitlines()[-1] if why.strip() else "unreachable"
            log.warning("node %s (%s) missed ping %d of %d: %s", member.mac, ip, misses,
                        self.settings.prune_after, last)
            if misses >= self.settings.prune_after:
                due.append((member, misses, last))
        if not due:
            return
        # The views drop the nodes at once, before their prune reaches git.
        macs = {member.mac for member, _, _ in due}
        with self._counting:
            self._leaving |= macs
        try:
            try:
                self.render(local=True)
            except Exception:
                log.exception("could not drop %s from the local views; pruning anyway",
                              ", ".join(sorted(macs)))
            report.pruned += [member.mac for member, misses, last in due
                              if self._prune(member.mac, member.ip, misses, last)]
        finally:
            # From here the repository says who is in (a pruned node may register again).
            with self._counting:
                self._leaving -= macs
        self.render()

    def _prune(self, mac: str, ip: str, misses: int, last: str) -> bool:
        """Remove the node from ip/ (`last`: the last line of why it missed its ping)."""
        try:
            result = self.repo.transact(
                lambda _: unregister_ops(mac, ip),
                f"prune {mac} ({ip}): missed {misses} pings in a row (last: {last[:120]})")
        except GitError as error:
            log.warning("could not prune %s yet: %s", mac, error)
            return False
        with self._counting:
            self._misses = {key: n for key, n in self._misses.items() if key[1] != mac}
        with self._configuring:
            self._sent.pop(mac, None)
        if result.commit:
            log.warning("pruned %s (%s) after %d missed pings", mac, ip, misses)
        return bool(result.commit)
