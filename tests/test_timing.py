"""Timing and control from the command line: --in, --at, --expires, --timeout, --retries
with --retry-delay, and `picluster revoke`; through git with a real agent."""

import datetime as dt
import json
import time
from pathlib import Path

import pytest
from helpers import Cluster, keypair, mac_of, run_cli, wait_until

from picluster import layout
from picluster.node.timeout import within
from picluster.queue import enqueue, make_task, read_signers
from picluster.revoke import Revocation, revocations, revoke_ops
from picluster.tasks import TaskTimedOut, now_iso, parse_time
from picluster.timespec import parse_duration, parse_moment

NODE = mac_of(1)


def seconds(outcome: dict, start: str, end: str) -> float:
    return (parse_time(outcome[end]) - parse_time(start)).total_seconds()


def test_durations_and_times() -> None:
    assert [parse_duration(t) for t in ("90", "30s", "5m", "2h", "7d", "1.5m")] == \
        [90, 30, 300, 7200, 604800, 90]
    for bad in ("", "0", "-1s", "soon", "5w", "nan", "infs"):
        with pytest.raises(ValueError, match="not a duration"):
            parse_duration(bad)
    assert parse_moment("2026-11-25T03:00:00Z") == dt.datetime(2026, 11, 25, 3, tzinfo=dt.UTC)
    assert parse_moment("2026-11-25T03:00").tzinfo is not None  # local time, made aware
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_moment("tomorrow")


def test_within_gives_up_waiting_but_returns_what_finishes_in_time() -> None:
    assert within(None, lambda: 1) == 1
    assert within(5, lambda: 2) == 2
    with pytest.raises(TaskTimedOut, match=r"timed out after 0\.2 s"):
        within(0.2, lambda: time.sleep(5))
    with pytest.raises(ZeroDivisionError):
        within(5, lambda: 1 / 0)


def outcome_of(done) -> dict:  # type: ignore[no-untyped-def]
    assert done.stdout, done.stderr
    return json.loads(done.stdout)


def test_eta_expiry_and_bad_timing_options(cluster: Cluster) -> None:
    operator = cluster.operator_config()
    for options, words in [(["--in", "5m", "--at", "2030-01-01T00:00Z"], "not both"),
                           (["--in", "soon"], "not a duration"),
                           (["--at", "noon"], "not a time"),
                           (["--in", "1h", "--expires", "5m"], "comes before the task"),
                           (["--timeout", "2d"], "at most 86400 seconds"),
                           (["--retries", "-1"], "greater than or equal to 0")]:
        done = run_cli("enqueue", NODE, "echo", *options, config=operator)
        assert done.returncode == 2 and words in done.stderr, (options, done.stderr)
    # A task that expires while its node is away never runs.
    run_cli("enqueue", NODE, "echo", "--expires", "1s", config=operator, check=True)
    time.sleep(1.5)
    cluster.start_agent(cluster.node_config(1))
    late = wait_until(lambda: cluster.snapshot().listdir(f"queue/{NODE}/rejected"), 30,
                      "the expired task's rejection")
    text = cluster.snapshot().read(f"queue/{NODE}/rejected/{late[0]}") or ""
    assert "expired at" in json.loads(text)["error"]

    started = now_iso()
    later = outcome_of(run_cli("enqueue", NODE, "echo", "--in", "2s", "--wait", "60",
                               config=operator))
    assert later["status"] == "ok" and seconds(later, started, "started_at") >= 2
    at = (dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2)).isoformat()
    started = now_iso()
    timed = outcome_of(run_cli("enqueue", NODE, "echo", "--at", at, "--wait", "60",
                               config=operator))
    assert timed["status"] == "ok" and seconds(timed, started, "started_at") >= 1.5


