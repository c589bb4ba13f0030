"""The master's jobs against a real local repository; Ansible replaced by a script."""

import time
from pathlib import Path
from typing import NoReturn

import pytest
from helpers import Cluster, gmetad_hosts, ip_of, mac_of, master_of, status_of, wait_until

from picluster import ansible, layout
from picluster.identity import NodeIdentity
from picluster.lab import Lab
from picluster.master import Master
from picluster.master import health as master_module
from picluster.registry import read_membership, register
from picluster.settings import Settings

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAbc"


class NoDaemons:
    def ensure(self, *, is_master: bool, own_ip: str) -> None:
        pass

    def stop(self) -> None:
        pass


@pytest.fixture
def master(cluster: Cluster) -> Master:
    settings = Settings.load(cluster.node_config(1, ssh_key=cluster.operator_key,
                                                 prune_after=2))
    repo = cluster.operator_repo()
    for number in (1, 2, 3):  # signed with the cluster key, as nodes do
        register(repo, NodeIdentity(mac_of(number), ip_of(number)),
                 {"cores": 2, "host_key": KEY, "hostname": f"pi-{number}"},
                 key=cluster.operator_key)
    repo.sync()
    return Master(settings, repo, lambda: NodeIdentity(mac_of(1), ip_of(1)), NoDaemons())


def script_pings(monkeypatch: pytest.MonkeyPatch, rounds: list[set[str]]) -> list[set[str]]:
    """Each ping round answers for the IPs in the next set; records who was pinged."""
    pinged: list[set[str]] = []

    def fake_ping(settings: Settings, hosts: dict, user: str, known: Path) -> ansible.AnsibleRun:
        alive = rounds.pop(0)
        pinged.append(set(hosts))
        return ansible.AnsibleRun(4, "failed", {
            ip: ansible.HostResult(ip, "ok" if ip in alive else "unreachable",
                                   "" if ip in alive else "ssh: connect: Connection timed out")
            for ip in hosts})

    monkeypatch.setattr(ansible, "ping", fake_ping)
    # No packets leave this machine from a unit test: every port "answers".
    monkeypatch.setattr(ansible, "answering", lambda hosts, timeout: set(hosts))
    return pinged


@pytest.fixture(autouse=True)
def pretend_the_master_ip_is_ours(monkeypatch: pytest.MonkeyPatch) -> None:
    # The master pings only from an address of its own; here nothing is sent at all: a
    # test that pings without scripting the answers (script_pings) fails, sending nothing.
    monkeypatch.setattr(master_module, "is_local", lambda ip: True)

    def unscripted(*args: object, **kwargs: object) -> NoReturn:
        raise AssertionError("a unit test pinged for real; script the answers first")

    monkeypatch.setattr(ansible, "ping", unscripted)
    monkeypatch.setattr(ansible, "answering", unscripted)


def members(master: Master) -> set[str]:
    return {m.mac for m in read_membership(master.repo.sync()).members}


