"""The node agent (DESIGN §4): the one long-lived process on every node.

*   An APScheduler job polls git every `poll_interval` (the master's first poll waits
    `master_grace`): refresh the registration, carry orphaned intents, and move new
    tasks addressed to this node from git into the local huey queue, once each.
*   huey's consumer threads run the tasks.  They never touch git: a task's outcome is
    stored in huey's SQLite first (the outbox) ...
*   ... and a flusher thread pushes outcomes, each with the removal of its pending file,
    in one commit per batch, then forgets them locally.

So a node that dies mid-task runs the task again after restart (tasks are idempotent),
a task that finished never runs twice, and no outcome is lost.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from apscheduler.schedulers.background import BackgroundScheduler
from huey import SqliteHuey
from huey.constants import EmptyData
from huey.storage import SqliteStorage

from picluster import layout
from picluster.ganglia import Daemons
from picluster.gitstore import (
    ClusterRepo,
    GitError,
    Op,
    Put,
    Remove,
    Snapshot,
    decode_ops,
    encode_ops,
)
from picluster.identity import NodeIdentity, facts, identify
from picluster.master import Master
from picluster.queue import scan
from picluster.registry import register
from picluster.settings import Settings
from picluster.tasks import Catalogue, Outcome, Task, TaskContext, catalogue, now_iso, parse_time

__all__ = ["Agent"]

log = logging.getLogger(__name__)

_SEEN, _OUTCOME, _ATTEMPTS = "picluster:seen:", "picluster:outcome:", "picluster:attempts:"
# Outcomes that finish close together share a commit, up to about this much JSON.
_FLUSH_BATCH_WINDOW = 0.05
_FLUSH_BATCH_BYTES = 4 << 20


class _Storage(SqliteStorage):
    """huey's SQLite storage with WAL and synchronous=NORMAL: a committed outcome survives
    a crash of the agent; only a power cut can lose the last ones, and then the task runs
    again.  It spares the fsync on every commit (eight per task) that FULL costs an SD
    card."""

    def _create_connection(self):  # type: ignore[no-untyped-def]
        conn = super()._create_connection()
        conn.execute("pragma synchronous=NORMAL")
        return conn


class Agent:
    """Everything `picluster agent` runs.  `run()` blocks until SIGINT (graceful: running
    tasks finish and their outcomes are pushed) or SIGTERM."""

    def __init__(self, settings: Settings, tasks: Catalogue = catalogue,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.settings = settings
        self.catalogue = tasks
        self.clock = clock
        self.node: NodeIdentity = identify(settings)
        self.repo = ClusterRepo.from_settings(settings, self.node.mac)
        settings.home.mkdir(parents=True, exist_ok=True)
        settings.ssh_dir.mkdir(parents=True, exist_ok=True)
        self.huey = SqliteHuey("picluster", filename=str(settings.huey_db), results=False,
                               storage_class=_Storage)
        self._execute = self.huey.task(context=True, name="picluster.execute")(self._run_task)
        self.scheduler = BackgroundScheduler(timezone=dt.UTC)
        self.daemons = Daemons(settings)
        self.master = Master(settings, self.repo, lambda: self.node, self.daemons)
        self._wake = threading.Event()
        self._stopping = threading.Event()
        # Moving tasks into huey and pushing outcomes must not interleave: a poll reading
        # a snapshot from before a flush would queue a finished task again.
        self._queue_lock = threading.Lock()
        self.is_master = False
        self.started = clock()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Register (retrying until git answers), recover from a crash, start the jobs."""
        self._register_until_done()
        self._recover()
        self.daemons.ensure(is_master=False, own_ip=self.node.ip)  # gmond, last config
        self.scheduler.start()
        self.schedule()
        threading.Thread(target=self._flusher, name="flusher", daemon=True).start()

    def schedule(self) -> None:
        """(Re)schedule the jobs for this node's role.  The master's first poll and ping
        wait for `master_grace` after start, so every node can register first; a node
        that becomes master later starts pinging at once, if the grace has passed."""
        grace = dt.timedelta(seconds=self.settings.master_grace if self.is_master else 0)
        first = max(self.clock(), self.started + grace)
        if self.scheduler.get_job("poll") is None:
            if grace:
                log.info("master: first poll after the %.0f s grace period",
                         grace.total_seconds())
            self._every("poll", self.poll, self.settings.poll_interval, first)
        for name, job in (("reach", self.master.reach), ("ping", self.master.ping)):
            if self.is_master and self.scheduler.get_job(name) is None:
                self._every(name, job, self.settings.ping_interval, first)
            elif not self.is_master and self.scheduler.get_job(name) is not None:
                self.scheduler.remove_job(name)

    def _every(self, name: str, job: Callable[[], object], interval: float,
               first: dt.datetime) -> None:
        """Run `job` at `first`, then every `interval` seconds from the start of the last
        run, at once if a run overran: never two at a time, never a missed turn piling up.
        """
        def run() -> None:
            started = self.clock()
            try:
                job()
            except Exception:
                # A job outlives any one bad run; the traceback says what to fix.
                log.exception("%s failed; next run in %.0f s", name, interval)
            finally:
                due = max(self.clock(), started + dt.timedelta(seconds=interval))
                if not self._stopping.is_set() and (name == "poll" or self.is_master):
                    self._every(name, job, interval, due)

        self.scheduler.add_job(run, "date", run_date=first, id=name, replace_existing=True,
                               misfire_grace_time=None)

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
        if self.scheduler.running:
            self.scheduler.shutdown(wait=graceful)
        self._wake.set()
        try:
            self.flush()
        except GitError as error:
            log.warning("outcomes stay in the local outbox until the next start: %s", error)
        self.daemons.stop()
        log.info("agent stopped")

    # -- the jobs ----------------------------------------------------------------------

    def _register_until_done(self) -> None:
        delay = 1.0
        while True:
            try:
                self.refresh_registration()
                return
            except GitError as error:
                log.warning("cannot register yet (%s); retrying in %.0f s", error, delay)
                if self._stopping.wait(delay):
                    raise
                delay = min(delay * 2, 60.0)

    def refresh_registration(self) -> None:
        self.node = identify(self.settings)
        reg = register(self.repo, self.node, facts(self.settings),
                       designated=self.settings.master)
        if reg.commit:
            log.info("registered %s at %s (%s)", reg.mac, reg.ip, ", ".join(reg.changed))
        if reg.is_master != self.is_master:
            log.info("role: %s", "master" if reg.is_master else "node")
            self.is_master = reg.is_master
            if self.scheduler.running:
                self.schedule()

    def poll(self) -> None:
        """One poll: registration, orphans, and new tasks into huey."""
        try:
            self.refresh_registration()
            self.repo.carry_orphans()
            self.enqueue_new()
            self.flush()
            if self.is_master:
                self.master.render()
            self.daemons.ensure(is_master=self.is_master, own_ip=self.node.ip)
        except GitError as error:
            log.warning("poll failed, next one in %.0f s: %s", self.settings.poll_interval,
                        error)

    def enqueue_new(self) -> int:
        """Move new tasks from git into huey; store rejections in the outbox.  Returns how
        many tasks were enqueued."""
        with self._queue_lock:
            return self._enqueue_new()

    def _enqueue_new(self) -> int:
        snapshot = self.repo.snapshot()
        storage = self.huey.storage
        known = set(self._seen(snapshot))
        count = 0
        for pending in scan(snapshot, self.node.mac, self.catalogue, known):
            if pending.rejection is not None:
                log.warning("rejected %s", pending.rejection.error)
                self._store(pending.rejection, pending.path, [])
                continue
            task = pending.task
            assert task is not None
            if not storage.put_if_empty(_SEEN + task.id, b"1"):
                continue
            eta = parse_time(task.eta) if task.eta else None
            self.huey.enqueue(self._execute.s(task.to_json(), pending.path, id=task.id,
                                              eta=eta, retries=task.retries))
            log.info("queued %s %s from %s", task.task, task.id, task.producer)
            count += 1
        return count

    def _recover(self) -> None:
        """After a crash, tasks that were running are neither queued nor done: forget that
        they were seen, so the first poll queues them again."""
        snapshot = self.repo.sync()
        queued = {t.id for t in self.huey.pending()} | {t.id for t in self.huey.scheduled()}
        storage = self.huey.storage
        for task_id in self._seen(snapshot):
            if task_id not in queued and not storage.has_data_for_key(_OUTCOME + task_id):
                log.info("task %s was interrupted; it runs again", task_id)
                storage.pop_data(_SEEN + task_id)

    def _seen(self, snapshot: Snapshot) -> list[str]:
        """The ids of the files in this node's queue that were moved into huey already."""
        storage = self.huey.storage
        ids = (name.removesuffix(".json")
               for name in snapshot.listdir(layout.queue_dir(self.node.mac), files=True))
        return [task_id for task_id in ids if storage.has_data_for_key(_SEEN + task_id)]

    # -- running a task (consumer threads: no git here) --------------------------------

    def _run_task(self, task_json: str, pending_path: str, task: Any = None) -> None:
        job = Task.from_json(task_json, pending_path)
        attempts = self.huey.storage.incr(_ATTEMPTS + job.id)
        context = TaskContext(self.settings, job)
        outcome = Outcome(id=job.id, node=self.node.mac, status="ok", task=job.task,
                          producer=job.producer, attempts=attempts, started_at=now_iso())
        function = self.catalogue.get(job.task)
        try:
            if function is None:
                raise LookupError(f"task '{job.task}' left the catalogue")
            outcome.result = function(job.args, context)
            json.dumps(outcome.result)
        except Exception as error:
            if task is not None and task.retries > 0:
                log.warning("task %s failed (%s); %d retries left", job.id, error, task.retries)
                raise
            log.warning("task %s failed: %s: %s", job.id, type(error).__name__, error)
            outcome.status, outcome.result = "error", None
            outcome.error = f"{type(error).__name__}: {error}"
            context.ops.clear()
        outcome.finished_at = now_iso()
        self._store(outcome, pending_path, context.ops)
        log.info("task %s %s: %s", job.task, job.id, outcome.status)

    def _store(self, outcome: Outcome, pending_path: str, ops: list[Op]) -> None:
        record = {"outcome": outcome.to_json(), "pending": pending_path,
                  "ops": encode_ops(ops)}
        self.huey.storage.put_data(_OUTCOME + outcome.id, json.dumps(record).encode())
        self._wake.set()

    # -- pushing outcomes --------------------------------------------------------------

    def _flusher(self) -> None:
        while not self._stopping.is_set():
            self._wake.wait()
            if self._stopping.is_set():
                return
            time.sleep(_FLUSH_BATCH_WINDOW)
            self._wake.clear()
            try:
                self.flush()
                # A config task may have run.
                self.daemons.ensure(is_master=self.is_master, own_ip=self.node.ip)
            except GitError as error:
                log.warning("cannot push outcomes yet, retrying at the next poll: %s", error)
            except Exception:
                log.exception("cannot push outcomes; retrying at the next poll")

    def flush(self) -> int:
        """Push every outcome in the outbox, each with the removal of its pending file;
        forget them locally only once they are in git.  Returns how many were pushed."""
        with self._queue_lock:
            return self._flush()

    def _flush(self) -> int:
        storage = self.huey.storage
        records = {}
        for key, value in storage.result_items().items():
            key = key.decode() if isinstance(key, bytes) else key
            if key.startswith(_OUTCOME) and value is not EmptyData:
                records[key.removeprefix(_OUTCOME)] = json.loads(value)
        batch: dict[str, dict[str, Any]] = {}
        size = 0
        for task_id, record in records.items():
            batch[task_id] = record
            size += len(record["outcome"])
            if size > _FLUSH_BATCH_BYTES:
                self._push_outcomes(batch)
                batch, size = {}, 0
        if batch:
            self._push_outcomes(batch)
        return len(records)

    def _push_outcomes(self, records: dict[str, dict[str, Any]]) -> None:
        """One commit: each outcome, the removal of its pending file, and any ops its task
        added; then forget them locally."""
        ops: list[Op] = []
        statuses: dict[str, int] = {}
        for record in records.values():
            outcome = Outcome.from_json(record["outcome"])
            statuses[outcome.status] = statuses.get(outcome.status, 0) + 1
            ops += [Put(outcome.path(), record["outcome"]), Remove(record["pending"])]
            ops += decode_ops(record["ops"])
        summary = ", ".join(f"{n} {status}" for status, n in sorted(statuses.items()))
        self.repo.transact(ops, f"{self.node.mac}: outcomes of {len(records)} tasks "
                                f"({summary})")
        storage = self.huey.storage
        for task_id in records:
            for prefix in (_OUTCOME, _SEEN):
                storage.pop_data(prefix + task_id)
            storage.delete_counter(_ATTEMPTS + task_id)
        log.info("pushed %d outcomes (%s)", len(records), summary)
