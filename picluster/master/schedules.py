"""The schedules' jobs: while this node holds `master`, one APScheduler job per signed
schedule (`picluster.schedules`: a cron or interval trigger) enqueues its tasks, signed
with the master's key as its Ganglia configs are.

Each run commits its tasks and the schedule's ``.last`` time together, so a master that
starts (a new one, or this one after a restart) runs a schedule at once only if a run
came due while none was up, and that once however many were missed; otherwise at its
next time.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from picluster import layout
from picluster.broadcast import missing_task, select
from picluster.gitstore import ClusterRepo, GitError, Put, Snapshot
from picluster.master.members import Members
from picluster.queue import enqueue, make_task
from picluster.schedules import Schedule, last_run, next_run, read_schedules, trigger
from picluster.settings import Settings
from picluster.signing import AllowedSigners, SignatureError
from picluster.tasks import TaskError, now_iso

if TYPE_CHECKING:
    from apscheduler.schedulers.base import BaseScheduler

__all__ = ["Schedules"]

log = logging.getLogger(__name__)

_PREFIX = "schedule:"  # the ids of the jobs this module owns


class Schedules:
    """Keeps one job per verified schedule in `scheduler` while master, none otherwise."""

    def __init__(self, settings: Settings, repo: ClusterRepo, scheduler: BaseScheduler,
                 signers: Callable[[Snapshot], AllowedSigners],
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self._settings = settings
        self._repo = repo
        self._scheduler = scheduler
        self._signers = signers
        self._clock = clock
        self._members = Members(settings)
        self._jobs: dict[str, str] = {}  # schedule name -> the signature its job runs
        self._said: set[str] = set()

    def sync(self, is_master: bool) -> None:
        """Make the jobs match the schedules of the last synced snapshot (none unless
        `is_master`): a new or changed schedule gets a job, a removed one loses it."""
        wanted: dict[str, Schedule] = {}
        snapshot = self._repo.snapshot()
        if is_master:
            found, problems = read_schedules(snapshot, self._signers(snapshot))
            self._say(problems)
            wanted = {schedule.name: schedule for schedule in found}
        for name, signature in list(self._jobs.items()):
            if name not in wanted or wanted[name].signature != signature:
                self._scheduler.remove_job(_PREFIX + name)
                del self._jobs[name]
                log.info("schedule %s: %s", name, "changed" if name in wanted else "stopped")
        for name, schedule in wanted.items():
            if name in self._jobs:
                continue
            first = next_run(schedule, last_run(snapshot, name), self._clock())
            self._scheduler.add_job(
                self.run, trigger(schedule.cron, schedule.every), args=(schedule,),
                id=_PREFIX + name, next_run_time=first, max_instances=1, coalesce=True,
                misfire_grace_time=None, replace_existing=True)
            self._jobs[name] = schedule.signature
            log.info("schedule %s: %s %s, first run at %s", name, schedule.task,
                     schedule.describe(), first.isoformat(timespec="seconds"))

    def run(self, schedule: Schedule) -> None:
        """Enqueue `schedule`'s tasks for its nodes as they are now, with its run time."""
        ran = Put(layout.schedule_run_path(schedule.name), now_iso() + "\n")
        try:
            snapshot = self._repo.sync()
            if not self._current(snapshot, schedule):
                log.info("schedule %s changed or was removed: not run", schedule.name)
                return  # the next sync gives it the job it needs
            membership = self._members.read(snapshot)
            macs = select(membership, schedule.targets)
        except GitError as error:
            log.warning("schedule %s cannot run now: %s", schedule.name, error)
            return
        except ValueError as error:  # nobody to run it: the run is over all the same
            log.warning("schedule %s: %s", schedule.name, error)
            macs = []
        # A node that does not report the task is left out, and said so once.
        self._say(missing_task(membership, macs, schedule.task))
        macs = [mac for mac in macs if not missing_task(membership, [mac], schedule.task)]
        # Signed as the master signs Ganglia's configs: its signing_key, else the cluster key.
        key = self._settings.signing_key or self._settings.ssh_key
        signer = self._settings.signer if self._settings.signing_key else "cluster"
        if key is None:
            self._say(["schedules cannot run: no signing_key or ssh_key to sign tasks with"])
            return
        try:
            if not macs:
                self._repo.transact([ran], f"schedule {schedule.name}: no node to run on")
                return
            tasks = enqueue(self._repo, [make_task(mac, schedule.task, dict(schedule.args),
                                                   signer) for mac in macs], key, also=[ran])
        except (GitError, SignatureError) as error:
            log.warning("schedule %s did not run: %s", schedule.name, error)
            return
        log.info("schedule %s: enqueued %s for %d nodes", schedule.name, schedule.task,
                 len(tasks))

    @staticmethod
    def _current(snapshot: Snapshot, schedule: Schedule) -> bool:
        """Whether `snapshot` still holds `schedule` as it was signed."""
        try:
            found = Schedule.from_json(snapshot.read(schedule.path()) or "", schedule.path())
        except TaskError:
            return False
        return found.signature == schedule.signature

    def _say(self, lines: list[str]) -> None:
        for line in lines:
            if line not in self._said:
                self._said.add(line)
                log.warning("%s", line)
