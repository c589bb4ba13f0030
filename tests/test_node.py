"""The node agent: its jobs, and end to end as real processes against a real (local)
git remote."""

import datetime as dt
import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers import Cluster, mac_of, run_cli, wait_until

from picluster import layout
from picluster.gitstore import ClusterRepo, Put
from picluster.lab import Lab
from picluster.node import Agent
from picluster.node.ledger import Ledger
from picluster.node.prompt import PromptStorage
from picluster.queue import enqueue, make_task, outcome_of, wait_for
from picluster.settings import Settings
from picluster.tasks import Task

NODE = mac_of(1)


def test_the_master_waits_for_its_grace_before_polling_or_pinging(cluster: Cluster) -> None:
    start = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
    now = [start]
    settings = Settings.load(cluster.node_config(1, master_grace="5m", poll_interval=30))
    agent = Agent(settings, clock=lambda: now[0])
    agent.scheduler.start(paused=True)
    try:
        agent.is_master = True
        agent.schedule()
        grace_over = start + dt.timedelta(minutes=5)
        assert agent.scheduler.get_job("poll").next_run_time == grace_over
        assert agent.scheduler.get_job("ping").next_run_time == grace_over
        assert agent.scheduler.get_job("reach").next_run_time == grace_over
        # Losing the role stops the pings without a restart; regaining it after the
        # grace pings at once.
        agent.is_master = False
        agent.schedule()
        assert agent.scheduler.get_job("ping") is None
        assert agent.scheduler.get_job("reach") is None
        now[0] = start + dt.timedelta(minutes=7)
        agent.is_master = True
        agent.schedule()
        assert agent.scheduler.get_job("ping").next_run_time == now[0]
    finally:
        agent.scheduler.shutdown(wait=False)


def test_a_task_the_intake_queues_ends_the_consumer_s_wait(tmp_path: Path) -> None:
    # The intake queues through the ledger (mark and message in one transaction), not
    # through huey's enqueue: a waiting consumer thread must hear of it all the same.
    storage = PromptStorage("picluster", filename=str(tmp_path / "huey.db"))
    got: list[tuple[bytes | None, float]] = []
    waiting = threading.Thread(target=lambda: got.append((storage.dequeue(),
                                                          time.monotonic())))
    waiting.start()
    time.sleep(0.1)  # the thread waits in dequeue
    queued = time.monotonic()
    assert Ledger(storage).queue("t1", b"message", dt.datetime.now(dt.UTC))
    waiting.join()
    (message, taken), = got
    assert message == b"message" and taken - queued < 0.2  # its idle wait is 0.5 s


def test_a_worker_polls_at_once(cluster: Cluster) -> None:
    start = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
    agent = Agent(Settings.load(cluster.node_config(2)), clock=lambda: start)
    agent.scheduler.start(paused=True)
    try:
        agent.schedule()
        assert agent.scheduler.get_job("poll").next_run_time == start
        assert agent.scheduler.get_job("ping") is None
    finally:
        agent.scheduler.shutdown(wait=False)


def test_a_job_that_raises_is_logged_and_runs_again(cluster: Cluster,
                                                    caplog: pytest.LogCaptureFixture) -> None:
    agent = Agent(Settings.load(cluster.node_config(2, poll_interval=0.2)))
    runs: list[float] = []

    def failing_poll() -> None:
        runs.append(time.monotonic())
        raise RuntimeError("a bad poll")

    agent.poll = failing_poll  # type: ignore[method-assign]
    agent.scheduler.start()
    try:
        agent.schedule()
        wait_until(lambda: len(runs) >= 2, 10, "a second poll after a failed one")
    finally:
        agent.scheduler.shutdown(wait=False)
    assert "a bad poll" in caplog.text


def outcome_files(cluster: Cluster, mac: str, folder: str) -> list[str]:
    return cluster.snapshot().listdir(f"{layout.queue_dir(mac)}/{folder}", files=True)


def test_echo_round_trip_through_the_cli(cluster: Cluster) -> None:
    cluster.start_agent(cluster.node_config(1))
    done = run_cli("enqueue", NODE, "echo", "--arg", "msg=hi", "--arg", "n=3", "--wait", "30",
                   config=cluster.operator_config())
    assert done.returncode == 0, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["status"] == "ok" and outcome["result"] == {"msg": "hi", "n": 3}
    assert outcome["attempts"] == 1
    assert cluster.snapshot().listdir(layout.queue_dir(NODE), files=True) == []


def test_a_failing_task_reports_its_error_and_exit_1(cluster: Cluster) -> None:
    # A worker whose state directory is broken cannot apply a (valid) Ganglia config.
    run_cli("register", config=cluster.node_config(1), check=True)  # node 1 holds `master`
    config = cluster.node_config(2)
    (cluster.root / "node2" / "rendered").parent.mkdir(parents=True)
    (cluster.root / "node2" / "rendered").write_text("not a directory\n")
    cluster.start_agent(config)
    done = run_cli("enqueue", mac_of(2), "ganglia", "--arg", "cluster=lab",
                   "--arg", "master_ip=127.0.0.1", "--wait", "60",
                   config=cluster.operator_config())
    assert done.returncode == 1, done.stderr
    outcome = json.loads(done.stdout)
    assert outcome["status"] == "error"
    assert outcome["error"].startswith(("NotADirectoryError", "FileExistsError")), outcome


