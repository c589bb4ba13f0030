"""Wake-ups: the datagram, where it may go, the listener, who sends one, and agents woken
by them (real processes).

Every node address here is on loopback (127.77.x.y): every datagram these tests cause
stays on this machine.  Agents are workers (`master` names a MAC with no agent), so no
agent with a local address starts Ganglia here.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import itertools
import os
import random
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
from helpers import Cluster, mac_of, wait_until

from picluster import layout, wakeup
from picluster.gitstore import ClusterRepo, Put
from picluster.identity import NodeIdentity
from picluster.lab import Lab
from picluster.node import Agent
from picluster.provision import CONFIG_NAME, KEY_NAME, boot_config
from picluster.queue import enqueue, make_task, wait_for
from picluster.registry import ClusterVars, read_cluster_vars, register
from picluster.settings import Settings

NODE, MASTER = mac_of(1), mac_of(99)


def loopback(number: int) -> str:
    return f"127.77.0.{number}"


def free_port(ip: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((ip, 0))
        return int(sock.getsockname()[1])


def listening(ip: str) -> socket.socket:
    """A UDP socket bound at `ip` on a free port, as a node's listener would be."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((ip, 0))
    sock.settimeout(5)
    return sock


def received(sock: socket.socket, wait: float = 0.5) -> list[bytes]:
    """Every datagram waiting on `sock`, after `wait` seconds for stragglers."""
    time.sleep(wait)
    sock.setblocking(False)
    found = []
    try:
        while True:
            found.append(sock.recv(65536))
    except BlockingIOError:
        return found


def seed(cluster: Cluster, port: int, **ips: str) -> ClusterRepo:
    """The cluster's wake-up port, `master` held by MASTER, and `ips` (mac -> IP)
    registered; the operator's repository."""
    repo = cluster.operator_repo()
    repo.transact([Put(layout.CLUSTER_VARS, f"wakeup_port: {port}\n"),
                   Put(layout.MASTER, f"{MASTER}\n"),
                   *(Put(layout.ip_path(mac), f"{ip}\n") for mac, ip in ips.items())], "seed")
    return repo


# -- where a wake-up may go ---------------------------------------------------------------

ROUTES = [(ipaddress.IPv4Network("0.0.0.0/0"), False),  # default, via a gateway
          (ipaddress.IPv4Network("192.0.2.0/24"), True),  # the LAN
          (ipaddress.IPv4Network("198.51.100.0/24"), False),  # behind a router
          (ipaddress.IPv4Network("198.19.0.0/16"), True),
          (ipaddress.IPv4Network("198.19.8.0/24"), False)]  # more specific, via a gateway


@pytest.mark.parametrize(("ip", "allowed"), [
    ("192.0.2.17", True), ("198.19.1.1", True),
    ("198.51.100.7", False), ("203.0.113.5", False), ("198.19.8.1", False),
    ("192.0.2.0", False), ("192.0.2.255", False),  # a network's own and broadcast address
    ("224.0.0.1", False), ("255.255.255.255", False), ("0.0.0.0", False),
    ("not an ip", False), ("127.77.0.5", True)])  # loopback: this host
def test_a_wakeup_goes_only_to_this_host_or_its_own_networks(ip: str, allowed: bool) -> None:
    assert wakeup.reachable(ip, ROUTES) is allowed


def test_the_kernel_s_route_table_is_read_as_it_is_printed() -> None:
    table = ("Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
             "eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
             "eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n"
             "eth1\t000012C6\t00000000\t0001\t0\t0\t0\t0000FEFF\t0\t0\t0\n"
             "eth1\t0000A8C0\t00000000\t0201\t0\t0\t0\t0000FFFF\t0\t0\t0\n"  # reject
             "eth2\tnonsense\n")
    assert wakeup.parse_routes(table) == [
        (ipaddress.IPv4Network("0.0.0.0/0"), False),
        (ipaddress.IPv4Network("192.0.2.0/24"), True),
        (ipaddress.IPv4Network("198.18.0.0/15"), True)]


def test_from_this_machine_the_benchmark_range_is_never_a_target() -> None:
    # The lab's addresses live in its namespaces only; registered ones that tests pin must
    # never be sent to from here.
    assert not wakeup.reachable("198.18.0.11")
    assert not wakeup.reachable("198.19.255.1")
    assert wakeup.reachable(loopback(3))


def test_the_datagram_names_its_node_only() -> None:
    assert wakeup.datagram("B8:27:EB:00:00:01") == b"picluster-wake/1 b827eb000001"
    assert wakeup.datagram(NODE) != wakeup.datagram(mac_of(2))


