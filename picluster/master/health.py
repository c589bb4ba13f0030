"""The master's health checks: a knock on every worker's ssh port and the ping (ssh
and Python, what Ansible's ping proves), each on the ping schedule, counting misses
apart; a node that misses `prune_after` in a row is pruned from the registry, and from
every view at once."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from picluster import ansible
from picluster.gitstore import ClusterRepo, GitError
from picluster.identity import NodeIdentity, is_local
from picluster.master.members import Members
from picluster.master.state import MasterState
from picluster.master.views import Views
from picluster.registry import ClusterVars, Member, read_cluster_vars, unregister_ops
from picluster.settings import Settings

__all__ = ["Health", "PingReport"]

log = logging.getLogger(__name__)


@dataclass
class PingReport:
    """One ping round: who did not answer, who did, who was pruned."""

    failed: dict[str, str] = field(default_factory=dict)  # ip -> why
    answered: list[str] = field(default_factory=list)  # ips
    pruned: list[str] = field(default_factory=list)  # macs


class Health:
    """The `reach` and `ping` jobs."""

    def __init__(self, settings: Settings, repo: ClusterRepo,
                 node: Callable[[], NodeIdentity], state: MasterState, views: Views,
                 members: Members) -> None:
        self._settings = settings
        self._repo = repo
        self._node = node
        self._state = state
        self._views = views
        self._members = members

    def reach(self) -> PingReport:
        """Knock on every worker's ssh port; a worker that does not answer within
        `ping_timeout` misses this ping.  Dead nodes are found here, on the ping schedule,
        however long Ansible takes with the live ones."""
        if self._offline():
            return PingReport()
        workers, _ = self._workers()
        timeout = self._settings.ping_timeout
        answering = ansible.answering(workers, timeout)
        self._state.knocked(answering)
        report = PingReport()
        self._judge("reach", report, {ip: ansible.HostResult(
            ip, "ok" if ip in answering else "unreachable",
            "" if ip in answering else f"ssh port 22 did not answer within {timeout:g} s")
            for ip in workers}, workers)
        return report

    def ping(self) -> PingReport:
        """Ping every worker that answers on its ssh port: it proves ssh (with the host key
        it registered) and Python work, not only that the port is open."""
        if self._offline():
            return PingReport()
        workers, cluster = self._workers()
        answering = self._state.answering()
        targets = {ip: m for ip, m in workers.items() if answering is None or ip in answering}
        report = PingReport()
        if targets:
            run = ansible.ping(self._settings, {ip: {"mac": m.mac} for ip, m in targets.items()},
                               cluster.ssh_user, self._settings.cluster_known_hosts)
            self._judge("ping", report, {ip: run.hosts.get(ip) or ansible.HostResult(
                ip, "unreachable", "no answer from the ping") for ip in targets}, workers)
        return report

    def _workers(self) -> tuple[dict[str, Member], ClusterVars]:
        """The workers that can be pinged (they reported a host key), by IP, as the last
        render saw them: a ping never waits for a git transaction in progress."""
        seen = self._state.seen()
        if seen is None:
            snapshot = self._repo.snapshot()
            seen = (self._members.read(snapshot), read_cluster_vars(snapshot))
            self._state.saw(*seen)
        membership, cluster = seen
        workers = {m.ip: m for m in membership.workers if m.host_key}
        for member in membership.workers:
            if member.ip not in workers:
                log.warning("node %s reported no ssh host key; it cannot be pinged safely",
                            member.mac)
        self._state.keep_counts({m.mac for m in workers.values()})
        return workers, cluster

    def _offline(self) -> bool:
        """This node's IP is not its own (pinned in a test, a typo): it pings nobody,
        since its packets would leave through whatever route this host has."""
        ip = self._node().ip
        offline = not is_local(ip)
        if self._state.say_offline(offline):
            log.warning("%s is not an address of this host: not pinging anyone", ip)
        return offline

    def _judge(self, kind: str, report: PingReport, results: dict[str, ansible.HostResult],
               workers: dict[str, Member]) -> None:
        """Count each result; prune the nodes that are due, then render once.  The port
        knock and the ping count apart: a node that answers one but keeps failing
        the other is still pruned."""
        due: list[tuple[Member, int, str]] = []
        for ip, result in results.items():
            member = workers[ip]
            if result.status == "ok":
                report.answered.append(ip)
                if self._state.answered(kind, member.mac):
                    log.info("node %s (%s) answers again", member.mac, ip)
                continue
            misses = self._state.missed(kind, member.mac)
            why = result.message or result.status
            report.failed[ip] = why
            last = why.strip().splitlines()[-1] if why.strip() else "unreachable"
            log.warning("node %s (%s) missed ping %d of %d: %s", member.mac, ip, misses,
                        self._settings.prune_after, last)
            if misses >= self._settings.prune_after:
                due.append((member, misses, last))
        if not due:
            return
        # The views drop the nodes at once, before their prune reaches git.
        with self._views.without({member.mac for member, _, _ in due}):
            report.pruned += [member.mac for member, misses, last in due
                              if self._prune(member, misses, last)]
        self._views.render()

    def _prune(self, member: Member, misses: int, last: str) -> bool:
        """Remove the node from ip/ (`last`: the last line of why it missed its ping)."""
        mac, ip = member.mac, member.ip
        try:
            result = self._repo.transact(
                lambda _: unregister_ops(mac, ip),
                f"prune {mac} ({ip}): missed {misses} pings in a row (last: {last[:120]})")
        except GitError as error:
            log.warning("could not prune %s yet: %s", mac, error)
            return False
        self._state.pruned(mac)
        if result.commit:
            log.warning("pruned %s (%s) after %d missed pings", mac, ip, misses)
        return bool(result.commit)
