"""The master's convergence (picluster.master.converge and .desired): what each node should
hold, when it is sent, the backoff after a run that did not apply and the debounce of
membership, all with a clock the test controls; against a real local repository, the
nodes played by the test (what they report, the outcomes they push)."""

from __future__ import annotations

import itertools
import json
import shutil
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from helpers import Cluster, ip_of, mac_of, outcomes, run_cli, wait_until
from test_provision import boot_partition

from picluster import apply, cluster_files, ganglia, layout, playbook_task
from picluster.ganglia import GangliaConfig
from picluster.gitstore import ClusterRepo, Put, Remove, Snapshot
from picluster.identity import NodeIdentity
from picluster.lab import Lab
from picluster.master import Master
from picluster.master.desired import (
    GANGLIA,
    HOSTS,
    Attempts,
    Settle,
    Want,
    node_wants,
    playbook_key,
    progress,
)
from picluster.queue import read_signers
from picluster.registry import Membership, read_cluster_vars, read_membership, register
from picluster.settings import Settings
from picluster.tasks import Outcome, Task

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAbc"
MASTER_PLAYBOOKS = ["core", "sudoers", "openmpi", "nfs-server", "ganglia"]
WORKER_PLAYBOOKS = ["core", "sudoers", "openmpi", "nfs-client", "ganglia"]


