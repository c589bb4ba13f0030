import multiprocessing as mp
import traceback
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier
from pathlib import Path

from helpers import Cluster, ip_of, mac_of, run_cli

from picluster import layout
from picluster.gitstore import ClusterRepo, Put, Remove
from picluster.identity import NodeIdentity
from picluster.registry import read_membership, register, registration_ops

NODES = 32


def _register_when_released(bare: Path, home: Path, number: int, barrier: Barrier,
                            out: Queue) -> None:
    """One racing node (a forked process): clone, wait for the others, register."""
    try:
        repo = ClusterRepo(str(bare), home / "repo", writer=mac_of(number))
        repo.sync()  # the clone exists before the race, as on a booted node
        barrier.wait(timeout=120)
        out.put(register(repo, NodeIdentity(mac_of(number), ip_of(number)),
                         {"cores": 4}).as_dict())
    except BaseException:
        out.put({"mac": mac_of(number), "error": traceback.format_exc()})


def test_32_concurrent_registrations_land_with_exactly_one_master(cluster: Cluster) -> None:
    # Real processes against the real bare repository, forked after picluster is imported
    # and released together by a barrier: the race costs git, not interpreter start-up.
    fork = mp.get_context("fork")
    repo = cluster.operator_repo()
    for round_number in range(3):
        # Each round is a fresh cluster: wipe ip/ and master through the operator.
        if round_number:
            names = [n for n in repo.sync().listdir("ip") if n != ".gitkeep"]
            repo.transact([*(Remove(f"ip/{n}") for n in names), Remove("master")],
                          "reset for the next round")
        before = repo.sync().commit
        barrier, out = fork.Barrier(NODES + 1), fork.Queue()
        racers = [fork.Process(target=_register_when_released,
                               args=(cluster.bare, cluster.root / f"node{n}", n, barrier, out))
                  for n in range(1, NODES + 1)]
        for racer in racers:
            racer.start()
        barrier.wait(timeout=120)
        results = [out.get(timeout=300) for _ in racers]
        for racer in racers:
            racer.join(timeout=60)
        assert [r for r in results if "error" in r] == []
        assert [racer.exitcode for racer in racers] == [0] * NODES

        membership = read_membership(repo.sync())
        assert {m.mac: m.ip for m in membership.members} == \
            {mac_of(n): ip_of(n) for n in range(1, NODES + 1)}
        # The race was real: registrations were pending together, so commits carried
        # several of them and main moved fewer times than there were racers.
        commits = [c["commit"] for c in repo.log(limit=NODES + 1)]
        assert before in commits and commits.index(before) < NODES
        this_round = set(commits[:commits.index(before)])
        # `master` was written once, naming the one racer that believes it is master, and
        # every racer agrees on it.
        writes = [c for c in repo.log(layout.MASTER, limit=NODES + 1)
                  if c["commit"] in this_round]
        assert len(writes) == 1, writes
        assert [r["mac"] for r in results if r["is_master"]] == [membership.master]
        assert {r["master"] for r in results} == {membership.master}


def test_registration_is_a_no_op_when_nothing_changed(cluster: Cluster) -> None:
    repo = cluster.operator_repo()
    node = NodeIdentity(mac_of(1), ip_of(1))
    first = register(repo, node, {"cores": 4})
    assert first.commit and first.is_master
    again = register(repo, node, {"cores": 4})
    assert again.commit is None and again.changed == ()
    moved = register(repo, NodeIdentity(mac_of(1), "198.18.0.99"), {"cores": 4})
    assert moved.changed == (layout.ip_path(mac_of(1)),)


def test_a_designated_master_never_overwrites_the_holder(cluster: Cluster) -> None:
    first = run_cli("register", config=cluster.node_config(1))
    assert first.returncode == 0 and "as master" in first.stdout
    designated = run_cli("register", config=cluster.node_config(2, master="true"))
    assert designated.returncode == 0
    assert f"{mac_of(1)} already holds `master`" in designated.stderr
    assert read_membership(cluster.snapshot()).master == mac_of(1)


def test_malformed_registry_files_are_reported_not_removed(cluster: Cluster) -> None:
    repo = cluster.operator_repo()
    register(repo, NodeIdentity(mac_of(1), ip_of(1)), {"cores": 4, "hostname": "pi-1"})
    repo.transact([Put("ip/b827eb000002", "not-an-ip\n"), Put("ip/README", "hello\n"),
                   Put("master", "zz\n"), Put(layout.facts_path(mac_of(1)), "a: [\n")], "break")
    snap = repo.sync()
    membership = read_membership(snap)
    assert [m.mac for m in membership.members] == [mac_of(1)]
    assert membership.master is None
    text = "\n".join(membership.problems)
    assert "ip/b827eb000002: line 1: 'not-an-ip' is not an IPv4 address" in text
    assert "ip/README: the file name is not a MAC" in text
    assert "master: line 1:" in text and "delete the file" in text
    assert f"{layout.facts_path(mac_of(1))}: line" in text
    # Nothing was deleted on anybody's behalf, and a node does not take over `master`.
    register(repo, NodeIdentity(mac_of(3), ip_of(3)))
    assert repo.sync().read("master") == "zz\n"
    assert snap.read("ip/b827eb000002") == "not-an-ip\n"


def test_registration_ops_carry_facts() -> None:
    ops = registration_ops(NodeIdentity(mac_of(1), ip_of(1)), {"cores": 4})
    assert [op.path for op in ops] == ["ip/b827eb000001", "local-vars/nodes/b827eb000001.yml",
                                       "master"]


def test_a_home_that_cannot_be_created_is_one_line_naming_it(cluster: Cluster) -> None:
    blocker = cluster.root / "not-a-dir"
    blocker.write_text("a file where the home's parent should be\n")
    done = run_cli("register", config=cluster.node_config(1, home=blocker / "home"))
    assert done.returncode == 1
    assert done.stderr.startswith("picluster: ") and str(blocker) in done.stderr
    assert "Traceback" not in done.stderr