def test_wait_times_out_with_exit_3(cluster: Cluster) -> None:
    done = run_cli("enqueue", NODE, "echo", "--wait", "1", config=cluster.operator_config())
    assert done.returncode == 3 and "stays queued" in done.stderr


def test_bad_tasks_never_run_and_their_outcome_says_why(cluster: Cluster) -> None:
    repo = cluster.operator_repo()
    (good,) = enqueue(repo, [make_task(NODE, "echo", {}, "operator")], cluster.operator_key)
    folder = layout.queue_dir(NODE)
    forged = json.loads(good.to_json()) | {"id": "forged", "args": {"evil": 1}}
    repo.transact([Put(f"{folder}/forged.json", json.dumps(forged)),
                   Put(f"{folder}/broken.json", "{nope"),
                   Put(f"{folder}/escape.json",
                       json.dumps(forged | {"id": "../../x"}))], "bad tasks")
    cluster.start_agent(cluster.node_config(1))
    wait_until(lambda: len(outcome_files(cluster, NODE, "rejected")) == 3
               and outcome_files(cluster, NODE, "done"), 30, "three rejections and one result")
    assert outcome_files(cluster, NODE, "done") == [f"{good.id}.json"]
    snap = cluster.snapshot()
    reasons = {name: json.loads(snap.read(f"{folder}/rejected/{name}") or "{}")["error"]
               for name in outcome_files(cluster, NODE, "rejected")}
    assert "does not verify" in reasons["forged.json"]
    assert "line 1 column 2" in reasons["broken.json"]
    assert "field 'id' is '../../x'" in reasons["escape.json"]
    assert snap.listdir(folder, files=True) == []  # every pending file acknowledged


def sleeping_task(cluster: Cluster, seconds: float
                  ) -> tuple[subprocess.Popen[bytes], ClusterRepo, Task]:
    """A running agent, busy with a `sleep` task: (the agent, the operator's repo, the task)."""
    config = cluster.node_config(1)
    agent = cluster.start_agent(config)
    repo = cluster.operator_repo()
    (task,) = enqueue(repo, [make_task(NODE, "sleep", {"seconds": seconds}, "operator")],
                      cluster.operator_key)
    log = config.with_suffix(".log")
    wait_until(lambda: f"queued sleep {task.id}" in log.read_text(), 30, "the task to start")
    return agent, repo, task


def test_kill_9_mid_task_then_restart_runs_it_to_exactly_one_outcome(
        cluster: Cluster) -> None:
    agent, repo, task = sleeping_task(cluster, 3)
    time.sleep(1)
    agent.send_signal(signal.SIGKILL)
    agent.wait()
    assert outcome_of(repo.sync(), NODE, task.id) is None
    cluster.start_agent(cluster.node_config(1))
    outcome = wait_for(repo, [task], 60)[task.id]
    assert outcome.status == "ok" and outcome.attempts == 2
    assert outcome_files(cluster, NODE, "done") == [f"{task.id}.json"]
    assert outcome_files(cluster, NODE, "rejected") == []


def test_sigint_lets_the_running_task_finish_and_push(cluster: Cluster) -> None:
    agent, repo, task = sleeping_task(cluster, 2)
    agent.send_signal(signal.SIGINT)
    assert agent.wait(timeout=30) == 0
    assert outcome_of(repo.sync(), NODE, task.id) is not None


def test_every_result_lands_while_other_nodes_push(cluster: Cluster) -> None:
    nodes = [1, 2, 3, 4]
    for number in nodes:
        cluster.start_agent(cluster.node_config(number))
    repo = cluster.operator_repo()
    tasks = enqueue(repo, [make_task(mac_of(n), "echo", {"i": i}, "operator")
                           for n in nodes for i in range(10)], cluster.operator_key)
    # More writers on the same branch while the outcomes are pushed.
    for i in range(10):
        repo.transact([Put(f"local-vars/noise/{i}", f"{i}\n")], f"noise {i}")
    outcomes = wait_for(repo, tasks, 60)
    assert len(outcomes) == len(tasks)
    assert {o.status for o in outcomes.values()} == {"ok"}
    snap = repo.sync()
    for number in nodes:
        assert snap.listdir(layout.queue_dir(mac_of(number)), files=True) == []


@pytest.mark.lab
def test_an_echo_task_to_every_lab_node_returns_through_git(lab: Lab) -> None:
    operator = Settings.load(lab.operator_config)
    repo = ClusterRepo.from_settings(operator, "operator")
    tasks = enqueue(repo, [make_task(status.mac, "echo", {"to": status.name}, "operator")
                           for status in lab.status()], operator.signing_key)
    outcomes = wait_for(repo, tasks, 60)
    assert {o.node: o.result for o in outcomes.values()} == \
        {s.mac: {"to": s.name} for s in lab.status()}
