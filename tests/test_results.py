"""Results and a repository that does not grow for ever: `picluster result` and `tasks`,
the master's retention of outcomes, and nodes' shallow clones."""

import datetime as dt
import json
import subprocess
from pathlib import Path

import pytest
from helpers import Cluster, mac_of, run_cli, wait_until

from picluster import layout
from picluster.gitstore import ClusterRepo, Create, Put, Snapshot
from picluster.master import retention
from picluster.master.retention import Retention
from picluster.results import created
from picluster.settings import Settings
from picluster.tasks import Outcome

NODE = mac_of(1)
NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


def task_id(age: dt.timedelta, n: int) -> str:
    return (NOW - age).strftime("%Y%m%dT%H%M%S%fZ") + f"-{n:08x}"


def test_created_reads_the_time_from_an_id() -> None:
    assert created(task_id(dt.timedelta(0), 1)) == NOW
    assert created("invalid-notes-txt") is None


def test_result_and_tasks_through_git(cluster: Cluster) -> None:
    operator = cluster.operator_config()
    waiting = run_cli("enqueue", NODE, "echo", config=operator, check=True).stdout.strip()
    pending = run_cli("result", waiting, config=operator)
    assert pending.returncode == 3 and f"{waiting}: pending on {NODE}" in pending.stdout
    cluster.start_agent(cluster.node_config(1))
    ok = json.loads(run_cli("enqueue", NODE, "echo", "--arg", "n=1", "--wait", "60",
                            config=operator).stdout)
    failed = json.loads(run_cli("enqueue", NODE, "run", "--wait", "60", "--", "sh", "-c",
                                "echo to stdout; exit 4", config=operator).stdout)
    shown = run_cli("result", ok["id"], "--json", config=operator)
    assert shown.returncode == 0 and json.loads(shown.stdout)["result"] == {"n": 1}
    told = run_cli("result", failed["id"], config=operator)
    assert told.returncode == 1
    assert "status:    error" in told.stdout and "exit code: 4" in told.stdout
    assert "--- stdout\nto stdout\n" in told.stdout
    missing = run_cli("result", "20200101T000000000000Z-00000000", config=operator)
    assert missing.returncode == 2 and "outcomes are kept 7 days" in missing.stderr

    wait_until(lambda: run_cli("result", waiting, config=operator).returncode == 0, 30,
               "the first task's outcome")
    listed = json.loads(run_cli("tasks", "--json", config=operator).stdout)
    assert [row["id"] for row in listed] == [waiting, ok["id"], failed["id"]]  # oldest first
    assert [row["status"] for row in listed] == ["ok", "ok", "error"]
    errors = json.loads(run_cli("tasks", "--status", "error", "--json", config=operator).stdout)
    assert [row["id"] for row in errors] == [failed["id"]]
    assert json.loads(run_cli("tasks", "--node", mac_of(2), "--json", config=operator).stdout) \
        == []
    assert json.loads(run_cli("tasks", "--since", "2030-01-01T00:00Z", "--json",
                              config=operator).stdout) == []
    assert len(json.loads(run_cli("tasks", "--since", "1h", "--limit", "2", "--json",
                                  config=operator).stdout)) == 2
    assert failed["id"] in run_cli("tasks", config=operator).stdout
    bad = run_cli("tasks", "--status", "lost", config=operator)
    assert bad.returncode == 2 and "--status lost: use pending, ok" in bad.stderr


def outcomes(snapshot: Snapshot, mac: str = NODE) -> list[str]:
    folder = layout.queue_dir(mac)
    return sorted(snapshot.listdir(f"{folder}/done", files=True)
                  + snapshot.listdir(f"{folder}/rejected", files=True))


