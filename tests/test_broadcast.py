"""Broadcast: one signed task per node, all in one commit, and a row per node."""

import json
import re
import subprocess

import pytest
from helpers import Cluster, mac_of, run_cli, wait_until

from picluster import layout
from picluster.broadcast import parse_words, rows, select, targets
from picluster.lab import Lab
from picluster.registry import Member, Membership
from picluster.tasks import Outcome, Task

MEMBERSHIP = Membership(tuple(Member(mac_of(n), f"198.18.0.{n}", {"hostname": f"pi-{n}"})
                              for n in (1, 2, 3)), master=mac_of(2))


def test_the_words_are_macs_then_the_task_then_its_command() -> None:
    words = parse_words(["B8:27:EB:00:00:01", mac_of(2), mac_of(1), "run", "ls", "-l"])
    assert words.macs == (mac_of(1), mac_of(2)) and words.task == "run"
    assert words.rest == ("ls", "-l")
    assert parse_words(["echo"]).macs == ()
    with pytest.raises(ValueError, match="name the task"):
        parse_words([mac_of(1)])


def test_select_names_every_node_a_role_or_the_macs_given() -> None:
    assert targets(every=True) == "all" and targets(role="node") == "node"
    assert targets(macs=[mac_of(9)]) == [mac_of(9)]
    for wrong in ({}, {"every": True, "macs": [mac_of(1)]}, {"role": "boss"}):
        with pytest.raises(ValueError):
            targets(**wrong)  # type: ignore[arg-type]
    assert select(MEMBERSHIP, "all") == [mac_of(1), mac_of(2), mac_of(3)]
    assert select(MEMBERSHIP, "master") == [mac_of(2)]
    assert select(MEMBERSHIP, "node") == [mac_of(1), mac_of(3)]
    assert select(MEMBERSHIP, [mac_of(9)]) == [mac_of(9)]  # as the operator says
    with pytest.raises(ValueError, match="no registered node"):
        select(Membership((), None), "all")


def test_rows_say_pending_until_an_outcome_comes() -> None:
    tasks = [Task(id=f"t{n}", node=mac_of(n), task="echo", args={}, created_at="",
                  producer="") for n in (1, 2)]
    done = Outcome(id="t1", node=mac_of(1), status="ok", result={"a": 1},
                   started_at="2026-01-01T00:00:00Z", finished_at="2026-01-01T00:00:01.5Z")
    first, second = rows(tasks, {"t1": done}, MEMBERSHIP)
    assert first == {"node": mac_of(1), "hostname": "pi-1", "id": "t1", "task": "echo",
                     "status": "ok", "duration_s": 1.5, "result": {"a": 1}, "error": None}
    assert second["status"] == "pending" and second["duration_s"] is None


def enqueue_commits(cluster: Cluster) -> list[str]:
    """The subjects of the commits that enqueued tasks.

    A commit may also carry other writers' pending intents (a heartbeat, a result); that
    suffix, "(+N carried)", says nothing about how the tasks landed, so it is cut off.
    """
    subjects = subprocess.run(["git", "-C", str(cluster.bare), "log", "--format=%s", "main"],
                              capture_output=True, text=True, check=True).stdout
    return [re.sub(r" \(\+\d+ carried\)$", "", s) for s in subjects.splitlines()
            if s.startswith("enqueue")]


def test_a_broadcast_reaches_every_node_in_one_commit(cluster: Cluster,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for number in (1, 2):
        cluster.start_agent(cluster.node_config(number))
    monkeypatch.setenv("PICLUSTER_TEST_FAIL", "1")  # node 3's commands see it
    cluster.start_agent(cluster.node_config(3))
    monkeypatch.delenv("PICLUSTER_TEST_FAIL")
    operator = cluster.operator_config()
    wait_until(lambda: len(cluster.snapshot().listdir(layout.IP_DIR)) == 4, 30,
               "three registrations")
    master = (cluster.snapshot().read(layout.MASTER) or "").strip()

    done = run_cli("enqueue", "--all", "--wait", "60", "--json", "run", "--",
                   "sh", "-c", "echo $0", "hello", config=operator)
    assert done.returncode == 0, done.stderr
    table = json.loads(done.stdout)
    assert sorted(row["node"] for row in table) == [mac_of(1), mac_of(2), mac_of(3)]
    assert {row["status"] for row in table} == {"ok"}
    assert {row["result"]["stdout"] for row in table} == {"hello\n"}
    assert all(row["duration_s"] is not None for row in table)
    assert enqueue_commits(cluster) == ["enqueue 3 tasks (run) for "
                                        f"{mac_of(1)}, {mac_of(2)}, {mac_of(3)}"]

    # The table: a row per node; one failure makes the exit code 1.
    failing = run_cli("enqueue", "--all", "--wait", "60", "run", "--",
                      "sh", "-c", 'test -z "$PICLUSTER_TEST_FAIL"', config=operator)
    assert failing.returncode == 1, failing.stderr
    lines = failing.stdout.splitlines()
    assert any(layout.format_mac(mac_of(3)) in line and "error" in line for line in lines)
    assert sum(" ok " in line for line in lines) == 2
    assert "2 of 3 ok" in failing.stdout

    workers = run_cli("enqueue", "--role", "node", "--wait", "60", "--json", "echo",
                      config=operator)
    assert workers.returncode == 0, workers.stderr
    assert master not in {row["node"] for row in json.loads(workers.stdout)}
    assert len(json.loads(workers.stdout)) == 2
    chief = run_cli("enqueue", "--role", "master", "--json", "echo", config=operator)
    assert [row["node"] for row in json.loads(chief.stdout)] == [master]
    named = run_cli("enqueue", mac_of(1), mac_of(2), "--wait", "60", "--json", "echo",
                    config=operator)
    assert [row["node"] for row in json.loads(named.stdout)] == [mac_of(1), mac_of(2)]


def test_nodes_that_do_not_answer_in_time_exit_3(cluster: Cluster) -> None:
    done = run_cli("enqueue", mac_of(1), mac_of(2), "--wait", "1", "echo",
                   config=cluster.operator_config())
    assert done.returncode == 3
    assert done.stdout.count("pending") == 2 and "0 of 2 ok" in done.stdout
    both = run_cli("enqueue", "--all", mac_of(1), "echo", config=cluster.operator_config())
    assert both.returncode == 2 and "one of them" in both.stderr
    nobody = run_cli("enqueue", "--all", "echo", config=cluster.operator_config())
    assert nobody.returncode == 2 and "no registered node" in nobody.stderr


@pytest.mark.lab
def test_a_broadcast_to_every_lab_node_returns_a_row_per_node(lab: Lab) -> None:
    done = run_cli("enqueue", "--all", "--wait", "120", "--json", "run", "--", "uname", "-n",
                   config=lab.operator_config)
    assert done.returncode == 0, done.stderr
    table = json.loads(done.stdout)
    assert sorted(row["node"] for row in table) == sorted(s.mac for s in lab.status())
    assert {row["status"] for row in table} == {"ok"}
