"""The node agent: the one long-lived process on every node (docs/design.md).

*   An APScheduler job polls git every `poll_interval` (the master's first poll waits
    `master_grace`): refresh the registration (signed with the cluster key), carry
    orphaned intents, and move new tasks addressed to this node from git into the local
    huey queue, once each (intake), checked against the signers this node trusts
    (picluster.trust).
*   huey's consumer threads run the tasks.  They never touch git: a task's outcome is
    stored in huey's SQLite first (the outbox) ...
*   ... and a flusher thread pushes outcomes, each with the removal of its pending file,
    in one commit per batch, then forgets them locally.
*   While the node holds `master`, two more jobs knock on and ping the workers every
    `ping_interval`, a third converges every node to its desired state every
    `poll_interval`, and the poll renders the views, keeps a job per signed schedule and
    removes old outcomes (picluster.master).  Every node moves its beacon (`beat`); every
    other node watches the master's (`watch`) and takes `master` over when it is its turn
    (picluster.master.takeover).
*   A wake-up (picluster.wakeup) makes the node fetch at once when the remote moved: a
    task starts, a join reaches the master's views, within a round trip, whatever the
    poll interval.

So a node that dies mid-task runs the task again after restart (tasks are idempotent),
a task that finished never runs twice, and no outcome is lost.
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from huey import SqliteHuey

from picluster import wakeup
from picluster.ganglia import Daemons
from picluster.gitstore import ClusterRepo, GitError
from picluster.identity import NodeIdentity, identify
from picluster.master import Master, Succession
from picluster.master.retention import Retention
from picluster.master.schedules import Schedules
from picluster.node.facts import reported_facts
from picluster.node.intake import Intake
from picluster.node.ledger import Ledger
from picluster.node.outbox import Outbox
from picluster.node.prompt import PromptStorage
from picluster.node.tasks import installed
from picluster.node.timeout import within
from picluster.plugins import Plugins
from picluster.registry import read_cluster_vars, register
from picluster.retry import retry
from picluster.settings import Settings
from picluster.tasks import Catalogue, Outcome, Task, TaskContext, TaskFailed, now_iso
from picluster.trust import Trust

__all__ = ["Agent"]

log = logging.getLogger(__name__)


class Agent:
    """Everything `picluster agent` runs.  `run()` blocks until SIGINT (graceful: running
    tasks finish and their outcomes are pushed) or SIGTERM."""

    def __init__(self, settings: Settings, tasks: Catalogue | None = None,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.settings = settings
        # The built-ins and the installed packages' tasks, unless told otherwise.
        plugins = installed() if tasks is None else Plugins(tasks)
        self.catalogue = plugins.catalogue
        self.clock = clock
        self.node: NodeIdentity = identify(settings)
        # Shallow: the clone holds the tip, whatever the history (retention keeps it small).
        self.repo = ClusterRepo.from_settings(settings, self.node.mac, shallow=True)
        settings.home.mkdir(parents=True, exist_ok=True)
        settings.ssh_dir.mkdir(parents=True, exist_ok=True)
        self.huey = SqliteHuey("picluster", filename=str(settings.huey_db), results=False,
                               storage_class=PromptStorage)
        execute = self.huey.task(context=True, name="picluster.execute")(self._run_task)
        self.ledger = Ledger(self.huey.storage)
        self.outbox = Outbox(self.ledger, self.repo, self.node.mac, pushed=self._wake_master)
        self.trust = Trust(settings)
        self.trust.install_anchor()  # TrustError: the card's anchor cannot be used
        self.intake = Intake(self.huey, execute, self.repo, self.node.mac, self.catalogue,
                             self.ledger, self.outbox, self.trust.signers)
        self._facts = functools.partial(reported_facts, settings, plugins)
        self.scheduler = BackgroundScheduler(timezone=dt.UTC)
        self.daemons = Daemons(settings)
        self.master = Master(settings, self.repo, lambda: self.node, self.daemons)
        self.succession = Succession(settings, self.repo, lambda: self.node,
                                     self.master.members)
        self.schedules = Schedules(settings, self.repo, self.scheduler, self.trust.signers)
        self.retention = Retention(settings, self.repo)
        self._stopping = threading.Event()
        self._scheduling = threading.Lock()  # the poll and the watch both follow the role
        self.is_master = False
        self._master: str | None = None  # who held `master` at the last registration
        self.started = clock()
        # One poll at a time, or what a wake-up does instead of one.
        self._polling = threading.Lock()
        self._listener: wakeup.Listener | None = None

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Register (retrying until git answers), recover from a crash, start the jobs."""
        retry(self.refresh_registration, retry_on=(GitError,), what="register",
              stop=self._stopping)
        self.trust.follow(self.repo.snapshot())  # trust on first use: at the first clone
        self.intake.recover()
        self.daemons.ensure(is_master=False, own_ip=self.node.ip)  # gmond, last config
        self.scheduler.start()
        self.schedule()
        self.outbox.start(after_push=self._ensure_daemons)  # a config task may have run
        self._listen()

    def run(self) -> None:
        consumer = self.huey.create_consumer(
            workers=self.settings.workers, worker_type="thread", periodic=False,
            initial_delay=0.05, backoff=1.5, max_delay=0.5)
        try:
            self.start()
            consumer.run()  # blocks; SIGINT finishes running tasks first
        finally:
            # Also after a SIGINT during start: the daemons started must not outlive us.
            self.stop(graceful=consumer._graceful)

    def stop(self, *, graceful: bool = True) -> None:
        """Stop the jobs (waiting for a running poll when graceful) and push what ran."""
        self._stopping.set()
        if self._listener is not None:
            self._listener.stop(wait=graceful)
        self.outbox.stop()
        if self.scheduler.running:
            self.scheduler.shutdown(wait=graceful)
        try:
            self.outbox.flush()
        except GitError as error:
            log.warning("outcomes stay in the local outbox until the next start: %s", error)
        self.daemons.stop()
        log.info("agent stopped")

    # -- the jobs ----------------------------------------------------------------------

    def schedule(self) -> None:
        """Add and remove jobs to match this node's role: `poll` and `beat` always, `reach`,
        `ping` and `converge` while master, `watch` while not.  A master's first poll and ping
        wait for `master_grace` after start, so every node can register first; a node that
        becomes master later starts pinging at once, if the grace has passed."""
        with self._scheduling:
            self._schedule()

    def _schedule(self) -> None:
        grace = dt.timedelta(seconds=self.settings.master_grace if self.is_master else 0)
        first = max(self.clock(), self.started + grace)
        if self.scheduler.get_job("poll") is None:
            if self.is_master and self.settings.master_grace:
                log.info("master: first poll after the %.0f s grace period",
                         self.settings.master_grace)
            self._every("poll", self.poll, self.settings.poll_interval, first)
        if self.scheduler.get_job("beat") is None:
            self._every("beat", self.succession.beat, self.succession.beat_interval,
                        self.clock())
        ping, poll = self.settings.ping_interval, self.settings.poll_interval
        for name, job, every, wanted in (
                ("reach", self.master.reach, ping, self.is_master),
                ("ping", self.master.ping, ping, self.is_master),
                ("converge", self.master.converge, poll, self.is_master),
                ("watch", self.watch, ping, not self.is_master)):
            scheduled = self.scheduler.get_job(name) is not None
            if wanted and not scheduled:
                self._every(name, job, every, first)
            elif not wanted and scheduled:
                self.scheduler.remove_job(name)

    def _grace_over(self) -> dt.datetime:
        """When this node's first poll is due: at start, or on the master after the grace
        that lets every node register first."""
        grace = self.settings.master_grace if self.is_master else 0
        return self.started + dt.timedelta(seconds=grace)

    def _every(self, name: str, job: Callable[[], object], seconds: float,
               first: dt.datetime) -> None:
        """Run `job` at `first`, then every `seconds`: never two at a time, missed turns
        run once, however late.  APScheduler logs a run's exception; the job goes on."""
        self.scheduler.add_job(job, "interval", seconds=seconds, id=name, next_run_time=first,
                               max_instances=1, coalesce=True, misfire_grace_time=None)

    def refresh_registration(self) -> None:
        self.node = identify(self.settings)
        reg = register(self.repo, self.node, self._facts(), designated=self.settings.master,
                       key=self.settings.ssh_key)
        if reg.commit:
            log.info("registered %s at %s (%s)", reg.mac, reg.ip, ", ".join(reg.changed))
        self._master = reg.master
        if reg.is_master != self.is_master:
            log.info("role: %s", "master" if reg.is_master else "node")
            self.is_master = reg.is_master
            if self.scheduler.running:
                self.schedule()

    def poll(self) -> None:
        """One poll: registration, orphans, new tasks into huey, outcomes out."""
        with self._polling:
            try:
                self.refresh_registration()
                self.repo.carry_orphans()
                self.intake.take()
                self.outbox.flush()
                if self.is_master:
                    self.master.render()
                self.schedules.sync(self.is_master)  # the signed schedules' jobs, while master
                self.retention.run_if_due(self.is_master)  # old outcomes out, on the master
                self._ensure_daemons()
                self._listen()  # the port may have changed in cluster.yml
            except GitError as error:
                log.warning("poll failed, next one in %.0f s: %s",
                            self.settings.poll_interval, error)

    # -- wake-ups ----------------------------------------------------------------------

    def _listen(self) -> None:
        """Listen for wake-ups at this node's IP on the cluster's port; again whenever
        either changed (port 0: not at all)."""
        port = read_cluster_vars(self.repo.snapshot()).wakeup_port
        current = self._listener
        if current is not None and (current.ip, current.port) == (self.node.ip, port):
            return
        if current is not None:
            current.stop(wait=False)
        self._listener = wakeup.Listener(self.node.ip, port, self.node.mac, self._woken)
        if port and not self._stopping.is_set():
            self._listener.start()

    def _woken(self) -> None:
        """A wake-up (at most one per 200 ms): if the remote moved, fetch and act on it
        now.  Asking costs one ls-remote, so a flood of forged or replayed wake-ups costs
        little more.  Registration and orphans keep to the poll."""
        if self._stopping.is_set() or self.clock() < self._grace_over():
            return
        try:
            if self.repo.ls_remote() == self.repo.snapshot().commit:
                log.debug("woken: nothing new on the remote")
                return
            log.debug("woken: fetching now")
            with self._polling:
                self.repo.sync()
                self.intake.take()
                if self.is_master:
                    self.master.render()
        except GitError as error:
            log.warning("acting on a wake-up failed; the next poll catches up: %s", error)

    def _wake_master(self) -> None:
        """Outcomes landed: wake the master, so what they report (a Ganglia config's
        digest, a registration) reaches its views now."""
        if self._master not in (None, self.node.mac):
            snapshot = self.repo.snapshot()
            wakeup.send(snapshot, [self._master], read_cluster_vars(snapshot).wakeup_port,
                        source=self.node.ip)

    def watch(self) -> None:
        """Watch the master; having taken it over, act as master at once: the role, the
        jobs, and a poll now to render, converge and start gmetad."""
        if not self.succession.watch():
            return
        try:
            self.refresh_registration()
        except GitError as error:  # the next poll follows the role
            log.warning("could not register as master yet: %s", error)
            return
        poll = self.scheduler.get_job("poll")
        if poll is not None:
            poll.modify(next_run_time=self.clock())

    def _ensure_daemons(self) -> None:
        self.daemons.ensure(is_master=self.is_master, own_ip=self.node.ip)

    # -- running a task (consumer threads: no git here) --------------------------------

    def _run_task(self, task_json: str, pending_path: str, task: Any = None) -> None:
        job = Task.from_json(task_json, pending_path)
        attempts = self.ledger.started(job.id)
        context = TaskContext(self.settings, job, self._facts)
        outcome = Outcome(id=job.id, node=self.node.mac, status="ok", task=job.task,
                          producer=job.producer, attempts=attempts, started_at=now_iso())
        function = self.catalogue.get(job.task)
        try:
            if function is None:
                raise LookupError(f"task '{job.task}' left the catalogue")
            outcome.result = within(job.timeout, lambda: function(job.args, context))
            json.dumps(outcome.result)
        except Exception as error:
            if task is not None and task.retries > 0:
                log.warning("task %s failed (%s); %d retries left", job.id, error, task.retries)
                raise
            log.warning("task %s failed: %s: %s", job.id, type(error).__name__, error)
            if isinstance(error, TaskFailed):  # it ran, and has a result to keep
                outcome.status, outcome.result, outcome.error = error.status, error.result, \
                    str(error)
            else:
                outcome.status, outcome.result = "error", None
                outcome.error = f"{type(error).__name__}: {error}"
            context.ops.clear()
        outcome.finished_at = now_iso()
        self.outbox.store(outcome, pending_path, context.ops)
        log.info("task %s %s: %s", job.task, job.id, outcome.status)