class Clock:
    """time.monotonic, as the test moves it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# -- the bookkeeping, alone --------------------------------------------------------------------

WANT = Want("playbook/core", "playbook", {}, "d1")


def test_a_want_goes_at_once_then_never_while_its_task_is_on_its_way() -> None:
    attempts = Attempts(first_retry=10)
    assert attempts.due("m", WANT, None, set(), set(), 0)
    attempts.sent("m", WANT, "t1", 0)
    assert not attempts.due("m", WANT, None, {"t1"}, set(), 5)  # pending
    assert not attempts.due("m", WANT, None, {"t1"}, set(), 500)  # still pending
    # Neither pending nor done: the master's snapshot is older than the send.
    attempts.sent("m", WANT, "t2", 600)
    assert not attempts.due("m", WANT, None, set(), set(), 601)
    assert not attempts.due("m", WANT, "d1", set(), {"t2"}, 602)  # applied
    assert not attempts.due("m", WANT, "d1", set(), set(), 10_000)


def test_a_run_that_did_not_apply_goes_again_after_a_doubling_backoff_capped() -> None:
    attempts = Attempts(first_retry=10, longest=3600)
    assert [attempts.retry_after(n) for n in (1, 2, 3, 4, 9, 20)] == \
        [10, 20, 40, 80, 2560, 3600]
    # A node that fails every run at once, polled every second for three hours.
    sends: list[float] = []
    task = ""
    for now in range(3 * 3600):
        if attempts.due("m", WANT, None, set(), {task}, float(now)):
            task = f"t{len(sends)}"
            attempts.sent("m", WANT, task, float(now))
            sends.append(now)
    gaps = [b - a for a, b in itertools.pairwise(sends)]
    assert gaps[:5] == [10, 20, 40, 80, 160]
    assert max(gaps) == 3600 and all(gap <= 3600 for gap in gaps)
    assert len(sends) < 15  # never at every poll


def test_the_backoff_starts_once_the_task_has_run() -> None:
    attempts = Attempts(first_retry=10)
    attempts.sent("m", WANT, "t1", 0)
    for now in range(1, 300):  # a slow run: pending for 300 s
        assert not attempts.due("m", WANT, None, {"t1"}, set(), now)
    assert not attempts.due("m", WANT, None, set(), {"t1"}, 300)  # failed at 300
    assert not attempts.due("m", WANT, None, set(), {"t1"}, 308)
    assert attempts.due("m", WANT, None, set(), {"t1"}, 309)


def test_a_changed_want_goes_at_once_even_while_the_old_one_backs_off() -> None:
    attempts = Attempts(first_retry=100)
    attempts.sent("m", WANT, "t1", 0)
    assert not attempts.due("m", WANT, None, set(), {"t1"}, 5)
    changed = Want(WANT.key, WANT.task, {}, "d2")
    assert attempts.due("m", changed, None, set(), {"t1"}, 5)
    assert attempts.sent("m", changed, "t2", 5) == 1  # a new digest: its first attempt
    # A node that left starts afresh.
    attempts.forget("m")
    assert attempts.due("m", changed, None, {"t2"}, set(), 6)


def test_on_its_way_until_an_outcome_and_attempts_count_one_digest() -> None:
    attempts = Attempts(first_retry=10)
    assert not attempts.on_its_way("m", WANT, set(), set(), 0) and \
        attempts.attempts("m", WANT) == 0
    attempts.sent("m", WANT, "t1", 0)
    assert attempts.on_its_way("m", WANT, set(), set(), 5)  # sent after the snapshot
    assert attempts.on_its_way("m", WANT, {"t1"}, set(), 500)  # pending
    assert not attempts.on_its_way("m", WANT, set(), {"t1"}, 501)  # an outcome: it ran
    assert not attempts.on_its_way("m", WANT, set(), set(), 502)  # lost, long ago
    assert attempts.attempts("m", WANT) == 1
    attempts.sent("m", WANT, "t2", 600)
    assert attempts.attempts("m", WANT) == 2
    # A changed want: its old task is still on its way, and its digest never went.
    changed = Want(WANT.key, WANT.task, {}, "d2")
    assert attempts.on_its_way("m", changed, {"t2"}, set(), 601)
    assert attempts.attempts("m", changed) == 0


def test_settle_takes_a_value_once_it_held_still_or_after_the_longest_wait() -> None:
    settle: Settle[str] = Settle(quiet=2, longest=10)
    assert settle.offer("a", "A", 0) is None
    assert settle.offer("a", "A", 1.9) is None
    assert settle.offer("a", "A", 2) == "A"
    # A change every second: the settled value stays until `longest` passed.
    seen = [settle.offer(key, key.upper(), 3 + n) for n, key in enumerate("bcdefghijklm")]
    assert seen[:9] == ["A"] * 9 and seen[10] != "A"
    assert settle.offer("m", "M", 20) == "M"
    # A flap back to the settled value is no change: a new one starts from scratch.
    assert settle.offer("z", "Z", 100) == "M"
    assert settle.offer("m", "M", 100.5) == "M"
    assert settle.offer("z", "Z", 101) == "M"
    assert settle.offer("z", "Z", 102.9) == "M"
    assert settle.offer("z", "Z", 103) == "Z"


# -- against a repository ------------------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock()


class NoDaemons:
    def ensure(self, *, is_master: bool, own_ip: str) -> None:
        pass

    def stop(self) -> None:
        pass


class Nodes:
    """The test plays the nodes: what each reports, and running what it was sent."""

    def __init__(self, master: Master, clock: Clock, repo: ClusterRepo) -> None:
        # The nodes write through a repository of their own: the master's writes only as
        # master (fenced), and the first registration is what makes node 1 master.
        self.master, self.clock, self.repo = master, clock, repo
        self.facts: dict[int, dict[str, Any]] = {}
        self.ran: list[tuple[int, str]] = []  # (node, key), every task run

    def join(self, number: int, **facts: Any) -> None:
        self.facts[number] = {"cores": 2, "host_key": KEY, "hostname": f"pi-{number}",
                              "playbooks": {}, **facts}
        self.report(number)

    def report(self, number: int) -> None:
        register(self.repo, NodeIdentity(mac_of(number), ip_of(number)),
                 self.facts[number], key=self.master.settings.ssh_key)

    def converge(self, seconds: float = 1.0) -> dict[int, list[str]]:
        """Let `seconds` pass, then one run of the master's job; what it sent, by node."""
        self.clock.now += seconds
        self.master.repo.sync()
        sent = self.master.converge()
        return {number: sent[mac_of(number)] for number in self.facts
                if mac_of(number) in sent}

    def pending(self, number: int, snapshot: Snapshot | None = None) -> list[Task]:
        snapshot = snapshot or self.repo.sync()
        folder = layout.queue_dir(mac_of(number))
        return [Task.from_json(snapshot.read(f"{folder}/{name}") or "", name)
                for name in snapshot.listdir(folder, files=True)]

    def run(self, number: int, fail: tuple[str, ...] = ()) -> list[str]:
        """Run every task pending for node `number` as the node would (the keys in `fail`
        fail); push the outcomes and what it now reports.  Returns the keys run."""
        ops: list[Any] = []
        keys = []
        tasks = self.pending(number)
        if not tasks:
            return []
        for task in tasks:
            key, digest = _key_and_digest(task)
            keys.append(key)
            self.ran.append((number, key))
            if key in fail:
                outcome = Outcome(task.id, task.node, "error", task.task, task.producer,
                                  error="TaskFailed: no")
                if key.startswith("playbook/"):
                    entry = self.facts[number]["playbooks"].setdefault(task.args["playbook"],
                                                                        {})
                    entry["failed"] = {"digest": digest, "task": "Install", "message": "no"}
            else:
                outcome = Outcome(task.id, task.node, "ok", task.task, task.producer)
                _report(self.facts[number], key, task, digest)
            ops += [Put(outcome.path(), outcome.to_json()),
                    Remove(layout.pending_path(task.node, task.id))]
        if ops:
            self.repo.transact(ops, f"outcomes of {number}")
        self.report(number)
        return keys


