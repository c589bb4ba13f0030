"""Schedules: signed files the master enqueues tasks from on a cron or interval trigger;
missed runs coalesce into one, none runs twice across a restart or a new master."""

import datetime as dt
import itertools
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
from helpers import Cluster, keypair, mac_of, run_cli, wait_until

from picluster import layout
from picluster.gitstore import Put
from picluster.queue import read_signers
from picluster.schedules import Schedule, next_run, read_schedules, schedule_ops
from picluster.tasks import TaskError, parse_time

NOW = dt.datetime(2026, 11, 25, 5, 0, tzinfo=dt.UTC)


def schedule(**fields: object) -> Schedule:
    values: dict = {"name": "tick", "task": "echo", "args": {}, "targets": "all",
                    "cron": None, "every": 10.0, "created_at": "2026-11-01T00:00:00Z",
                    "producer": "operator"}
    return Schedule(**(values | fields))


def test_missed_runs_are_one_run_and_a_run_is_never_early() -> None:
    every = schedule()
    assert next_run(every, NOW - dt.timedelta(seconds=35), NOW) == NOW  # 3 missed: one run
    assert next_run(every, NOW - dt.timedelta(seconds=3), NOW) == NOW + dt.timedelta(seconds=7)
    assert next_run(every, None, NOW) == NOW + dt.timedelta(seconds=10)  # new: one period on
    nightly = schedule(cron="0 3 * * *", every=None)
    yesterday = NOW.replace(hour=3) - dt.timedelta(days=1)
    assert next_run(nightly, yesterday, NOW) == NOW  # today's 03:00 was missed
    assert next_run(nightly, yesterday, NOW.replace(hour=2)) == NOW.replace(hour=3)
    assert next_run(nightly, None, NOW) == NOW.replace(hour=3) + dt.timedelta(days=1)


