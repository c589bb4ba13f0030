import json
import subprocess
import sys

from helpers import Cluster, ip_of, mac_of, run_cli

from picluster import layout
from picluster.gitstore import Put, Remove
from picluster.identity import NodeIdentity
from picluster.registry import read_membership, register, registration_ops


def test_32_concurrent_registrations_land_with_exactly_one_master(cluster: Cluster) -> None:
    configs = [cluster.node_config(n) for n in range(1, 33)]
    masters = []
    for round_number in range(10):
        # Each round is a fresh cluster: wipe ip/ and master through the operator.
        repo = cluster.operator_repo()
        if round_number:
            names = [n for n in repo.sync().listdir("ip") if n != ".gitkeep"]
            repo.transact([*(Remove(f"ip/{n}") for n in names), Remove("master")],
                          "reset for the next round")
        processes = [subprocess.Popen([sys.executable, "-m", "picluster", "--config", str(c),
                                       "register", "--json"], stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True) for c in configs]
        outputs = [p.communicate(timeout=300) for p in processes]
        assert [p.returncode for p in processes] == [0] * 32, outputs
        membership = read_membership(repo.sync())
        assert {m.mac: m.ip for m in membership.members} == \
            {mac_of(n): ip_of(n) for n in range(1, 33)}
        claims = [json.loads(out)["master"] for out, _ in outputs]
        assert membership.master is not None and set(claims) == {membership.master}
        masters.append(membership.master)
    assert len(masters) == 10


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