def _key_and_digest(task: Task) -> tuple[str, str]:
    if task.task == "playbook":
        return playbook_key(task.args["playbook"]), playbook_task.digest(task.args)
    if task.task == "hosts":
        return HOSTS, cluster_files.digest(task.args)
    return GANGLIA, ganglia.digest(GangliaConfig.from_args(task.args).for_worker())


def _report(facts: dict[str, Any], key: str, task: Task, digest: str) -> None:
    if key == HOSTS:
        facts["cluster_files"] = digest
    elif key == GANGLIA:
        facts["ganglia"] = digest
    else:
        facts["playbooks"][task.args["playbook"]] = {"applied": digest, "check": True}


def make_nodes(cluster: Cluster, clock: Clock, count: int = 3, **settings: object) -> Nodes:
    """Nodes 1 to `count` joined, node 1 the master, its settings given `settings`."""
    # The cluster key signs registrations and the master's tasks (as "cluster").
    config = cluster.node_config(1, ssh_key=cluster.operator_key, poll_interval=1, **settings)
    master = Master(Settings.load(config), cluster.operator_repo(),
                    lambda: NodeIdentity(mac_of(1), ip_of(1)), NoDaemons(), clock=clock)
    made = Nodes(master, clock, cluster.operator_repo())
    for number in range(1, count + 1):
        made.join(number)
    return made


@pytest.fixture
def nodes(cluster: Cluster, clock: Clock) -> Nodes:
    return make_nodes(cluster, clock)


def status(nodes: Nodes) -> dict[str, dict[str, Any]]:
    """`progress` of every node, as `picluster status` shows it."""
    snapshot = nodes.master.repo.sync()
    return progress(read_membership(snapshot), read_cluster_vars(snapshot))


def converged(nodes: Nodes) -> None:
    """Run the master's job and every node's tasks until every node is configured."""
    for _ in range(12):
        nodes.converge(2.0)
        for number in nodes.facts:
            nodes.run(number)
        if all(node["configured"] for node in status(nodes).values()):
            return
    raise AssertionError(f"did not converge in 12 rounds: {status(nodes)}")


