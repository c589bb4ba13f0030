"""Hostile and careless input, each case against a real bare repository and, where a node
is involved, a real agent process: the bad input is rejected with a reason, good tasks
pushed around it still run, and no registration, task or outcome is lost."""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from helpers import Cluster, ip_of, mac_of, make_cluster, run_cli, wait_until

from picluster import layout
from picluster.gitstore import Put, Remove
from picluster.identity import IdentityError, NodeIdentity, identify
from picluster.node.ledger import FULL_DISK_ENV
from picluster.queue import enqueue, make_task, wait_for
from picluster.registry import register
from picluster.settings import Settings
from picluster.signing import sign
from picluster.tasks import Task

NODE = mac_of(1)
_EMPTY_TREE = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


@dataclass
class Node:
    """A cluster and its node 1, the master, with its agent running."""

    cluster: Cluster
    config: Path
    agent: subprocess.Popen[bytes]

    @property
    def log(self) -> str:
        return self.config.with_suffix(".log").read_text(errors="replace")


def start_node(cluster: Cluster, number: int = 1, **extra: object) -> Node:
    config = cluster.node_config(number, **extra)
    agent = cluster.start_agent(config)
    wait_until(lambda: cluster.snapshot().read(layout.ip_path(mac_of(number))), 30,
               f"node {number} to register")
    return Node(cluster, config, agent)


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    """One agent shared by the cases that only add files to the repository."""
    cluster = make_cluster(tmp_path_factory.mktemp("hostile"))
    try:
        yield start_node(cluster)
    finally:
        cluster.stop_agents()


def echoes(cluster: Cluster, count: int, mac: str = NODE, **args: object) -> list[Task]:
    return enqueue(cluster.operator_repo(),
                   [make_task(mac, "echo", {"i": i, **args}, "operator") for i in range(count)],
                   cluster.operator_key)


def signed(cluster: Cluster, task: Task) -> Task:
    (signature,) = sign([task.signed_bytes()], cluster.operator_key)
    return replace(task, signature=signature)


def folder(cluster: Cluster, name: str, mac: str = NODE) -> dict[str, str]:
    """File name -> text, in queue/<mac>/<name> ("" for the pending files)."""
    snapshot = cluster.snapshot()
    path = f"{layout.queue_dir(mac)}/{name}".rstrip("/")
    return {file: snapshot.read(f"{path}/{file}") or ""
            for file in snapshot.listdir(path, files=True) if file != ".gitkeep"}


def runs(node: Node, task: Task) -> int:
    """How many times the agent ran `task`."""
    return node.log.count(f"task {task.task} {task.id}: ")


# -- no file stalls a node ----------------------------------------------------------------


def test_no_task_file_stalls_the_node(node: Node) -> None:
    cluster = node.cluster
    before = echoes(cluster, 3, when="before")
    queue = layout.queue_dir(NODE)
    victim = signed(cluster, make_task(NODE, "echo", {"victim": True}, "operator"))
    any_task = json.loads(before[0].to_json())
    cluster.operator_repo().transact([
        Put(f"{queue}/a\\b.json", before[0].to_json()),
        Put(f"{queue}/\udcff.json", "{}"),
        Put(f"{queue}/deep.json", "[" * 10_000 + "]" * 10_000),
        Put(f"{queue}/huge.json", "{" + " " * (1 << 20) + "}"),
        Put(f"{queue}/surrogate.json", json.dumps(
            any_task | {"id": "surrogate", "args": {"s": "\udcff"}})),
        # Junk where the victim's outcome would go, in the same commit as the victim.
        Put(layout.pending_path(NODE, victim.id), victim.to_json()),
        Put(layout.outcome_path(NODE, victim.id, "ok"), "[1, 2]"),
    ], "hostile task files")
    after = echoes(cluster, 3, when="after")
    good = before + after

    outcomes = wait_for(cluster.operator_repo(), good, 30)
    assert {o.status for o in outcomes.values()} == {"ok"} and len(outcomes) == len(good)
    rejected = wait_until(lambda: len(folder(cluster, "rejected")) == 6
                          and folder(cluster, "rejected"), 30, "six rejections")
    reasons = {name: json.loads(text)["error"] for name, text in rejected.items()}
    assert "named <id>.json" in reasons["invalid-a-b.json"]
    assert "named <id>.json" in reasons["invalid-.json"]
    assert "nested deeper than 32 levels" in reasons["deep.json"]
    assert "over the limit of 262144 bytes" in reasons["huge.json"]
    assert "cannot be judged" in reasons["surrogate.json"]
    assert f"already has an outcome ({queue}/done/{victim.id}.json)" in \
        reasons[f"{victim.id}.json"]
    # Every file was answered and acknowledged: nothing waits, nothing was lost.
    assert folder(cluster, "") == {}
    assert set(folder(cluster, "done")) == {f"{t.id}.json" for t in good} | {f"{victim.id}.json"}
    assert folder(cluster, "done")[f"{victim.id}.json"] == "[1, 2]"  # never overwritten
    assert all(runs(node, task) == 1 for task in good) and runs(node, victim) == 0
    assert node.agent.poll() is None and "Traceback" not in node.log


