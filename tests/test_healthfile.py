"""Health in the repository: what the master writes (a commit per change of state or
membership, a refresh an hour at most), and what `status` shows on any node."""

from __future__ import annotations

import datetime as dt
import json

import pytest
from helpers import Cluster, ip_of, mac_of, run_cli

from picluster import ansible, layout
from picluster.gitstore import Put
from picluster.healthfile import HealthFile, NodeHealth, read_health
from picluster.identity import NodeIdentity
from picluster.master import Master
from picluster.master import health as health_module
from picluster.master.record import REFRESH
from picluster.registry import register
from picluster.settings import Settings

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAbc"
M, A, B = mac_of(1), mac_of(2), mac_of(3)


class NoDaemons:
    def ensure(self, *, is_master: bool, own_ip: str) -> None:
        pass

    def stop(self) -> None:
        pass


class Clocks:
    """The master's monotonic clock and its wall clock, moved together by the test."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def monotonic(self) -> float:
        return self.seconds

    def wall(self) -> dt.datetime:
        return dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC) + dt.timedelta(
            seconds=self.seconds)


@pytest.fixture
def clocks() -> Clocks:
    return Clocks()


@pytest.fixture
def master(cluster: Cluster, clocks: Clocks, monkeypatch: pytest.MonkeyPatch) -> Master:
    settings = Settings.load(cluster.node_config(1, ssh_key=cluster.operator_key,
                                                 prune_after=3))
    repo = cluster.operator_repo()
    for number in (1, 2, 3):
        register(repo, NodeIdentity(mac_of(number), ip_of(number)),
                 {"cores": 1, "host_key": KEY, "hostname": f"pi-{number}"},
                 key=cluster.operator_key)
    repo.sync()
    made = Master(settings, repo, lambda: NodeIdentity(M, ip_of(1)), NoDaemons())  # type: ignore[arg-type]
    monkeypatch.setattr(made.record, "_clock", clocks.monotonic)
    monkeypatch.setattr(made.record, "_wall", clocks.wall)
    monkeypatch.setattr(health_module, "is_local", lambda ip: True)
    made.render()
    return made


def knock(master: Master, monkeypatch: pytest.MonkeyPatch, *answering: str) -> None:
    monkeypatch.setattr(ansible, "answering", lambda hosts, timeout: set(answering) & set(hosts))
    master.reach()


def health_commits(master: Master) -> int:
    return len(master.repo.log(layout.HEALTH, limit=100))


def record(master: Master) -> HealthFile:
    found, problem = read_health(master.repo.sync())
    assert problem is None and found is not None
    return found


def test_one_commit_per_change_of_state_and_none_per_check(
        master: Master, clocks: Clocks, monkeypatch: pytest.MonkeyPatch) -> None:
    knock(master, monkeypatch, ip_of(2), ip_of(3))
    assert health_commits(master) == 1
    first = record(master)
    assert first.master == M and first.written_at == "2026-11-25T12:00:00Z"
    assert first.nodes[A] == NodeHealth("answering", 0, "2026-11-25T12:00:00Z")
    assert first.nodes[M].state == "answering"
    for _ in range(5):  # nothing changes: no commit
        clocks.seconds += 60
        knock(master, monkeypatch, ip_of(2), ip_of(3))
    assert health_commits(master) == 1

    clocks.seconds += 60  # B stops answering: one commit
    knock(master, monkeypatch, ip_of(2))
    assert health_commits(master) == 2
    missing = record(master)
    assert missing.nodes[B] == NodeHealth("missing", 1, "2026-11-25T12:05:00Z")
    assert missing.seen_before_written(B) == 60.0
    clocks.seconds += 60  # missing still (a second miss, below prune_after): no commit
    knock(master, monkeypatch, ip_of(2))
    assert health_commits(master) == 2
    clocks.seconds += 60  # back: one commit
    knock(master, monkeypatch, ip_of(2), ip_of(3))
    assert health_commits(master) == 3
    assert record(master).nodes[B] == NodeHealth("answering", 0, "2026-11-25T12:08:00Z")

    clocks.seconds += REFRESH - 1  # quiet for almost an hour: nothing
    knock(master, monkeypatch, ip_of(2), ip_of(3))
    assert health_commits(master) == 3
    clocks.seconds += 1  # an hour: the refresh, with the times of now
    knock(master, monkeypatch, ip_of(2), ip_of(3))
    assert health_commits(master) == 4
    assert record(master).nodes[A].last_seen == "2026-11-25T13:08:00Z"


def test_a_prune_is_a_change_of_membership(master: Master,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    knock(master, monkeypatch, ip_of(2), ip_of(3))
    for _ in range(3):
        knock(master, monkeypatch, ip_of(2))
    assert set(record(master).nodes) == {M, A}
    # missing (1 commit), then pruned (1 commit): the misses between are not commits.
    assert health_commits(master) == 3


def test_a_new_master_rewrites_a_record_its_predecessor_wrote(
        master: Master, cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    old = HealthFile(A, "2026-11-25T11:00:00Z", {A: NodeHealth("answering", 0, None)})
    cluster.operator_repo().transact([Put(layout.HEALTH, old.text())], "as an old master")
    master.repo.sync()
    knock(master, monkeypatch, ip_of(2), ip_of(3))
    assert record(master).master == M


def test_status_on_a_worker_shows_every_node_s_health_and_the_master(
        master: Master, cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> None:
    knock(master, monkeypatch, ip_of(2), ip_of(3))
    knock(master, monkeypatch, ip_of(2))
    worker = cluster.node_config(2, ssh_key=cluster.operator_key)
    done = run_cli("status", "--json", config=worker)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["master"] == M and shown["successors"] == [A, B]
    assert shown["health"] == {"written_by": M, "written_at_master_clock": "2026-11-25T12:00:00Z"}
    nodes = {node["mac"]: node for node in shown["nodes"]}
    assert nodes[B]["state"] == "missing" and nodes[B]["missed"] == 1
    assert nodes[A] | {"state": "answering", "missed": 0,
                       "last_seen_master_clock": "2026-11-25T12:00:00Z",
                       "seen_before_written_s": 0.0} == nodes[A]
    table = run_cli("status", config=worker)
    assert "health: as master b8:27:eb:00:00:01 recorded it at 2026-11-25T12:00:00Z" \
        in table.stdout


@pytest.mark.parametrize("text", ["[", "master: 1\n", "master: b827eb000001\nwritten_at: x\n",
                                  "master: b827eb000001\nwritten_at: '2026-01-01T00:00:00Z'\n"
                                  "nodes: {b827eb000002: {state: asleep, missed: 0, "
                                  "last_seen: null}}\n"])
def test_a_damaged_record_is_a_problem_not_a_crash(cluster: Cluster, text: str) -> None:
    cluster.operator_repo().transact([Put(layout.HEALTH, text)], "damage")
    found, problem = read_health(cluster.snapshot())
    assert found is None and problem is not None and problem.startswith(layout.HEALTH)
    done = run_cli("status", "--json", config=cluster.operator_config())
    assert done.returncode == 0 and problem in json.loads(done.stdout)["problems"]