# -- cluster.yml ----------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "port", "problem"), [
    ("", 8650, None), ("wakeup_port: 9000\n", 9000, None), ("wakeup_port: 0\n", 0, None),
    ("wakeup_port: 70000\n", 8650, "'wakeup_port' must be between 0 and 65535, not 70000"),
    ("wakeup_port: -1\n", 8650, "must be between 0 and 65535"),
    ("wakeup_port: 'x'\n", 8650, "'wakeup_port' should be a int"),
    ("wakeup_port: true\n", 8650, "'wakeup_port' should be a int")])
def test_the_port_comes_from_cluster_yml(cluster: Cluster, text: str, port: int,
                                         problem: str | None) -> None:
    repo = cluster.operator_repo()
    repo.transact([Put(layout.CLUSTER_VARS, text)], "port")
    found = read_cluster_vars(repo.sync())
    assert found.wakeup_port == port
    if problem:
        assert len(found.problems) == 1 and problem in found.problems[0]
    else:
        assert found.problems == ()


def test_the_seed_documents_the_port() -> None:
    assert "# wakeup_port: <port>" in layout.seed_files()[layout.CLUSTER_VARS]
    assert wakeup.PORT == ClusterVars().wakeup_port == 8650


# -- sending ----------------------------------------------------------------------------------


def test_enqueue_wakes_each_node_it_addressed_at_its_registered_ip(cluster: Cluster) -> None:
    node = listening(loopback(1))
    port = node.getsockname()[1]
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other.bind((loopback(2), port))
    repo = seed(cluster, port, **{NODE: loopback(1), mac_of(2): loopback(2),
                                  mac_of(3): "198.18.0.5"})  # pinned by a test: never sent
    with node, other:
        enqueue(repo, [make_task(NODE, "echo", {}, "operator"),
                       make_task(NODE, "echo", {}, "operator"),
                       make_task(mac_of(3), "echo", {}, "operator")], cluster.operator_key)
        assert received(node) == [wakeup.datagram(NODE)]  # one per node, not per task
        assert received(other, 0) == []  # not addressed


def test_sending_never_fails_the_sender(cluster: Cluster,
                                        caplog: pytest.LogCaptureFixture) -> None:
    port = free_port(loopback(1))  # nobody listens: a closed port
    repo = seed(cluster, port, **{NODE: loopback(1), mac_of(2): "not an address",
                                  mac_of(3): "198.18.0.5"})
    snapshot = repo.sync()
    caplog.set_level("DEBUG", logger="picluster.wakeup")
    assert wakeup.send(snapshot, [NODE], port) == 1
    assert wakeup.send(snapshot, [mac_of(2), mac_of(3), mac_of(4), "nonsense"], port) == 0
    # A sender whose address is not this host's sends nothing at all.
    assert wakeup.send(snapshot, [NODE], port, source="198.18.0.9") == 0
    assert wakeup.send(snapshot, [NODE], 0) == 0  # wake-ups off
    lines = [r for r in caplog.records if r.name == "picluster.wakeup"]
    assert len(lines) == 2 and all(r.levelname == "DEBUG" for r in lines)
    assert "no IP registered" in lines[0].getMessage()


def test_a_registration_that_changed_something_wakes_the_master(cluster: Cluster) -> None:
    master = listening(loopback(99))
    repo = seed(cluster, master.getsockname()[1], **{MASTER: loopback(99)})
    me = NodeIdentity(NODE, loopback(1))
    with master:
        assert register(repo, me, {"cores": 2}).commit is not None
        assert received(master) == [wakeup.datagram(MASTER)]
        assert register(repo, me, {"cores": 2}).commit is None
        assert received(master) == []