def test_every_node_gets_the_files_and_its_role_playbooks_once(nodes: Nodes) -> None:
    assert nodes.converge() == {}  # membership must hold still for 2 polls first
    sent = nodes.converge(2.0)
    master = ["hosts", *map(playbook_key, MASTER_PLAYBOOKS)]
    # nfs-client waits until the master exports the share.
    worker = ["hosts", "ganglia", *(playbook_key(p) for p in WORKER_PLAYBOOKS
                                    if p != "nfs-client")]
    assert sent == {1: master, 2: worker, 3: worker}
    # Signed by the cluster key, as "cluster", in role order; the node's queue runs them so.
    tasks = nodes.pending(2)
    assert [t.producer for t in tasks] == ["cluster"] * len(worker)
    assert [_key_and_digest(t)[0] for t in tasks] == worker
    playbook = tasks[-1].args
    assert playbook == {"playbook": "ganglia", "group": "nodes", "master": [], "nodes": [],
                        "user": "root"}
    assert nodes.master.repo.log(limit=1)[0]["subject"].startswith("enqueue 18 tasks")
    assert read_signers(nodes.master.repo.snapshot()).problems == ()
    assert nodes.converge() == {} and nodes.converge(100) == {}  # on their way: never twice
    nodes.run(1)
    assert nodes.converge() == {2: ["playbook/nfs-client"], 3: ["playbook/nfs-client"]}
    for number in (2, 3):
        nodes.run(number)
    assert nodes.converge() == {} and nodes.converge(10_000) == {}
    assert all(node["configured"] for node in status(nodes).values())