def test_timeouts_and_retries_with_backoff(cluster: Cluster) -> None:
    cluster.start_agent(cluster.node_config(1))
    operator = cluster.operator_config()
    slept = run_cli("enqueue", NODE, "sleep", "--arg", "seconds=30", "--timeout", "1",
                    "--wait", "60", config=operator)
    assert slept.returncode == 1
    outcome = outcome_of(slept)
    assert outcome["status"] == "timeout" and "timed out after 1 s" in outcome["error"]
    assert seconds(outcome, outcome["started_at"], "finished_at") < 5
    hung = outcome_of(run_cli("enqueue", NODE, "run", "--timeout", "1", "--wait", "60", "--",
                              "sleep", "60", config=operator))
    assert hung["status"] == "timeout" and hung["result"]["timed_out"] is True

    # Three attempts, waiting 1 s and then 2 s between them.
    started = now_iso()
    failing = outcome_of(run_cli("enqueue", NODE, "run", "--retries", "2", "--retry-delay",
                                 "1", "--wait", "60", "--", "sh", "-c", "exit 1",
                                 config=operator))
    assert failing["status"] == "error" and failing["attempts"] == 3
    assert seconds(failing, started, "started_at") >= 3


def test_a_revoked_task_never_runs_and_its_outcome_says_so(cluster: Cluster) -> None:
    operator = cluster.operator_config()
    # Waiting in git: its node is not running yet.
    waiting = run_cli("enqueue", NODE, "echo", config=operator, check=True).stdout.strip()
    revoked = run_cli("revoke", waiting, config=operator)
    assert revoked.returncode == 0 and f"{waiting}: revoked (node {NODE})" in revoked.stdout
    again = run_cli("revoke", waiting, config=operator)
    assert again.returncode == 0 and "revoked already" in again.stdout
    config = cluster.node_config(1)
    cluster.start_agent(config)
    # Waiting in huey: an eta a minute away.
    scheduled = run_cli("enqueue", NODE, "echo", "--in", "1m", config=operator,
                        check=True).stdout.strip()
    wait_until(lambda: f"queued echo {scheduled}" in config.with_suffix(".log").read_text(),
               30, "the task to reach huey")
    done = run_cli("revoke", scheduled, "--wait", "30", config=operator)
    assert done.returncode == 0, done.stderr
    assert run_cli("revoke", waiting, config=operator).stdout == \
        f"{waiting}: revoked already (node {NODE})\n"
    snapshot = cluster.snapshot()
    for task_id in (waiting, scheduled):
        outcome = json.loads(snapshot.read(layout.outcome_path(NODE, task_id, "revoked"))
                             or "{}")
        assert outcome["status"] == "revoked" and "revoked by operator" in outcome["error"]
        assert snapshot.read(layout.outcome_path(NODE, task_id, "ok")) is None
    assert snapshot.listdir(layout.queue_dir(NODE), files=True) == []
    assert snapshot.listdir(f"{layout.queue_dir(NODE)}/revoked") == []

    finished = outcome_of(run_cli("enqueue", NODE, "echo", "--wait", "30", config=operator))
    late = run_cli("revoke", finished["id"], config=operator)
    assert late.returncode == 1 and "already finished" in late.stderr
    unknown = run_cli("revoke", "20260101T000000000000Z-nothere", config=operator)
    assert unknown.returncode == 2 and "no task 20260101T000000000000Z-nothere" in \
        unknown.stderr


def test_only_a_trusted_signer_revokes(cluster: Cluster, tmp_path: Path) -> None:
    repo = cluster.operator_repo()
    (task,) = enqueue(repo, [make_task(NODE, "echo", {}, "operator")], cluster.operator_key)
    mallory = keypair(tmp_path / "mallory")
    repo.transact(revoke_ops([Revocation(task.id, NODE, now_iso(), "operator")], mallory),
                  "forged revocation")
    snapshot = repo.sync()
    found, problems = revocations(snapshot, NODE, read_signers(snapshot))
    assert found == {} and "is not a trusted signer" in " ".join(problems)