def test_wait_for_fetches_only_when_main_moved(cluster: Cluster,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    repo = cluster.operator_repo()
    (task,) = enqueue(repo, [make_task(NODE, "echo", {}, "operator")], cluster.operator_key)
    watcher = ClusterRepo(str(cluster.bare), cluster.root / "watcher", writer="watcher")
    syncs = []
    sync = watcher.sync
    monkeypatch.setattr(watcher, "sync", lambda: syncs.append(1) or sync())
    assert watcher.ls_remote() == repo.sync().commit
    assert wait_for(watcher, [task], 1.0, interval=0.05) == {}
    assert len(syncs) == 1  # ~20 looks, all with ls-remote

    def someone_writes() -> None:
        time.sleep(0.3)
        repo.transact([Put("local-vars/noise", "1\n")], "noise")

    writer = threading.Thread(target=someone_writes)
    writer.start()
    wait_for(watcher, [task], 1.5, interval=0.05)
    writer.join()
    assert len(syncs) == 3  # the first look, and once after main moved


# -- the listener -------------------------------------------------------------------------


def test_the_listener_ignores_garbage_and_spaces_its_calls(tmp_path: Path) -> None:
    ip = loopback(1)
    calls: list[float] = []
    listener = wakeup.Listener(ip, free_port(ip), NODE, lambda: calls.append(time.monotonic()),
                               gap=0.2)
    assert listener.start()
    good = wakeup.datagram(NODE)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
            target = (ip, listener.port)
            for junk in (b"", b"x", good + b"!", good[:-1], wakeup.datagram(mac_of(2)),
                         os.urandom(1400), b"\0" * 60000, good.upper()):
                out.sendto(junk, target)
            time.sleep(0.5)
            assert calls == []
            started = time.monotonic()
            for _ in range(200):
                out.sendto(good, target)
            burst = time.monotonic() - started
            time.sleep(0.6)
    finally:
        listener.stop()
    # The first at once, then one for all the rest, a gap later: none is lost.
    assert 2 <= len(calls) <= 2 + int(burst / 0.2)
    assert all(b - a >= 0.2 for a, b in itertools.pairwise(calls))


def test_a_port_taken_leaves_the_node_polling(caplog: pytest.LogCaptureFixture) -> None:
    ip = loopback(1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind((ip, 0))
        assert not wakeup.Listener(ip, taken.getsockname()[1], NODE, lambda: None).start()
    assert "cannot listen for wake-ups" in caplog.text
    assert not wakeup.Listener("198.18.0.9", 8650, NODE, lambda: None).start()


# -- agents -----------------------------------------------------------------------------------


def test_the_master_ignores_wakeups_during_its_grace(cluster: Cluster) -> None:
    start = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
    now = [start]
    agent = Agent(Settings.load(cluster.node_config(1, ip=loopback(1), master_grace="5m")),
                  clock=lambda: now[0])
    renders: list[int] = []
    agent.master.render = lambda: renders.append(1)  # type: ignore[method-assign]
    agent.repo.sync()
    (task,) = enqueue(cluster.operator_repo(), [make_task(NODE, "echo", {}, "operator")],
                      cluster.operator_key)  # the remote moved
    agent.is_master = True
    agent._woken()
    assert renders == [] and agent.huey.pending_count() == 0
    now[0] = start + dt.timedelta(minutes=5)
    agent._woken()
    assert renders == [1] and [t.id for t in agent.huey.pending()] == [task.id]
    agent._woken()  # nothing new: nothing done
    assert renders == [1]


def start_worker(cluster: Cluster, number: int, port: int, **extra: object
                 ) -> tuple[subprocess.Popen[bytes], Path]:
    """A worker agent at loopback(number), registered before this returns; (agent, log)."""
    config = cluster.node_config(number, ip=loopback(number), **extra)
    agent = cluster.start_agent(config)
    log = config.with_suffix(".log")
    ip = loopback(number)
    wait_until(lambda: f"wake-ups on {ip}:{port}" in log.read_text()
               or "no wake-ups" in log.read_text() or (port == 0 and "registered" in
                                                        log.read_text()),
               60, "the agent to start")
    return agent, log


def test_a_task_runs_at_once_though_the_node_polls_every_30_s(cluster: Cluster) -> None:
    port = free_port(loopback(1))
    repo = seed(cluster, port)
    start_worker(cluster, 1, port, poll_interval=30)
    time.sleep(1)  # the first poll is over
    for _ in range(3):
        started = time.monotonic()
        (task,) = enqueue(repo, [make_task(NODE, "echo", {}, "operator")],
                          cluster.operator_key)
        assert wait_for(repo, [task], 10, interval=0.05)[task.id].status == "ok"
        assert time.monotonic() - started < 3


@pytest.mark.parametrize("dropped", ["port taken", "wake-ups off"])
def test_with_every_wakeup_dropped_tasks_still_run_at_poll_speed(cluster: Cluster,
                                                                 dropped: str) -> None:
    ip = loopback(1)
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # never reads
    blocker.bind((ip, 0))
    port = blocker.getsockname()[1] if dropped == "port taken" else 0
    repo = seed(cluster, port)
    with blocker:
        _, log = start_worker(cluster, 1, port, poll_interval=2)
        tasks = enqueue(repo, [make_task(NODE, "echo", {"n": n}, "operator")
                               for n in range(3)], cluster.operator_key)
        outcomes = wait_for(repo, tasks, 20)
        assert {o.status for o in outcomes.values()} == {"ok"} and len(outcomes) == 3
        assert "listening for wake-ups" not in log.read_text()
        if dropped == "port taken":
            assert "cannot listen for wake-ups" in log.read_text()
            assert received(blocker, 0) == [wakeup.datagram(NODE)]  # sent, and lost


def _cpu_seconds(pid: int) -> float:
    """CPU time of `pid` and of its children that exited (its git processes)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def test_a_flood_of_garbage_and_replays_costs_little_cpu_and_few_fetches(
        cluster: Cluster) -> None:
    ip = loopback(1)
    port = free_port(ip)
    repo = seed(cluster, port)
    agent, log = start_worker(cluster, 1, port, poll_interval=30, log_level="debug")
    time.sleep(2)  # the first poll is over; the next is 28 s away
    good = wakeup.datagram(NODE)
    rng = random.Random(12)
    junk = [os.urandom(rng.choice([0, 1, 8, 29, 30, 31, 200, 1400, 9000, 65000]))
            for _ in range(50)] + [good + b"x", good[:-1], wakeup.datagram(mac_of(2))]
    woken_before = log.read_text().count("woken:")
    cpu_before, started = _cpu_seconds(agent.pid), time.monotonic()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as out:
        for tick in range(1000):  # 10 datagrams every 10 ms: half replays, half garbage
            for number in range(10):
                out.sendto(good if number % 2 else junk[(tick + number) % len(junk)],
                           (ip, port))
            time.sleep(max(0.0, started + (tick + 1) / 100 - time.monotonic()))
    flooded = time.monotonic() - started  # 10 s, unless this machine is very busy
    time.sleep(1)  # the last wake-up is acted on
    cpu = _cpu_seconds(agent.pid) - cpu_before
    elapsed = time.monotonic() - started
    woken = log.read_text().count("woken:") - woken_before
    assert 1 <= woken <= 50 * max(1.0, flooded / 10), (woken, flooded)  # 5 a second
    assert cpu / elapsed < 0.05, (cpu, elapsed)
    # ... and the agent still takes a real wake-up at once.
    started = time.monotonic()
    (task,) = enqueue(repo, [make_task(NODE, "echo", {}, "operator")], cluster.operator_key)
    assert wait_for(repo, [task], 10, interval=0.05)[task.id].status == "ok"
    assert time.monotonic() - started < 3


# -- the lab ----------------------------------------------------------------------------------


def _landed(bare: Path, path: str) -> bool:
    return subprocess.run(["git", "-C", str(bare), "cat-file", "-e", f"main:{path}"],
                          capture_output=True, check=False).returncode == 0


@pytest.mark.lab
def test_a_node_that_joins_is_in_the_hostfile_within_a_second(fresh_lab: Lab,
                                                             tmp_path: Path) -> None:
    fresh_lab.up(2, fast=True, timeout=120)
    master = fresh_lab.node(next(s.name for s in fresh_lab.status() if s.role == "master"))
    # The master polls every 30 s (the default) and logs each wake-up it acts on.
    fresh_lab.kill(master.name)
    config = master.config.read_text()
    assert "poll_interval = 1\n" in config
    master.config.write_text(config.replace("poll_interval = 1\n", "poll_interval = 30\n")
                             + "log_level = debug\n")
    before = len(master.agent_log.read_text())  # the log goes on where it was

    def since_revived() -> str:
        return master.agent_log.read_text()[before:]

    fresh_lab.revive(master.name)
    wait_until(lambda: f"wake-ups on {master.ip}:{wakeup.PORT}" in since_revived(), 60,
               "the master's agent to listen")
    time.sleep(master.settings().master_grace + 2)  # its grace is over, its first poll done

    card = tmp_path / "card"
    card.mkdir()
    (card / CONFIG_NAME).write_text(boot_config(fresh_lab.state().repo, master=False,
                                                hostname="pi-3"))
    shutil.copy(fresh_lab.cluster_key, card / KEY_NAME)
    (card / KEY_NAME).chmod(0o600)
    landed: list[float] = []
    newcomer = fresh_lab._node(3)

    def watch() -> None:  # when pi-3's registration lands on main, within ~20 ms
        while not landed:
            if _landed(fresh_lab.bare_repo, layout.ip_path(newcomer.mac)):
                landed.append(time.time())
            time.sleep(0.02)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    fresh_lab.add_node(card, timeout=60)
    watcher.join(timeout=10)
    hostfile = master.settings().hostfile
    wait_until(lambda: newcomer.ip in hostfile.read_text(), 30, "pi-3 in the hostfile")
    delay = hostfile.stat().st_mtime - landed[0]
    assert delay < 1.0, delay
    assert "woken: fetching now" in since_revived()
