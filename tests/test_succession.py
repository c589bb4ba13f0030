"""Takeover and fencing: the watch on a controllable clock, the order of succession, the
compare-and-set that makes exactly one successor master, the fence around a master's
writes; then end to end on the lab (`-m lab`)."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
import threading
import time

import pytest
from helpers import Cluster, gmetad_hosts, ip_of, mac_of, master_of, status_of, wait_until

from picluster import ansible, layout
from picluster.gitstore import ClusterRepo, Put, Snapshot
from picluster.identity import NodeIdentity
from picluster.lab import Lab
from picluster.lab.status import parse_hostfile
from picluster.master import Master, Succession
from picluster.master import health as health_module
from picluster.master.members import Members
from picluster.node import Agent
from picluster.registry import Member, Membership, read_master, register
from picluster.settings import Settings
from picluster.succession import (
    BEACONS,
    NotMaster,
    Takeover,
    Watch,
    as_master,
    decide,
    read_beacons,
    successors,
    takeover_change,
)

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAbc"
M, A, B, C = mac_of(1), mac_of(2), mac_of(3), mac_of(4)  # the master, then by MAC


class Clock:
    """A monotonic clock the test moves."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float = 10.0) -> None:
        self.now += seconds


def membership(master: str = M, macs: tuple[str, ...] = (M, A, B, C)) -> Membership:
    return Membership(tuple(Member(mac, ip_of(int(mac[-6:], 16))) for mac in macs), master)


class Beacons:
    """Scripted beacons: each `check` moves the beacons of the nodes named alive."""

    def __init__(self, watch: Watch, clock: Clock, macs: tuple[str, ...] = (M, A, B, C)) -> None:
        self.watch, self.clock, self.macs = watch, clock, macs
        self.values = dict.fromkeys(macs, 0)

    def check(self, *alive: str) -> None:
        for mac in alive:
            self.values[mac] += 1
        self.clock.tick()
        self.watch.observe({mac: str(n) for mac, n in self.values.items()}, self.macs)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def watch(clock: Clock) -> Watch:
    return Watch(interval=10.0, clock=clock)


# -- the watch and the decision, on a controllable clock ---------------------------------


def test_a_beacon_that_moves_never_misses_and_a_still_one_misses_once_per_check(
        watch: Watch, clock: Clock) -> None:
    beacons = Beacons(watch, clock)
    beacons.check(M, A, B, C)  # first sight: no miss, moved or not
    for _ in range(3):
        beacons.check(A, B, C)
    assert watch.missed(M) == 3 and watch.missed(A) == 0
    beacons.check(M, A, B, C)
    assert watch.missed(M) == 0


def test_checks_back_to_back_count_once(watch: Watch, clock: Clock) -> None:
    # A job catching up runs twice in a moment; on this node's clock that is one check.
    watch.observe({M: "x"}, [M])
    for _ in range(5):
        clock.tick(10.0)
        watch.observe({M: "x"}, [M])
        watch.observe({M: "x"}, [M])
    assert watch.missed(M) == 5


def test_after_a_gap_in_its_own_checks_a_node_counts_afresh(watch: Watch, clock: Clock) -> None:
    # Its watch did not run (it was master, or stalled): old counts say nothing of now.
    watch.observe({M: "x"}, [M])
    clock.tick()
    watch.observe({M: "x"}, [M])
    assert watch.missed(M) == 1
    clock.tick(25.0)
    watch.observe({M: "x"}, [M])
    assert watch.missed(M) == 0


def test_a_node_without_a_beacon_misses_from_first_sight(watch: Watch, clock: Clock) -> None:
    for _ in range(3):
        watch.observe({}, [M])
        clock.tick()
    assert watch.missed(M) == 2
    watch.observe({}, [])  # no longer watched: forgotten
    assert watch.missed(M) == 0


def test_the_first_live_node_by_mac_succeeds_after_prune_after_missed_checks(
        watch: Watch, clock: Clock) -> None:
    beacons = Beacons(watch, clock)
    beacons.check(M, A, B, C)
    beacons.check(A, B, C)
    assert all(decide(membership(), me, watch, 2) is None for me in (A, B, C))
    beacons.check(A, B, C)
    assert decide(membership(), A, watch, 2) == Takeover(M, {M: ip_of(1)})
    assert decide(membership(), B, watch, 2) is None  # A answers: A's turn
    assert decide(membership(), C, watch, 2) is None
    assert decide(membership(), M, watch, 2) is None
    assert successors(membership()) == [A, B, C]