def test_wait_on_a_junk_outcome_says_so(node: Node) -> None:
    """enqueue --wait for a node without an agent, whose outcome file is junk."""
    cluster, nobody = node.cluster, mac_of(9)
    waiting = subprocess.Popen(
        [sys.executable, "-m", "picluster", "--config", str(cluster.operator_config()),
         "enqueue", nobody, "echo", "--wait", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    (name,) = wait_until(lambda: list(folder(cluster, "", nobody)), 30, "the task in git")
    cluster.operator_repo().transact(
        [Put(layout.outcome_path(nobody, name.removesuffix(".json"), "ok"), "[1, 2]")], "junk")
    _, err = waiting.communicate(timeout=30)
    assert waiting.returncode == 1 and "Traceback" not in err, err
    (said,) = [line for line in err.splitlines() if line.startswith("picluster: ")]
    assert "has no readable outcome" in said and "not an outcome" in said


def test_unreadable_registry_files_are_problems_and_the_render_goes_on(node: Node) -> None:
    cluster = node.cluster
    repo = cluster.operator_repo()
    for number in (2, 3, 4):
        register(repo, NodeIdentity(mac_of(number), ip_of(number)), {"cores": 4})
    nested = "a: " + "[" * 5_000 + "]" * 5_000 + "\n"
    repo.transact([
        Put(layout.facts_path(mac_of(2)), nested),
        Put(layout.facts_path(mac_of(3)), "cores: 999999999\n"),
        Put(layout.facts_path(mac_of(4)), "x: " + "y" * 100_000 + "\n"),
        Put(layout.CLUSTER_VARS, "name: " + "{a: " * 100 + "1" + "}" * 100 + "\n"),
        Put(layout.ip_path("ffffffffffff"), "0.0.0.0\n"),
        Put(f"{layout.IP_DIR}/a\\b", "198.18.0.99\n"),
        Put(layout.MASTER, f"{NODE}\n{mac_of(2)}\n"),
    ], "hostile registry files")
    # The master renders on: every member, each unreadable or absurd fact counted as 1.
    hostfile = "".join(f"{ip_of(n)} slots=1\n" for n in (2, 3, 4))
    wait_until(lambda: (cluster.snapshot().read(layout.HOSTFILE) or "").endswith(hostfile),
               30, "the hostfile rendered around the bad files")
    assert f"\n{ip_of(1)} slots=" in (cluster.snapshot().read(layout.HOSTFILE) or "")

    done = run_cli("status", "--json", config=cluster.operator_config())
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    status = json.loads(done.stdout)
    assert status["master"] == NODE and len(status["nodes"]) == 4
    problems = "\n".join(status["problems"])
    assert f"{layout.facts_path(mac_of(2))}: line 1: nested deeper than 32 levels" in problems
    assert f"{layout.facts_path(mac_of(3))}: cores: 999999999 is not a count from 1 to " \
           "1024; counted as 1" in problems
    assert f"{layout.facts_path(mac_of(4))}: is 100004 bytes, over the limit" in problems
    assert f"{layout.CLUSTER_VARS}: line 1: nested deeper than 32 levels; defaults apply" \
        in problems
    assert "ip/ffffffffffff: MAC ff:ff:ff:ff:ff:ff is a broadcast or multicast address" \
        in problems
    assert "master: holds 2 lines" in problems
    assert "ip/a\\b: the file name is not a MAC" in problems

    # `master` naming a MAC that never registered: a problem, and nobody is master.
    repo.transact([Put(layout.MASTER, f"{mac_of(77)}\n")], "an unregistered master")
    done = run_cli("status", config=cluster.operator_config())
    assert done.returncode == 0 and "Traceback" not in done.stderr
    assert f"names {layout.format_mac(mac_of(77))}, which is not registered" in \
        done.stderr.replace("\n", " ")
    repo.transact([Put(layout.MASTER, f"{NODE}\n")], "node 1 is master again")
    assert node.agent.poll() is None


def test_a_forged_intent_is_dropped_and_every_writer_lands(node: Node) -> None:
    """Intents are refs anyone who can push may write; one that is not an intent must
    not make the writer carrying it (every writer, in turn) fail.  (Old stamps: orphans,
    which the next writer carries at once.)"""
    cluster = node.cluster
    work = cluster.root / "forger"
    subprocess.run(["git", "clone", "-q", str(cluster.bare), str(work)], check=True)
    for number, body in enumerate((
            '{"message": "deep", "ops": ' + "[" * 10_000 + "]" * 10_000 + "}",
            '{"message": "int", "ops": [{"op": "put", "path": "x", "content": 1}]}',
            '{"message": "surrogate", "ops": [{"op": "put", "path": "\\ud800", '
            '"content": "1"}]}',
            '{"message": "\\udcff", "ops": [{"op": "put", "path": "y", "content": '
            '"\\ud800"}]}')):
        sha = subprocess.run(["git", "-C", str(work), "-c", "user.name=m", "-c",
                              "user.email=m@m", "commit-tree", _EMPTY_TREE, "-m",
                              f"intent: forged\n\n{body}"],
                             capture_output=True, text=True, check=True).stdout.strip()
        subprocess.run(["git", "-C", str(work), "push", "-q", "origin",
                        f"{sha}:refs/picluster/inbox/{1000 + number:015d}-m-{number}"],
                       check=True)
    tasks = echoes(cluster, 2, after="forged intents")
    outcomes = wait_for(cluster.operator_repo(), tasks, 30)
    assert {o.status for o in outcomes.values()} == {"ok"} and len(outcomes) == 2
    wait_until(lambda: bare_git(cluster, "for-each-ref", "refs/picluster/inbox") == "", 30,
               "the inbox drained")
    assert cluster.snapshot().read("y") == "\\ud800"  # kept as written, escaped
    assert cluster.snapshot().read("x") is None and node.agent.poll() is None


# -- replay-proof -------------------------------------------------------------------------


def test_a_replayed_task_never_runs_twice(node: Node) -> None:
    cluster = node.cluster
    (task,) = echoes(cluster, 1, replay=True)
    outcome = wait_for(cluster.operator_repo(), [task], 30)[task.id]
    done = layout.outcome_path(NODE, task.id, "ok")
    original = cluster.snapshot().read(done)
    # Delete the outcome and put the old signed task file back.
    cluster.operator_repo().transact(
        [Remove(done), Put(layout.pending_path(NODE, task.id), task.to_json())], "replay")
    wait_until(lambda: task.id not in "".join(folder(cluster, "")), 30, "the replay answered")
    assert cluster.snapshot().read(done) == original  # the original outcome, pushed again
    assert outcome.attempts == 1 and runs(node, task) == 1
    assert f"task {task.id} ran here already, but its file is back" in node.log


def test_an_expired_task_is_rejected(node: Node) -> None:
    cluster = node.cluster
    old = make_task(NODE, "echo", {}, "operator")
    stale = [replace(old, id=f"{old.id}-{n}", **fields) for n, fields in enumerate((
        {"created_at": "2020-01-01T00:00:00Z"},  # no `expires`: 7 days after it was made
        {"expires": "2020-01-01T00:00:00Z"}))]
    cluster.operator_repo().transact(
        [Put(layout.pending_path(NODE, t.id), signed(cluster, t).to_json()) for t in stale],
        "old tasks")
    (fresh,) = echoes(cluster, 1, fresh=True)
    outcomes = wait_for(cluster.operator_repo(), [*stale, fresh], 30)
    assert outcomes[fresh.id].status == "ok"
    assert "expired at 2020-01-08T00:00:00+00:00 (7 days after its created_at" in \
        str(outcomes[stale[0].id].error)
    assert "expired at 2020-01-01T00:00:00+00:00 (its `expires`)" in \
        str(outcomes[stale[1].id].error)


def bare_git(cluster: Cluster, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", str(cluster.bare), *args], capture_output=True,
                          text=True, check=True).stdout.strip()


def test_a_rewound_main_is_logged_its_outcomes_pushed_again_its_tasks_never_rerun(
        cluster: Cluster) -> None:
    node = start_node(cluster)
    repo = cluster.operator_repo()
    start = repo.sync().commit
    first = echoes(cluster, 3, batch=1)
    wait_for(repo, first, 30)
    second = echoes(cluster, 2, batch=2)
    wait_for(repo, second, 30)
    everything = first + second
    outcomes = folder(cluster, "done")
    assert len(outcomes) == 5

    # A force-push back to the commit that enqueued the second batch: its two tasks are
    # pending again, and their outcomes are gone.
    enqueued = repo.log(layout.pending_path(NODE, second[0].id))[-1]["commit"]
    bare_git(cluster, "update-ref", "refs/heads/main", enqueued)
    (third,) = echoes(cluster, 1, batch=3)
    wait_for(repo, [third], 30)
    wait_until(lambda: folder(cluster, "") == {}, 30, "the replayed tasks answered")
    assert {k: v for k, v in folder(cluster, "done").items() if k in outcomes} == outcomes
    assert re.search(f"main of {cluster.bare} was REWOUND: its tip [0-9a-f]{{40}} does not "
                     "descend from [0-9a-f]{40}, the tip this clone saw last", node.log)

    # Back to before any task: every outcome is gone, and so are their task files.
    bare_git(cluster, "update-ref", "refs/heads/main", start)
    wait_until(lambda: {f"{t.id}.json" for t in [*everything, third]} <= set(
        folder(cluster, "done")), 30, "the lost outcomes pushed again")
    assert {k: v for k, v in folder(cluster, "done").items() if k in outcomes} == outcomes
    assert "main was rewound and lost 6 outcomes this node had pushed" in node.log
    assert all(runs(node, task) == 1 for task in [*everything, third])
    wait_until(lambda: cluster.snapshot().read(layout.ip_path(NODE)), 30, "re-registered")


# -- a full disk --------------------------------------------------------------------------


def started(node: Node) -> int:
    """How many tasks the agent started and has not pushed yet, as its huey.db says."""
    db = Settings.load(node.config).huey_db
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
        return conn.execute("select count(*) from counter").fetchone()[0]


def test_a_full_disk_strands_no_task(cluster: Cluster, monkeypatch: pytest.MonkeyPatch
                                     ) -> None:
    full = cluster.root / "disk-is-full"
    monkeypatch.setenv(FULL_DISK_ENV, str(full))
    node = start_node(cluster)
    repo = cluster.operator_repo()

    # Full before the tasks arrive: they wait in git, the failure is logged once.
    full.touch()
    batch = echoes(cluster, 30)
    time.sleep(2)  # four polls
    assert len(folder(cluster, "")) == 30 and folder(cluster, "done") == {}
    assert node.log.count("cannot use") == 1 and "database or disk is full" in node.log
    full.unlink()
    outcomes = wait_for(repo, batch, 30)
    assert [o.attempts for o in outcomes.values()] == [1] * 30
    assert "works again" in node.log

    # Full while tasks run: those running finish and their outcomes are pushed from
    # memory; those queued wait; none is lost or runs twice.
    sleepers = enqueue(repo, [make_task(NODE, "sleep", {"seconds": 0.5}, "operator")
                              for _ in range(4)], cluster.operator_key)
    wait_until(lambda: started(node) == 2, 30, "two sleepers started")
    full.touch()
    ran = wait_until(lambda: wait_for(repo, sleepers, 0), 30, "outcomes while the disk is full")
    assert 0 < len(ran) < 4  # two workers: the last two wait for a disk that works
    full.unlink()
    outcomes = wait_for(repo, sleepers, 30)
    assert {o.status for o in outcomes.values()} == {"ok"} and len(outcomes) == 4
    assert all(runs(node, task) == 1 for task in sleepers)
    assert node.log.count("cannot use") == 2 and folder(cluster, "") == {}
    assert node.agent.poll() is None


# -- smaller items ------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "words"), [
    ({"repo": "missing.git"}, "missing.git: no repository there"),
    ({"branch": "nope"}, "it has no branch 'nope'; check `branch`"),
])
def test_a_missing_repository_or_branch_fails_at_once_in_one_line(
        cluster: Cluster, extra: dict[str, str], words: str) -> None:
    extra = {k: cluster.root / v if k == "repo" else v for k, v in extra.items()}
    begun = time.monotonic()
    done = run_cli("register", config=cluster.node_config(6, **extra))
    assert time.monotonic() - begun < 15  # not retried for the 120 s deadline
    assert done.returncode == 1 and "Traceback" not in done.stderr
    said = [line for line in done.stderr.splitlines() if line.startswith("picluster: ")]
    assert len(said) == 1 and words in said[0]


