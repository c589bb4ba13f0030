"""Taking `master` over when it stopped answering (picluster.succession): the `beat` job
every node runs, and the `watch` job every node but the master runs.

The watch judges the master by its beacon, on this node's own clock, once every
`ping_interval`, as the master judges workers: after `prune_after` checks missed in a
row, the first live node in the order of succession replaces `master`, compare-and-set
against the value it saw, and prunes the dead it judged with it.  The beat moves this
node's beacon at least twice per check, so one slow beat is never a missed check.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from picluster.gitstore import ClusterRepo, GitError
from picluster.identity import NodeIdentity
from picluster.master.members import Members
from picluster.settings import Settings
from picluster.succession import Beacon, Watch, decide, read_beacons, takeover_change

__all__ = ["Succession"]

log = logging.getLogger(__name__)


class Succession:
    """This node's beacon, and its watch on the master.  Each job runs in one thread at a
    time (the agent's scheduler), so neither is locked."""

    def __init__(self, settings: Settings, repo: ClusterRepo,
                 node: Callable[[], NodeIdentity], members: Members, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._settings = settings
        self._repo = repo
        self._node = node
        self._members = members
        self._beacon = Beacon(repo)
        self._watch = Watch(settings.ping_interval, clock)
        self._master: str | None = None  # whom the watch counts for
        self._quiet = {"beat": False, "watch": False}  # said that git does not answer

    @property
    def beat_interval(self) -> float:
        """Twice per check at least, and no slower than the poll."""
        return min(self._settings.poll_interval, self._settings.ping_interval / 2)

    def beat(self) -> None:
        """Move this node's beacon."""
        try:
            self._beacon.beat(self._node().mac)
        except GitError as error:
            self._say("beat", error)
        else:
            self._say("beat", None)

    def watch(self) -> bool:
        """One check of the master (and of the nodes before this one in the order of
        succession); True when this node just took `master` over."""
        try:
            beacons = read_beacons(self._repo)
        except GitError as error:
            self._say("watch", error)  # no check: nobody missed one
            return False
        self._say("watch", None)
        membership = self._members.read(self._repo.snapshot())
        if membership.master != self._master:
            self._watch.forget()  # a new master: it starts from no miss
            self._master = membership.master
        if membership.master is None:
            return False
        before = self._watch.missed(membership.master)
        self._watch.observe(beacons, {membership.master, *(m.mac for m in membership.members)})
        missed = self._watch.missed(membership.master)
        if missed > before:
            log.warning("the master %s missed check %d of %d", membership.master, missed,
                        self._settings.prune_after)
        elif before and not missed:
            log.info("the master %s answers again", membership.master)
        me = self._node().mac
        takeover = decide(membership, me, self._watch, self._settings.prune_after)
        if takeover is None:
            return False
        try:
            result = self._repo.transact(
                takeover_change(takeover, me),
                f"takeover: {me} replaces master {takeover.master}, which missed {missed} "
                "checks" + (f"; prune {', '.join(sorted(takeover.dead))}" if takeover.dead
                            else ""))
        except GitError as error:
            log.warning("could not take master over from %s yet: %s", takeover.master, error)
            return False
        self._watch.forget()
        if result.commit is None:
            log.info("master %s was replaced by another node first", takeover.master)
            return False
        log.warning("took master over from %s after %d missed checks; pruned %s", takeover.master,
                    missed, ", ".join(sorted(takeover.dead)) or "nobody")
        return True

    def _say(self, job: str, error: GitError | None) -> None:
        """Log a failure once per streak, and its end."""
        if error is not None and not self._quiet[job]:
            log.warning("%s: git does not answer (%s)%s", job, error,
                        "; no check counts until it does" if job == "watch" else "")
        elif error is None and self._quiet[job]:
            log.info("%s: git answers again", job)
        self._quiet[job] = error is not None