@pytest.mark.parametrize(("fields", "words"), [
    ({"cron": "0 3 * *", "every": None}, "is not a crontab line"),
    ({"cron": "61 * * * *", "every": None}, "is not a crontab line"),
    ({"cron": "0 3 * * *"}, "either cron or every"),
    ({"every": 0.5}, "every must be 1 s"),
    ({"targets": "everyone"}, "targets must be all, master, node or MACs"),
    ({"targets": ["B8:27:EB:00:00:01"]}, "12 lower-case hex digits"),
    ({"name": "../evil"}, "is not a schedule name"),
])
def test_a_bad_schedule_is_refused(fields: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        schedule(**fields).check()


def test_only_signed_schedules_count(cluster: Cluster, tmp_path: Path) -> None:
    repo = cluster.operator_repo()
    mallory = keypair(tmp_path / "mallory")
    good = schedule(name="good")
    repo.transact([*schedule_ops(good, cluster.operator_key, replace_existing=False),
                   *schedule_ops(schedule(name="forged"), mallory, replace_existing=False),
                   Put(layout.schedule_path("broken"), "{nope")], "schedules")
    snapshot = repo.sync()
    found, problems = read_schedules(snapshot, read_signers(snapshot))
    assert [s.name for s in found] == ["good"]
    assert any("forged.json" in p and "not a trusted signer" in p for p in problems)
    assert any("broken.json: line 1" in p for p in problems)
    with pytest.raises(TaskError, match="a schedule holds the fields"):
        Schedule.from_json(json.dumps({"name": "x"}), "x.json")


def test_schedule_add_list_remove(cluster: Cluster) -> None:
    operator = cluster.operator_config()
    bad = run_cli("schedule", "add", "nightly", "--cron", "0 3 * *", "--all", "echo",
                  config=operator)
    assert bad.returncode == 2 and "'0 3 * *' is not a crontab line" in bad.stderr
    for options, words in [(["--cron", "0 3 * * *", "--every", "1h"], "either --cron or"),
                           (["--every", "0.1s"], "at least 1 s"),
                           (["--every", "1h"], "name the nodes"),
                           (["--every", "1h", "--all", "--arg", "seconds=1e9"], "'seconds'")]:
        done = run_cli("schedule", "add", "x", *options, "sleep", config=operator)
        assert done.returncode == 2 and words in done.stderr, (options, done.stderr)
    added = run_cli("schedule", "add", "nightly", "--cron", "0 3 * * *", "--role", "node",
                    "run", "--", "apt-get", "-y", "upgrade", config=operator)
    assert added.returncode == 0, added.stderr
    assert "schedule nightly: run cron 0 3 * * * for node" in added.stdout
    again = run_cli("schedule", "add", "nightly", "--every", "1h", "--all", "echo",
                    config=operator)
    assert again.returncode == 2 and "schedule nightly exists" in again.stderr
    assert run_cli("schedule", "add", "nightly", "--every", "1h", "--all", "echo",
                   "--replace", config=operator).returncode == 0
    listed = json.loads(run_cli("schedule", "list", "--json", config=operator).stdout)
    (row,) = listed["schedules"]
    assert row["name"] == "nightly" and row["trigger"] == "every 3600 s"
    assert row["targets"] == "all" and row["last_run"] is None and row["producer"] == "operator"
    assert "nightly" in run_cli("schedule", "list", config=operator).stdout
    assert run_cli("schedule", "remove", "nightly", config=operator).returncode == 0
    gone = run_cli("schedule", "remove", "nightly", config=operator)
    assert gone.returncode == 2 and "no schedule nightly" in gone.stderr


def runs(cluster: Cluster) -> list[dt.datetime]:
    """When the schedule ran, from the ids of the tasks it enqueued (one per node, made
    within a moment of each other)."""
    snapshot = cluster.snapshot()
    folders = [layout.queue_dir(mac_of(number)) + sub for number in (1, 2)
               for sub in ("", "/done")]
    ids = [name.removesuffix(".json") for folder in folders
           for name in snapshot.listdir(folder, files=True)  # the master sends ganglia too
           if json.loads(snapshot.read(f"{folder}/{name}") or "{}").get("task") == "echo"]
    times = sorted(dt.datetime.strptime(i.split("-")[0], "%Y%m%dT%H%M%S%fZ").replace(
        tzinfo=dt.UTC) for i in ids)
    return [t for n, t in enumerate(times) if n == 0 or (t - times[n - 1]).total_seconds() > 0.5]


def stop(agent: subprocess.Popen[bytes]) -> None:
    agent.send_signal(signal.SIGINT)
    agent.wait(timeout=30)


def test_a_schedule_runs_on_its_master_once_per_period_across_restarts_and_masters(
        cluster: Cluster) -> None:
    key = f"{cluster.operator_key}"
    first = cluster.start_agent(cluster.node_config(1, signing_key=key))
    wait_until(lambda: cluster.snapshot().read(layout.MASTER), 30, "node 1 to be master")
    period = 3.0
    added = run_cli("schedule", "add", "tick", "--every", f"{period:g}s", "--all", "echo",
                    config=cluster.operator_config())
    assert added.returncode == 0, added.stderr
    wait_until(lambda: len(runs(cluster)) >= 4, 60, "four runs")
    stop(first)
    stopped = time.time()
    before = runs(cluster)
    time.sleep(3 * period)  # three runs missed: one when the master is back
    second = cluster.start_agent(cluster.node_config(1, signing_key=key))
    wait_until(lambda: len(runs(cluster)) >= len(before) + 2, 60, "two runs after a restart")
    after = runs(cluster)
    catch_up = [t for t in after if t.timestamp() > stopped]
    assert len(catch_up) >= 2
    # The missed runs were one, at once; then the period again.
    assert catch_up[0].timestamp() - stopped >= 3 * period
    assert (catch_up[1] - catch_up[0]).total_seconds() >= period * 0.8

    # A new master picks the schedule up where the old one left it.
    cluster.start_agent(cluster.node_config(2, signing_key=key))
    wait_until(lambda: cluster.snapshot().read(layout.ip_path(mac_of(2))), 30,
               "node 2 to register")
    stop(second)
    cluster.operator_repo().transact([Put(layout.MASTER, f"{mac_of(2)}\n")], "hand over")
    handed = len(runs(cluster))
    wait_until(lambda: len(runs(cluster)) >= handed + 2, 60, "two runs by the new master")
    times = runs(cluster)
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(times)]
    assert min(gaps) >= period * 0.8, gaps  # never twice
    recorded = cluster.snapshot().read(layout.schedule_run_path("tick")) or ""
    last = parse_time(recorded.strip())
    assert abs((last - times[-1]).total_seconds()) < 5