@pytest.mark.parametrize(("mac", "ip", "words"), [
    ("ff:ff:ff:ff:ff:ff", "0.0.0.0", "MAC ff:ff:ff:ff:ff:ff is a broadcast or multicast"),
    ("01:00:5e:00:00:01", ip_of(7), "is a broadcast or multicast address"),
    ("00:00:00:00:00:00", ip_of(7), "is all zeros"),
    (mac_of(7), "0.0.0.0", "IP 0.0.0.0 is an unspecified address"),
    (mac_of(7), "0.1.2.3", "IP 0.1.2.3 is an unspecified address"),
    (mac_of(7), "224.0.0.1", "IP 224.0.0.1 is a multicast address"),
    (mac_of(7), "255.255.255.255", "IP 255.255.255.255 is the broadcast address"),
])
def test_an_address_no_single_node_has_is_refused(cluster: Cluster, mac: str, ip: str,
                                                  words: str) -> None:
    with pytest.raises(IdentityError, match=re.escape(words)):
        identify(Settings.load(cluster.node_config(7, mac=mac, ip=ip)))


def test_a_broadcast_node_never_registers_and_says_why(cluster: Cluster) -> None:
    config = cluster.node_config(7, mac="ff:ff:ff:ff:ff:ff", ip="0.0.0.0")
    agent = cluster.start_agent(config)
    assert agent.wait(timeout=30) == 2
    said = config.with_suffix(".log").read_text()
    assert "this node cannot register: MAC ff:ff:ff:ff:ff:ff is a broadcast" in said
    snapshot = cluster.snapshot()
    assert snapshot.listdir(layout.IP_DIR) == [".gitkeep"] and snapshot.read("master") is None
    # Loopback stays allowed: a node pinned to 127.0.0.1 registers.
    done = run_cli("register", config=cluster.node_config(8, ip="127.0.0.1"))
    assert done.returncode == 0, done.stderr
    assert cluster.snapshot().read(layout.ip_path(mac_of(8))) == "127.0.0.1\n"