def test_a_flapping_master_is_never_replaced(watch: Watch, clock: Clock) -> None:
    beacons = Beacons(watch, clock)
    beacons.check(M, A, B, C)
    for _ in range(20):  # silent for prune_after - 1 checks, then a beat, again and again
        beacons.check(A, B, C)
        assert all(decide(membership(), me, watch, 2) is None for me in (A, B, C))
        beacons.check(M, A, B, C)
    assert watch.missed(M) == 0


def test_when_the_successor_is_dead_too_the_next_one_takes_over(watch: Watch,
                                                                clock: Clock) -> None:
    beacons = Beacons(watch, clock)
    beacons.check(M, A, B, C)
    beacons.check(B, C)
    assert decide(membership(), B, watch, 2) is None  # A has missed one check only
    beacons.check(B, C)
    assert decide(membership(), B, watch, 2) == Takeover(M, {M: ip_of(1), A: ip_of(2)})
    assert decide(membership(), C, watch, 2) is None
    # A node that is not registered is nobody's successor.
    assert decide(membership(macs=(M, A, C)), B, watch, 2) is None


def test_a_node_that_does_not_see_its_own_beacon_move_judges_nobody(
        watch: Watch, clock: Clock) -> None:
    # Say the server refuses every beacon: all of them stand still, the master's too.
    beacons = Beacons(watch, clock)
    for _ in range(4):
        beacons.check()
    assert all(decide(membership(), me, watch, 2) is None for me in (A, B, C))


def test_no_master_no_takeover(watch: Watch, clock: Clock) -> None:
    beacons = Beacons(watch, clock)
    for _ in range(4):
        beacons.check(A)
    assert decide(membership(master=None), A, watch, 2) is None  # type: ignore[arg-type]


# -- compare-and-set and the fence, against a real repository -------------------------------


def registered(cluster: Cluster, *numbers: int) -> ClusterRepo:
    """Nodes `numbers` registered in order (the first is master); the operator's clone."""
    repo = cluster.operator_repo()
    for number in numbers:
        register(repo, NodeIdentity(mac_of(number), ip_of(number)),
                 {"cores": 1, "host_key": KEY, "hostname": f"pi-{number}"},
                 key=cluster.operator_key)
    repo.sync()
    return repo


def node_repo(cluster: Cluster, number: int) -> ClusterRepo:
    return ClusterRepo(str(cluster.bare), cluster.root / f"clone{number}", writer=mac_of(number))


def git(cluster: Cluster, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cluster.bare), *args], capture_output=True,
                          text=True, check=True).stdout