def test_what_a_playbook_reads_decides_what_a_change_sends_again(
        nodes: Nodes, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    converged(nodes)
    # A changed variable: ssh_user reaches sudoers (cluster_user) and the exports' owner.
    nodes.master.repo.transact([Put(layout.CLUSTER_VARS, "name: picluster\nssh_user: pi\n")],
                               "ssh_user: pi")
    assert nodes.converge() == {1: ["playbook/sudoers", "playbook/nfs-server"],
                                2: ["playbook/sudoers"], 3: ["playbook/sudoers"]}
    converged(nodes)
    # A changed playbook after an upgrade: only that one goes again, to every node.
    shipped = tmp_path / "playbooks"
    shutil.copytree(apply.playbook_dir(), shipped)
    (shipped / "openmpi.yml").write_text((shipped / "openmpi.yml").read_text() + "# new\n")
    monkeypatch.setattr(apply, "_CANDIDATES", (shipped,))
    assert nodes.converge() == {n: ["playbook/openmpi"] for n in (1, 2, 3)}
    converged(nodes)
    # A new node: everything, for it; the others get the new files and the master's
    # exports list it.
    nodes.join(4)
    assert nodes.converge() == {}
    sent = nodes.converge(2.0)
    assert sent[4][:2] == ["hosts", "ganglia"] and len(sent[4]) == 6
    assert sent[1] == ["hosts", "playbook/nfs-server"] and sent[2] == sent[3] == ["hosts"]


def test_a_failing_playbook_is_retried_with_backoff_and_the_others_go_on(nodes: Nodes) -> None:
    converged(nodes)
    nodes.ran.clear()
    nodes.join(4)
    sends: list[float] = []
    for _ in range(170):  # 170 polls of a second
        sent = nodes.converge()
        if "playbook/nfs-client" in sent.get(4, []):
            sends.append(nodes.clock.now)
        for number in nodes.facts:
            nodes.run(number, fail=("playbook/nfs-client",) if number == 4 else ())
    gaps = [round(b - a) for a, b in itertools.pairwise(sends)]
    # first_retry is 10 polls (poll_interval 1 s), then twice as long each time.
    assert gaps == [10, 20, 40, 80], sends
    new = status(nodes)[mac_of(4)]
    assert new["playbooks"]["nfs-client"] | {"want": ""} == {
        "state": "failed", "applied": None, "want": "", "task": "Install", "message": "no"}
    assert not new["configured"] and new["cluster_files"]["state"] == "current"
    # The others ran what the join changed for them, once: the new files, and the
    # master its exports.
    assert sorted((n, k) for n, k in nodes.ran if n != 4) == [
        (1, "hosts"), (1, "playbook/nfs-server"), (2, "hosts"), (3, "hosts")]


def test_a_storm_of_16_joins_makes_a_few_tasks_not_one_per_join(nodes: Nodes) -> None:
    converged(nodes)
    nodes.ran.clear()
    before = {c["commit"] for c in nodes.master.repo.log(limit=10_000)}
    for number in range(4, 20):  # a join every half second, a poll every second
        nodes.join(number)
        if number % 2:
            nodes.converge()
            for member in nodes.facts:
                nodes.run(member)
    for _ in range(30):
        nodes.converge()
        for member in nodes.facts:
            nodes.run(member)
    hosts = [number for number, key in nodes.ran if key == HOSTS]
    # Each of the 19 nodes gets the cluster files once or twice (one with a storm still
    # going if it outlasts the debounce's longest wait), not once per join.
    assert len(hosts) <= 2 * 19 and set(hosts) == set(range(1, 20))
    exports = [number for number, key in nodes.ran if key == "playbook/nfs-server"]
    assert len(exports) <= 2
    assert all(node["configured"] for node in status(nodes).values())
    enqueued = [c for c in nodes.master.repo.log(limit=10_000)
                if c["commit"] not in before and c["subject"].startswith("enqueue")]
    assert len(enqueued) <= 8, [c["subject"] for c in enqueued]


def configuring(nodes: Nodes) -> set[int]:
    """The nodes with a `playbook` task pending in their queue, in one snapshot."""
    snapshot = nodes.repo.sync()
    return {number for number in nodes.facts
            if any(task.task == "playbook" for task in nodes.pending(number, snapshot))}


def test_at_most_converge_batch_nodes_have_playbooks_on_their_way(
        cluster: Cluster, clock: Clock, caplog: pytest.LogCaptureFixture) -> None:
    nodes = make_nodes(cluster, clock, 20, converge_batch=4)
    caplog.set_level("INFO", logger="picluster.master.converge")
    nodes.converge()
    sent = nodes.converge(2.0)
    # Every node gets the cluster files (and a worker Ganglia's config) at once; the
    # playbooks go to the master first, then to the lowest MACs.
    assert all(keys[0] == HOSTS for keys in sent.values()) and len(sent) == 20
    assert {n for n, keys in sent.items() if any(k.startswith("playbook/") for k in keys)} \
        == configuring(nodes) == {1, 2, 3, 4}
    assert "converge: 4 nodes configuring, 16 waiting (converge_batch 4)" in caplog.messages
    # `picluster status` shows a waiting node's playbooks pending, its files current once
    # it ran them.
    nodes.run(20)
    waiting = status(nodes)[mac_of(20)]
    assert {p["state"] for p in waiting["playbooks"].values()} == {"pending"}
    assert waiting["cluster_files"]["state"] == "current" and not waiting["configured"]
    # Outcomes arrive one node at a time: a turn passes to the next in line, never more
    # than 4 at once, until all 20 are configured.
    turns = [1, 2, 3, 4]
    for _ in range(40):
        busy = configuring(nodes)
        assert len(busy) <= 4
        if busy:
            nodes.run(min(busy))
        sent = nodes.converge()
        turns += [n for n, keys in sorted(sent.items())
                  if n not in turns and any(k.startswith("playbook/") for k in keys)]
        if all(node["configured"] for node in status(nodes).values()):
            break
    assert turns == list(range(1, 21))
    assert all(node["configured"] for node in status(nodes).values())


def test_a_run_that_did_not_apply_holds_no_turn_and_its_retry_waits_behind_first_tries(
        cluster: Cluster, clock: Clock) -> None:
    nodes = make_nodes(cluster, clock, 4, converge_batch=1)

    def playbooks(seconds: float = 1.0) -> list[int]:
        return [n for n, keys in nodes.converge(seconds).items()
                if any(k.startswith("playbook/") for k in keys)]

    nodes.converge()
    assert playbooks(2.0) == [1]
    nodes.run(1)
    assert playbooks() == [2]
    nodes.run(2, fail=("playbook/core",))
    assert playbooks() == [3]  # node 2 backs off without its turn
    assert playbooks(30) == []  # node 2's backoff is over: it waits for node 3
    nodes.run(3)
    assert playbooks() == [4]  # a first try before a retry
    nodes.run(4)
    assert playbooks() == [2]
    assert [t.args["playbook"] for t in nodes.pending(2)] == ["core"]


def test_converge_batch_0_sends_every_node_its_playbooks_at_once(
        cluster: Cluster, clock: Clock) -> None:
    nodes = make_nodes(cluster, clock, 12, converge_batch=0)
    nodes.converge()
    nodes.converge(2.0)
    assert configuring(nodes) == set(range(1, 13))


def test_wants_are_the_role_playbooks_the_files_and_a_workers_ganglia(nodes: Nodes) -> None:
    snapshot = nodes.master.repo.sync()
    membership = read_membership(snapshot)
    cluster = read_cluster_vars(snapshot)
    config = ganglia.cluster_config(nodes.master.settings, membership, cluster)
    wants = node_wants(membership, cluster, config)
    assert [w.key for w in wants[mac_of(1)]] == \
        ["hosts", *map(playbook_key, MASTER_PLAYBOOKS)]
    assert [w.key for w in wants[mac_of(2)]] == \
        ["hosts", "ganglia", *map(playbook_key, WORKER_PLAYBOOKS)]
    # Everyone gets the same files; a playbook's digest is the same for every node of a
    # group, and differs between the groups.
    assert len({w.digest for w in wants.values() for w in w if w.key == HOSTS}) == 1
    core = {mac: next(w for w in ws if w.key == "playbook/core").digest
            for mac, ws in wants.items()}
    assert core[mac_of(2)] == core[mac_of(3)] != core[mac_of(1)]
    exports = next(w for w in wants[mac_of(1)] if w.key == "playbook/nfs-server").args
    assert exports["nodes"] == [ip_of(2), ip_of(3)] and exports["master"] == []
    mount = next(w for w in wants[mac_of(2)] if w.key == "playbook/nfs-client").args
    assert mount["master"] == [ip_of(1)] and mount["nodes"] == []
    # No master yet: nothing is wanted.
    assert node_wants(Membership(membership.members, None), cluster) == {}


def test_status_shows_each_role_playbook_and_the_files_version(
        nodes: Nodes, cluster: Cluster) -> None:
    converged(nodes)
    nodes.join(4)
    nodes.converge()
    nodes.converge(2.0)
    for number in (1, 2, 3):
        nodes.run(number)
    nodes.run(4, fail=("playbook/core",))
    result = run_cli("status", "--json", config=cluster.operator_config())
    assert result.returncode == 0, result.stderr
    status = {node["mac"]: node for node in json.loads(result.stdout)["nodes"]}
    assert status[mac_of(2)]["configured"] is True
    assert status[mac_of(2)]["playbooks"]["core"]["state"] == "applied"
    assert status[mac_of(2)]["playbooks"]["core"]["check"] is True
    assert status[mac_of(2)]["cluster_files"]["state"] == "current"
    assert status[mac_of(2)]["last_seen"]
    new = status[mac_of(4)]
    assert new["configured"] is False
    assert new["playbooks"]["core"] | {"want": ""} == {
        "state": "failed", "applied": None, "want": "", "task": "Install", "message": "no"}
    assert new["playbooks"]["nfs-client"]["state"] == "pending"
    assert new["playbooks"]["openmpi"]["state"] == "applied"
    table = run_cli("status", config=cluster.operator_config())
    assert table.returncode == 0, table.stderr
    assert "core failed at 'Install': no" in table.stdout + table.stderr


# -- end to end, on a --fast lab: no operator command ----------------------------------------


def lab_status(lab: Lab) -> dict[str, dict[str, Any]]:
    """`picluster status --json`, as the lab's operator runs it, by node name."""
    result = run_cli("status", "--json", config=lab.operator_config)
    assert result.returncode == 0, result.stderr
    return {node["hostname"]: node for node in json.loads(result.stdout)["nodes"]}


def block(path: Path) -> list[str]:
    """The lines of picluster's block of a system file."""
    lines = path.read_text().splitlines()
    return lines[lines.index(cluster_files.BEGIN) + 1:lines.index(cluster_files.END)]


@pytest.mark.lab
def test_a_lab_configures_itself_and_a_new_node_too(fresh_lab: Lab, tmp_path: Path) -> None:
    lab = fresh_lab
    lab.up(4, fast=True, timeout=180)

    def configured(names: set[str]) -> dict[str, dict[str, Any]] | None:
        status = lab_status(lab)
        return status if names <= {n for n, s in status.items() if s["configured"]} else None

    status = wait_until(lambda: configured({n.name for n in lab.nodes}), 900,
                        "every node to apply its role's playbooks")
    assert isinstance(status, dict)
    for node in status.values():
        role = "master" if node["role"] == "master" else "nodes"
        assert list(node["playbooks"]) == list(playbook_task.ROLES[role])
        # A netns node cannot change its own system: applied in check mode, and said so.
        assert all(p["state"] == "applied" and p["check"] for p in node["playbooks"].values())
    # Each node ran them itself, as `playbook` tasks the master signed; no operator did.
    worker = next(n for n in lab.nodes if status[n.name]["role"] == "node")
    runs = outcomes(lab, worker, "playbook")
    assert {o.result["playbook"] for o in runs} == set(playbook_task.ROLES["nodes"])
    assert all(o.status == "ok" and o.producer == "cluster" for o in runs)
    assert all(o.result["mode"] == "check" and "cannot change its own system"
               in o.result["note"] for o in runs)
    assert all(o.result["stats"]["failed"] == 0 for o in runs)

    # A fifth Pi, from a card prepare-boot wrote.  Its package index lacks nfs-common (its
    # own mount namespace hides the lists), as a mirror that lost a package would.
    card = boot_partition(tmp_path)
    done = run_cli("prepare-boot", str(card), "--repo", lab.state().repo, "--key",
                   str(lab.cluster_key), "--hostname", "pi-5")
    assert done.returncode == 0, done.stderr
    new = lab.add_node(card, timeout=120)
    empty = new.dir / "no-lists"
    empty.mkdir()
    hidden = lab.exec(new.name, ["mount", "--bind", str(empty), "/var/lib/apt/lists"],
                      capture_output=True, text=True)
    assert hidden.returncode == 0, hidden.stderr

    def failing() -> dict[str, dict[str, Any]] | None:
        status = lab_status(lab)
        mine = status.get(new.name, {}).get("playbooks", {})
        return status if mine.get("nfs-client", {}).get("state") == "failed" and all(
            p["state"] == "applied" for name, p in mine.items() if name != "nfs-client") \
            else None

    status = wait_until(failing, 600, "pi-5 to apply all but nfs-client, which fails")
    assert isinstance(status, dict)
    failed = status[new.name]["playbooks"]["nfs-client"]
    assert failed["task"] == "Install the NFS client"
    assert failed["message"] == "No package matching 'nfs-common' is available"
    assert not status[new.name]["configured"]
    # The others are unaffected: configured, with the files that list pi-5.
    wait_until(lambda: configured({n.name for n in lab.nodes if n.name != new.name}), 300,
               "the other nodes to take the new cluster files")
    names = sorted(n.name for n in lab.nodes)
    for node in lab.nodes:
        settings = node.settings()
        hostfile = settings.cluster_hostfile.read_text().splitlines()[1:]
        assert sorted(line.split()[0] for line in hostfile) == sorted(n.ip for n in lab.nodes)
        assert sorted(line.split()[1] for line in block(settings.etc_hosts)) == names
        assert len(block(settings.ssh_known_hosts)) == 5
    # The failure is an error outcome that keeps the run's result; it goes again after a
    # backoff (10 polls first), never at every poll.
    wait_until(lambda: len([o for o in outcomes(lab, new, "playbook")
                            if o.status == "error"]) >= 2, 300, "a second try of nfs-client")
    tries = [o for o in outcomes(lab, new, "playbook") if o.status == "error"]
    assert all(o.result["playbook"] == "nfs-client" and o.result["stats"]["failed"] == 1
               and o.result["failed_task"] == "Install the NFS client" for o in tries)
    started = [datetime.fromisoformat(o.started_at or "") for o in tries]
    assert (started[1] - started[0]).total_seconds() >= 10 * new.settings().poll_interval
    # The package is back: the next try applies it.
    shown = lab.exec(new.name, ["umount", "/var/lib/apt/lists"], capture_output=True,
                     text=True)
    assert shown.returncode == 0, shown.stderr
    wait_until(lambda: configured(set(names)), 300, "pi-5 to apply nfs-client once it can")
