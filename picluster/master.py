"""The master's jobs (DESIGN §5): render the views that follow membership, keep every
node's Ganglia config current, and ping nodes with Ansible, pruning the dead.

The agent runs these on the node that holds `master`, from APScheduler jobs; nothing here
runs git except through `ClusterRepo`, and nothing here is scheduled by itself.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from picluster import ansible, ganglia, layout
from picluster.files import install_file
from picluster.identity import NodeIdentity
from picluster.queue import enqueue, make_task
from picluster.registry import (
    ClusterVars,
    Member,
    Membership,
    read_cluster_vars,
    read_membership,
    unregister_ops,
)
from picluster.render import GangliaConfig, render_views
from picluster.repo import ClusterRepo, GitError, Put, Snapshot
from picluster.settings import Settings

__all__ = ["Master", "PingReport"]

log = logging.getLogger(__name__)


@dataclass
class PingReport:
    """One ping round: who answered, who did not, who was pruned."""

    seconds: float = 0.0
    ok: list[str] = field(default_factory=list)
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
        self._misses: dict[str, int] = {}  # mac -> consecutive failed pings
        # mac -> (digest of the Ganglia config last sent, when): resent only when it is
        # neither applied nor waiting, and not more often than every few polls.
        self._sent: dict[str, tuple[str, float]] = {}
        # The poll and the ping (after a prune) both render; one at a time.
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

    def render(self, snapshot: Snapshot | None = None) -> Membership:
        """Make every view match the registry: install the inventory, hostfile and
        known_hosts, commit the first two, configure Ganglia here and on the workers."""
        with self._rendering:
            return self._render(snapshot or self.repo.snapshot())

    def _render(self, snapshot: Snapshot) -> Membership:
        membership = read_membership(snapshot)
        cluster = read_cluster_vars(snapshot)
        for problem in membership.problems + cluster.problems:
            log.warning("%s", problem)
        if membership.master_member is None:
            return membership  # not (or no longer) a master with a registration
        views = render_views(membership, cluster.ssh_user)
        installed = [name for name, path, text in (
            ("inventory", self.settings.inventory_file, views.inventory),
            ("hostfile", self.settings.hostfile, views.hostfile),
            ("known_hosts", self.settings.cluster_known_hosts, views.known_hosts))
            if install_file(path, text)]
        if installed:
            log.info("rendered %s for %d nodes", ", ".join(installed), len(membership.members))
        config = self.ganglia_config(membership, cluster)
        me = self._node()
        if ganglia.apply(self.settings, config, own_ip=me.ip, hostname=socket.gethostname(),
                         is_master=True):
            log.info("ganglia: gmond listens to %d members; gmetad reads %s:%d",
                     len(config.members), config.master_ip, config.gmond_port)
        self._daemons.ensure(is_master=True)
        # Local views first (mpirun and gmetad use them now), then the repository's copy.
        stale = [Put(path, text) for path, text in views.files().items()
                 if snapshot.read(path) != text]
        if stale:
            # The master's own writes do not commute with anyone's: compare-and-set.
            self.repo.transact(lambda _: stale, f"render {', '.join(p.path for p in stale)} "
                                                f"for {len(membership.members)} nodes")
        self._configure_workers(snapshot, membership, config)
        return membership

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
            if digest == want and (self._pending(snapshot, member.mac)
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

    @staticmethod
    def _pending(snapshot: Snapshot, mac: str) -> bool:
        """A task is still waiting in the node's queue (not yet consumed)."""
        return any(name.endswith(".json")
                   for name in snapshot.listdir(layout.queue_dir(mac), files=True))

    # -- ping and prune ------------------------------------------------------------------

    def ping(self) -> PingReport:
        """Ping every worker with Ansible; prune those that missed `prune_after` in a row.

        A worker whose ssh port does not even accept a connection misses its ping at once,
        and is pruned (when due) before Ansible pings the others: the views drop a dead
        node a whole Ansible run sooner."""
        started = time.monotonic()
        snapshot = self.repo.snapshot()
        membership = read_membership(snapshot)
        cluster = read_cluster_vars(snapshot)
        report = PingReport()
        workers = {m.ip: m for m in membership.workers if m.facts.get("host_key")}
        for member in membership.workers:
            if member.ip not in workers:
                log.warning("node %s reported no ssh host key; it cannot be pinged safely",
                            member.mac)
        # Forget counts of nodes that left (pruned, or removed by hand).
        self._misses = {mac: n for mac, n in self._misses.items()
                        if any(m.mac == mac for m in workers.values())}
        answering = ansible.answering(workers, self.settings.ping_timeout)
        self._judge(report, {ip: ansible.HostResult(
            ip, "unreachable", f"ssh port 22 did not answer within "
                               f"{self.settings.ping_timeout:g} s")
            for ip in workers if ip not in answering}, workers)
        if answering:
            run = ansible.ping(self.settings, {ip: {"mac": workers[ip].mac} for ip in answering},
                               cluster.ssh_user, self.settings.cluster_known_hosts)
            self._judge(report, {ip: run.hosts.get(ip) or ansible.HostResult(
                ip, "unreachable", "no answer from ansible") for ip in answering}, workers)
        report.seconds = time.monotonic() - started
        return report

    def _judge(self, report: PingReport, results: dict[str, ansible.HostResult],
               workers: dict[str, Member]) -> None:
        """Count each result; prune the nodes that are due, then re-render once."""
        pruned = []
        for ip, result in results.items():
            member = workers[ip]
            if result.status == "ok":
                report.ok.append(ip)
                if self._misses.pop(member.mac, 0):
                    log.info("node %s (%s) answers again", member.mac, ip)
                continue
            why = result.message or result.status
            report.failed[ip] = why
            misses = self._misses[member.mac] = self._misses.get(member.mac, 0) + 1
            log.warning("node %s (%s) missed ping %d of %d: %s", member.mac, ip, misses,
                        self.settings.prune_after, why.splitlines()[-1])
            if misses >= self.settings.prune_after and self._prune(member.mac, ip, misses, why):
                pruned.append(member.mac)
        if pruned:
            report.pruned += pruned
            self.render(self.repo.sync())

    def _prune(self, mac: str, ip: str, misses: int, why: str) -> bool:
        last = why.strip().splitlines()[-1] if why.strip() else "unreachable"
        try:
            result = self.repo.transact(
                lambda _: unregister_ops(mac, ip),
                f"prune {mac} ({ip}): missed {misses} pings in a row (last: {last[:120]})")
        except GitError as error:
            log.warning("could not prune %s yet: %s", mac, error)
            return False
        self._misses.pop(mac, None)
        self._sent.pop(mac, None)
        if result.commit:
            log.warning("pruned %s (%s) after %d missed pings", mac, ip, misses)
        return bool(result.commit)