def test_two_successors_racing_exactly_one_wins(cluster: Cluster) -> None:
    registered(cluster, 1, 2, 3)
    # A and B judged differently (B could not see A's beacon): both try at once.
    attempts = {A: Takeover(M, {M: ip_of(1)}), B: Takeover(M, {M: ip_of(1), A: ip_of(2)})}
    repos = {mac: node_repo(cluster, int(mac[-6:], 16)) for mac in attempts}
    for repo in repos.values():
        repo.sync()
    start = threading.Barrier(2)
    results = {}

    def take(mac: str) -> None:
        start.wait()
        results[mac] = repos[mac].transact(takeover_change(attempts[mac], mac), f"takeover {mac}")

    threads = [threading.Thread(target=take, args=(mac,)) for mac in attempts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [mac for mac, result in results.items() if result.commit]
    assert len(winners) == 1
    tip = cluster.snapshot()
    assert read_master(tip)[0] == winners[0]
    assert git(cluster, "log", "--format=%s", "main", "--", "master").splitlines()[0] \
        == f"takeover {winners[0]}"
    assert len(git(cluster, "log", "--format=%H", "main", "--", "master").split()) == 2
    assert tip.read(layout.ip_path(M)) is None  # the dead master pruned with the takeover


def test_a_takeover_that_finds_master_moved_writes_nothing(cluster: Cluster) -> None:
    operator = registered(cluster, 1, 2)
    operator.transact([Put(layout.MASTER, f"{B}\n")], "operator: hand master to B")
    before = git(cluster, "rev-parse", "main")
    result = node_repo(cluster, 2).transact(takeover_change(Takeover(M, {M: ip_of(1)}), A),
                                            "takeover")
    assert result.commit is None and git(cluster, "rev-parse", "main") == before


def test_a_replaced_master_writes_nothing_even_mid_write(cluster: Cluster) -> None:
    """The fence judges every tip a write would land on: a takeover that lands between a
    master computing its change and pushing it turns the retry into nothing."""
    registered(cluster, 1, 2)
    fenced = node_repo(cluster, 1).guarded(as_master(lambda: M))
    successor = node_repo(cluster, 2)
    tries = []

    def views(tip: Snapshot) -> list[Put]:
        tries.append(tip.commit)
        if len(tries) == 1:  # the takeover lands while this write is in flight
            successor.transact(takeover_change(Takeover(M, {}), A), "takeover")
        return [Put(layout.HOSTFILE, "only a master writes this\n")]

    with pytest.raises(NotMaster, match="no longer holds master"):
        fenced.transact(views, "render")
    assert len(tries) == 1  # the second tip never reached the change
    assert cluster.snapshot().read(layout.HOSTFILE) is None
    # A list of ops (an intent, unguarded) is compare-and-set behind the fence too.
    with pytest.raises(NotMaster):
        fenced.transact([Put(layout.HOSTFILE, "x\n")], "render")


class NoDaemons:
    def ensure(self, *, is_master: bool, own_ip: str) -> None:
        pass

    def stop(self) -> None:
        pass


def test_a_deposed_master_prunes_renders_and_sends_nothing(
        cluster: Cluster, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    operator = registered(cluster, 1, 2, 3)
    settings = Settings.load(cluster.node_config(1, ssh_key=cluster.operator_key, prune_after=1))
    master = Master(settings, node_repo(cluster, 1), lambda: NodeIdentity(M, ip_of(1)),
                    NoDaemons())  # type: ignore[arg-type]
    master.repo.sync()
    master.render()  # as master: views committed, ganglia tasks sent
    assert cluster.snapshot().read(layout.HOSTFILE)
    # Cut off: the others replaced it.  It still believes it is master (its last sync).
    operator.transact([Put(layout.MASTER, f"{A}\n"), Put(layout.HOSTFILE, "by A\n")],
                      "takeover (as by A)")
    monkeypatch.setattr(health_module, "is_local", lambda ip: True)
    monkeypatch.setattr(ansible, "answering", lambda hosts, timeout: set())
    before = git(cluster, "rev-parse", "main")
    report = master.reach()  # every worker silent: it would prune them all
    assert report.pruned == []
    assert f"this node ({M}) no longer holds master ({A} does)" in caplog.text
    master.render()
    assert git(cluster, "rev-parse", "main") == before
    assert {m for m in cluster.snapshot().listdir(layout.IP_DIR) if not m.startswith(".")} \
        == {M, A, B}


# -- beacons and the watch job, end to end on a local repository -----------------------------


def succession(cluster: Cluster, number: int, clock: Clock) -> Succession:
    settings = Settings.load(cluster.node_config(number, prune_after=2, ping_interval=10))
    repo = node_repo(cluster, number)
    return Succession(settings, repo, lambda: NodeIdentity(mac_of(number), ip_of(number)),
                      Members(settings), clock=clock)


def test_the_watch_takes_over_once_from_a_silent_master_and_never_back(
        cluster: Cluster, clock: Clock) -> None:
    registered(cluster, 1, 2, 3)
    nodes = {n: succession(cluster, n, clock) for n in (1, 2, 3)}

    def check(*beating: int) -> dict[int, bool]:
        for n in beating:
            nodes[n].beat()
        clock.tick()
        for n in (2, 3):
            nodes[n]._repo.sync()  # the poll's sync
        return {n: nodes[n].watch() for n in (2, 3)}

    assert check(1, 2, 3) == {2: False, 3: False}
    assert len(read_beacons(nodes[2]._repo)) == 3
    assert check(1, 2, 3) == {2: False, 3: False}
    assert check(2, 3) == {2: False, 3: False}  # the master missed one check
    assert check(2, 3) == {2: True, 3: False}  # two: node 2 takes over, once
    tip = cluster.snapshot()
    assert read_master(tip)[0] == A and tip.read(layout.ip_path(M)) is None
    # The old master comes back and beats again; nobody takes anything over any more.
    for _ in range(5):
        assert check(1, 2, 3) == {2: False, 3: False}
    assert read_master(cluster.snapshot())[0] == A
    assert git(cluster, "log", "--format=%an", "main", "--", "master").split("\n")[0] \
        == f"picluster {A}"


def test_beacons_add_no_objects_after_the_first_round(cluster: Cluster, clock: Clock) -> None:
    registered(cluster, 1)
    node = succession(cluster, 1, clock)
    for _ in range(20):  # more than a whole cycle of values
        node.beat()
    objects = git(cluster, "count-objects", "-v")
    for _ in range(20):
        node.beat()
    assert git(cluster, "count-objects", "-v") == objects
    assert git(cluster, "for-each-ref", "--format=%(refname)", BEACONS).split() \
        == [f"{BEACONS}/{M}"]


def test_a_worker_watches_and_beats_and_a_master_only_beats(cluster: Cluster) -> None:
    start = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
    agent = Agent(Settings.load(cluster.node_config(2, poll_interval=30, ping_interval=60)),
                  clock=lambda: start)
    agent.scheduler.start(paused=True)
    try:
        agent.schedule()
        assert agent.scheduler.get_job("watch").next_run_time == start
        beat = agent.scheduler.get_job("beat")
        assert beat.trigger.interval == dt.timedelta(seconds=30)
        agent.is_master = True
        agent.schedule()
        assert agent.scheduler.get_job("watch") is None
        assert agent.scheduler.get_job("beat") is not None
        agent.is_master = False  # replaced: a worker again, without a restart
        agent.schedule()
        assert agent.scheduler.get_job("watch") is not None
        assert agent.scheduler.get_job("ping") is None
    finally:
        agent.scheduler.shutdown(wait=False)


# -- end to end, on the lab (--fast: ping every 2 s, prune after 2, poll every 1 s) -------


def hostfile_of(lab: Lab, name: str) -> set[str]:
    path = lab.node(name).settings().hostfile
    return parse_hostfile(path.read_text()) if path.exists() else set()


def takeover_bound(lab: Lab) -> float:
    """3 x (ping_interval x prune_after) + a poll: what the issue promises."""
    settings = lab.nodes[0].settings()
    return 3 * settings.ping_interval * settings.prune_after + settings.poll_interval


def main_history(lab: Lab) -> list[tuple[str, str, str | None, list[str]]]:
    """main's commits, oldest first: (sha, author, `master` there, paths changed)."""
    bare = str(lab.bare_repo)

    def out(*args: str) -> str:
        return subprocess.run(["git", "-C", bare, *args], capture_output=True, text=True,
                              check=True).stdout

    history = []
    for line in out("log", "--reverse", "--format=%H %an", "main").splitlines():
        sha, author = line.split(" ", 1)
        master = subprocess.run(["git", "-C", bare, "show", f"{sha}:master"],
                                capture_output=True, text=True, check=False).stdout.strip()
        paths = out("diff-tree", "--root", "--no-commit-id", "-r", "--name-status",
                    sha).splitlines()
        history.append((sha, author.removeprefix("picluster "), master or None, paths))
    return history


def _ganglia_task(lab: Lab, sha: str, path: str) -> bool:
    text = subprocess.run(["git", "-C", str(lab.bare_repo), "show", f"{sha}:{path}"],
                          capture_output=True, text=True, check=False).stdout
    return '"task": "ganglia"' in text


def master_only(lab: Lab, sha: str, paths: list[str]) -> bool:
    """A commit only a master makes: views, health, a prune, a Ganglia config task."""
    for line in paths:
        status, path = line.split("\t", 1)
        if path in (layout.INVENTORY, layout.HOSTFILE, layout.HEALTH):
            return True
        if status == "D" and path.startswith(f"{layout.IP_DIR}/"):
            return True
        if status == "A" and path.startswith(f"{layout.QUEUE_DIR}/") and "/done/" not in path \
                and "/rejected/" not in path and _ganglia_task(lab, sha, path):
            return True
    return False


def check_history(lab: Lab) -> list[tuple[str, str, str | None]]:
    """Every master-only commit of main was made by the master of that commit (the one it
    names, which a takeover commit changes to its author); returns the takeovers."""
    takeovers, wrong, previous = [], [], None
    for sha, author, master, paths in main_history(lab):
        if master != previous and previous is not None:
            takeovers.append((sha, author, previous))
        if master_only(lab, sha, paths) and author != master:
            wrong.append(f"{sha[:10]} by {author} while {master} was master: {paths}")
        previous = master
    assert wrong == []
    return takeovers


@pytest.mark.lab
def test_killing_the_master_of_4_makes_exactly_one_new_master(fresh_lab: Lab) -> None:
    lab = fresh_lab
    lab.up(4, fast=True, timeout=180)
    names = {n.name for n in lab.nodes}
    wait_until(lambda: hostfile_of(lab, master_of(lab).name) == {n.ip for n in lab.nodes},
               90, "a settled cluster")
    old = master_of(lab)
    bound = takeover_bound(lab)
    lab.kill(old.name)
    killed = time.monotonic()
    live = {n.ip for n in lab.nodes if n.name != old.name}
    new = wait_until(lambda: (m := master_of(lab)).name != old.name
                     and hostfile_of(lab, m.name) == live and m, bound + 10,
                     "a new master whose hostfile lists the 3 live nodes")
    elapsed = time.monotonic() - killed
    print(f"new master {new.name} {elapsed:.1f} s after the kill (bound {bound:.0f} s)")
    assert elapsed <= bound
    assert sum(s.role == "master" for s in lab.status()) == 1
    if shutil.which("gmetad"):
        wait_until(lambda: gmetad_hosts(lab, new.name) == names - {old.name}, 60,
                   "gmetad on the new master to list the live nodes")
    done = lab.mpirun(["hostname"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == names - {old.name}

    # The old master comes back as a worker, and writes nothing as master.
    lab.revive(old.name)
    wait_until(lambda: status_of(lab, old.name).in_hostfile, 90,
               "the old master back in the hostfile, as a worker")
    assert master_of(lab).name == new.name
    time.sleep(bound)  # a few ping rounds as a worker
    assert master_of(lab).name == new.name
    takeovers = check_history(lab)
    assert [(author, before) for _, author, before in takeovers] == [(new.mac, old.mac)]
    after = [author for sha, author, _, paths in
             main_history(lab)[[h[0] for h in main_history(lab)].index(takeovers[0][0]):]
             if master_only(lab, sha, paths)]
    assert old.mac not in after
    if shutil.which("gmetad"):  # the old master stopped its gmetad
        wait_until(lambda: not gmetad_hosts(lab, old.name), 30, "no gmetad on the old master")


@pytest.mark.lab
def test_a_master_cut_off_and_back_leaves_one_master_at_every_commit(fresh_lab: Lab) -> None:
    lab = fresh_lab
    lab.up(4, fast=True, timeout=180)
    wait_until(lambda: hostfile_of(lab, master_of(lab).name) == {n.ip for n in lab.nodes},
               90, "a settled cluster")
    old = master_of(lab)
    bound = takeover_bound(lab)
    lab.unplug(old.name)
    try:
        new = wait_until(lambda: (m := master_of(lab)).name != old.name and m, bound + 10,
                         "another node to take master over")
        # Cut off a while longer: it misses every ping and would prune every worker.
        time.sleep(bound)
    finally:
        lab.plug(old.name)
    wait_until(lambda: (s := status_of(lab, old.name)).registered and s.in_hostfile, 120,
               "the old master back as a worker")
    time.sleep(bound)
    assert master_of(lab).name == new.name
    takeovers = check_history(lab)
    assert [(author, before) for _, author, before in takeovers] == [(new.mac, old.mac)]
    # Its agent lived on (no restart) and became a worker.
    assert status_of(lab, old.name).agent
    log = lab.node(old.name).agent_log.read_text()
    print("".join(line for line in log.splitlines(keepends=True)
                  if "master" in line or "role" in line)[-3000:])
    assert "role: node" in log