def test_retention_removes_old_outcomes_and_keeps_a_cap_per_node(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    repo = cluster.operator_repo()
    old = [task_id(dt.timedelta(days=8), n) for n in range(5)]
    recent = [task_id(dt.timedelta(hours=n), n) for n in range(12, 0, -1)]
    ops = [Put(layout.outcome_path(NODE, i, "ok"),
               Outcome(id=i, node=NODE, status="ok").to_json()) for i in old + recent]
    ops.append(Put(layout.outcome_path(mac_of(2), recent[0], "rejected"),
                   Outcome(id=recent[0], node=mac_of(2), status="revoked").to_json()))
    # An outcome whose name is no id: dated by when it was received.
    ops.append(Put(layout.outcome_path(NODE, "invalid-notes-txt", "rejected"),
                   Outcome(id="invalid-notes-txt", node=NODE, status="rejected",
                           received_at="2026-11-01T00:00:00Z").to_json()))
    ops.append(Create(layout.revoked_path(NODE, old[0]), "{}"))  # its task is long gone
    repo.transact(ops, "a backlog")
    settings = Settings.load(cluster.node_config(1, keep_outcomes="7d",
                                                 keep_outcomes_per_node=10))
    monkeypatch.setattr(retention, "BATCH", 4)
    keeper = Retention(settings, repo, clock=lambda: NOW)
    repo.sync()
    assert keeper.run() == 5 + 1 + 2  # the old ones, the undated one, two over the cap
    snapshot = repo.sync()
    assert outcomes(snapshot) == sorted(f"{i}.json" for i in recent[2:])
    assert outcomes(snapshot, mac_of(2)) == [f"{recent[0]}.json"]
    assert snapshot.listdir(f"{layout.queue_dir(NODE)}/revoked") == []
    subjects = subprocess.run(["git", "-C", str(cluster.bare), "log", "--format=%s"],
                              capture_output=True, text=True, check=True).stdout.splitlines()
    assert [s for s in subjects if s.startswith("retention")] == [
        "retention: remove 1 old outcomes (3 of 3)", "retention: remove 4 old outcomes (2 of 3)",
        "retention: remove 4 old outcomes (1 of 3)"]
    assert keeper.run() == 0  # nothing more to do: no commit


def test_the_master_keeps_outcomes_within_the_cap(cluster: Cluster) -> None:
    cluster.start_agent(cluster.node_config(1, keep_outcomes_per_node=3))
    operator = cluster.operator_config()
    for _ in range(2):
        done = run_cli("enqueue", NODE, "--wait", "60", "echo", config=operator)
        assert done.returncode == 0, done.stderr
    ids = [run_cli("enqueue", NODE, "echo", "--wait", "60", "--json", config=operator)
           for _ in range(3)]
    newest = sorted(json.loads(done.stdout)["id"] + ".json" for done in ids)
    wait_until(lambda: outcomes(cluster.snapshot()) == newest, 60, "the oldest to go")


def git(*args: str) -> str:
    return subprocess.run(["git", *args], capture_output=True, text=True, check=True).stdout


def test_a_node_clones_shallow_and_every_write_works_from_it(cluster: Cluster,
                                                             tmp_path: Path) -> None:
    operator = cluster.operator_repo()
    for n in range(30):
        operator.transact([Put(f"local-vars/history/{n}", f"{n}\n")], f"history {n}")
    shallow = ClusterRepo(str(cluster.bare), tmp_path / "node" / "repo", writer="node",
                          shallow=True)
    tip = shallow.sync().commit
    assert git("-C", str(shallow.clone_dir), "rev-list", "--count", tip).strip() == "1"
    # Intents, compare-and-set and carried intents all land from a shallow clone.
    assert shallow.transact([Put("local-vars/a", "a\n")], "an intent").commit
    assert shallow.transact(lambda tip: [Put("local-vars/b", (tip.read("local-vars/a") or "")
                                             + "b\n")], "compare and set").commit
    operator.transact([Put("local-vars/c", "c\n")], "another writer")
    assert shallow.transact([Put("local-vars/d", "d\n")], "after another writer").commit
    snapshot = operator.sync()
    assert snapshot.read("local-vars/b") == "a\nb\n" and snapshot.read("local-vars/d") == "d\n"
    assert git("-C", str(cluster.bare), "rev-list", "--count", "main").strip() == "35"
    depth = git("-C", str(shallow.clone_dir), "rev-list", "--count", "origin/main").strip()
    assert int(depth) <= 5  # what it fetched and made since it cloned, not the history
    # The agent's own clone, and the tasks it runs through it.
    cluster.start_agent(cluster.node_config(1))
    done = run_cli("enqueue", NODE, "echo", "--wait", "60", config=cluster.operator_config())
    assert done.returncode == 0, done.stderr
    assert (cluster.root / "node1" / "repo" / "shallow").exists()