def test_a_node_that_misses_prune_after_pings_is_pruned(master: Master,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    pinged = script_pings(monkeypatch, [{ip_of(3)}, {ip_of(3)}])
    first = master.ping()
    assert first.failed.keys() == {ip_of(2)} and not first.pruned
    assert members(master) == {mac_of(1), mac_of(2), mac_of(3)}
    second = master.ping()
    assert second.pruned == [mac_of(2)]
    assert members(master) == {mac_of(1), mac_of(3)}
    assert pinged == [{ip_of(2), ip_of(3)}] * 2  # the master never pings (or prunes) itself
    subject = master.repo.log(layout.ip_path(mac_of(2)), limit=1)[0]["subject"]
    assert subject.startswith(f"prune {mac_of(2)} ({ip_of(2)}): missed 2 pings in a row")
    assert "Connection timed out" in subject
    # Every view follows: the hostfile no longer lists it.
    assert ip_of(2) not in master.settings.hostfile.read_text()


def test_a_pruned_node_leaves_the_local_views_before_its_prune_is_committed(
        master: Master, monkeypatch: pytest.MonkeyPatch) -> None:
    script_pings(monkeypatch, [{ip_of(3)}, {ip_of(3)}])
    master.render()
    assert ip_of(2) in master.settings.hostfile.read_text()
    during_prune: list[str] = []
    transact = master.repo.transact

    def watch(change: object, message: str, **kwargs: object) -> object:
        if message.startswith("prune"):
            during_prune.append(master.settings.hostfile.read_text())
        return transact(change, message, **kwargs)

    monkeypatch.setattr(master.repo, "transact", watch)
    master.ping()
    assert master.ping().pruned == [mac_of(2)]
    assert len(during_prune) == 1 and ip_of(2) not in during_prune[0]
    assert ip_of(3) in during_prune[0]
    assert ip_of(2) not in (master.repo.sync().read("hostfile") or "")  # then committed


def test_a_master_whose_ip_is_not_its_own_pings_nobody(master: Master,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(master_module, "is_local", lambda ip: False)
    assert master.reach().failed == {} and master.ping().failed == {}


def test_a_node_whose_ssh_port_is_silent_is_pruned_without_ansible(
        master: Master, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ansible, "answering", lambda hosts, timeout: {ip_of(3)})
    assert master.reach().failed.keys() == {ip_of(2)}
    assert master.reach().pruned == [mac_of(2)]
    assert members(master) == {mac_of(1), mac_of(3)}


def test_port_knocks_and_ansible_pings_count_apart(master: Master,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # The port answers every time, but Ansible fails (say, a changed host key): the
    # answering knocks do not reset the count of failed Ansible pings.
    script_pings(monkeypatch, [{ip_of(3)}, {ip_of(3)}])
    master.reach()
    master.ping()
    master.reach()
    assert master.ping().pruned == [mac_of(2)]


def test_a_flapping_node_is_not_pruned(master: Master, monkeypatch: pytest.MonkeyPatch) -> None:
    everyone = {ip_of(2), ip_of(3)}
    script_pings(monkeypatch, [{ip_of(3)}, everyone, {ip_of(3)}, everyone])
    reports = [master.ping() for _ in range(4)]
    assert not any(report.pruned for report in reports)
    assert members(master) == {mac_of(1), mac_of(2), mac_of(3)}


def test_a_pruned_node_that_registers_again_is_back(master: Master,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    script_pings(monkeypatch, [set(), set()])
    master.ping()
    master.ping()
    assert members(master) == {mac_of(1)}
    register(master.repo, NodeIdentity(mac_of(2), ip_of(2)), {"host_key": KEY},
             key=master.settings.ssh_key)
    master.repo.sync()
    master.render()
    assert ip_of(2) in master.settings.hostfile.read_text()


def test_render_installs_and_commits_once(master: Master) -> None:
    master.repo.sync()
    master.render()
    snapshot = master.repo.sync()
    assert snapshot.read("hostfile") == master.settings.hostfile.read_text()
    assert "[master]\n198.18.0.3" in (snapshot.read("inventory") or "")
    assert (master.settings.rendered_dir / "gmetad.conf").exists()
    before = master.repo.log(limit=1)[0]["commit"]
    master.repo.sync()
    master.render()  # nothing changed: no commit
    assert master.repo.log(limit=1)[0]["commit"] == before
    # Workers get their Ganglia config from the converge job (tests/test_converge.py).
    assert all(snapshot.listdir(layout.queue_dir(mac_of(n))) == [] for n in (1, 2, 3))


# -- end to end, on the lab (--fast: ping every 2 s, prune after 2, poll every 1 s) -------


def views(lab: Lab) -> dict[str, object]:
    status = {n.name: n for n in lab.status()}
    master = next(n for n in status.values() if n.role == "master")
    settings = lab.node(master.name).settings()
    inventory = settings.inventory_file.read_text() if settings.inventory_file.exists() else ""
    groups = inventory.split("[nodes]")
    return {"master": master.name, "status": status,
            "inventory_master": groups[0].count("mac="),
            "inventory_nodes": groups[1].split("[all:vars]")[0].count("mac=")
            if len(groups) > 1 else 0,
            "hostfile": settings.hostfile.read_text() if settings.hostfile.exists() else "",
            "gmetad": gmetad_hosts(lab, master.name)}


@pytest.mark.lab
def test_views_mpirun_and_ganglia_span_the_cluster(lab: Lab) -> None:
    names = {n.name for n in lab.nodes}
    wait_until(lambda: (v := views(lab))["gmetad"] == names and v["inventory_nodes"] == 3,
               90, "gmetad, the inventory and the hostfile to list every node")
    seen = views(lab)
    assert seen["inventory_master"] == 1 and seen["inventory_nodes"] == 3
    slots = sum(int(line.split("slots=")[1]) for line in str(seen["hostfile"]).splitlines()
                if "slots=" in line)
    done = lab.mpirun(["-np", str(slots), "hostname"], capture_output=True, text=True,
                      timeout=120)
    assert done.returncode == 0, done.stderr
    assert set(done.stdout.split()) == names


@pytest.mark.lab
def test_a_dead_worker_leaves_every_view_and_comes_back(lab: Lab) -> None:
    wait_until(lambda: views(lab)["gmetad"] == {n.name for n in lab.nodes}, 90,
               "a settled cluster")
    master = master_of(lab).name
    victim = next(n for n in lab.nodes if n.name != master)
    settings = victim.settings()
    bound = settings.ping_interval * settings.prune_after + settings.poll_interval
    lab.kill(victim.name)
    killed = time.monotonic()
    try:
        wait_until(lambda: not (s := status_of(lab, victim.name)).registered
                   and not s.in_hostfile, bound + 3, "the dead worker to be pruned")
        elapsed = time.monotonic() - killed
        seen = views(lab)
        assert victim.ip not in str(seen["hostfile"]) and seen["inventory_nodes"] == 2
        wait_until(lambda: victim.name not in views(lab)["gmetad"], 20,
                   "gmetad to drop the dead worker")
        done = lab.mpirun(["hostname"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert set(done.stdout.split()) == {n.name for n in lab.nodes} - {victim.name}
        print(f"pruned {elapsed:.1f} s after the kill (bound {bound:.0f} s)")
    finally:
        lab.revive(victim.name)
    wait_until(lambda: (v := views(lab))["status"][victim.name].in_hostfile
               and victim.name in v["gmetad"], 90, "the revived worker to be back everywhere")


@pytest.mark.lab
def test_a_node_down_for_less_than_prune_after_pings_stays(lab: Lab) -> None:
    master = master_of(lab).name
    victim = next(n for n in lab.nodes if n.name != master)
    settings = victim.settings()
    # Cut its cable for about one ping, then plug it back (its processes live on).
    lab.unplug(victim.name)
    try:
        time.sleep(settings.ping_interval * 0.9)
    finally:
        lab.plug(victim.name)
    time.sleep(settings.ping_interval * settings.prune_after + settings.poll_interval + 2)
    assert status_of(lab, victim.name).registered
