"""Ganglia: the text of its configs, and real gmond and gmetad supervised by the agent's
Daemons, on loopback."""

import json
import logging
import re
import shutil
import socket
import time
from pathlib import Path

import pytest
from helpers import process_alive, wait_until

from picluster import ganglia
from picluster.ganglia import GangliaConfig, gmetad_conf, gmond_conf
from picluster.registry import ClusterVars, Member, Membership
from picluster.settings import Settings

needs_ganglia = pytest.mark.skipif(not (shutil.which("gmond") and shutil.which("gmetad")),
                                   reason="needs ganglia-monitor and gmetad (Debian packages)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def hosts_at(port: int) -> list[str]:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as sock:
            data = b"".join(iter(lambda: sock.recv(65536), b""))
    except OSError:
        return []
    return re.findall(r'<HOST NAME="([^"]+)"', data.decode(errors="replace"))


@needs_ganglia
def test_the_agent_runs_gmond_and_gmetad_with_the_configs_it_applied(tmp_path: Path) -> None:
    settings = Settings.parse(f"repo = /x\nhome = {tmp_path}\n")
    config = GangliaConfig("test", "127.0.0.1", gmond_port=free_port(),
                           gmetad_xml_port=free_port(), metadata_interval=2)
    daemons = ganglia.Daemons(settings)
    try:
        assert ganglia.apply(settings, config, own_ip="127.0.0.1", hostname="pi-test",
                             is_master=True)
        state = json.loads(settings.ganglia_state.read_text())
        assert state["digest"] == ganglia.digest(config) and state["role"] == "master"
        daemons.ensure(is_master=True, own_ip="127.0.0.1")
        wait_until(lambda: hosts_at(config.gmond_port) == ["pi-test"], 30, "gmond's XML")
        wait_until(lambda: hosts_at(config.gmetad_xml_port) == ["pi-test"], 30,
                   "gmetad's XML")
        gmond_pid = int((settings.run_dir / "gmond.pid").read_text())
        daemons.ensure(is_master=True, own_ip="127.0.0.1")  # nothing changed: nothing restarts
        assert int((settings.run_dir / "gmond.pid").read_text()) == gmond_pid
        # A new config (a new member) restarts gmond.
        assert ganglia.apply(settings, GangliaConfig(**{**vars(config),
                                                        "members": ("198.18.0.20",)}),
                             own_ip="127.0.0.1", hostname="pi-test", is_master=True)
        daemons.ensure(is_master=True, own_ip="127.0.0.1")
        wait_until(lambda: not process_alive(gmond_pid), 10, "the old gmond to exit")
        # Demoted: gmetad's config goes, and gmetad with it.
        ganglia.apply(settings, config, own_ip="127.0.0.1", hostname="pi-test",
                      is_master=False)
        daemons.ensure(is_master=False, own_ip="127.0.0.1")
        assert not (settings.rendered_dir / "gmetad.conf").exists()
        time.sleep(0.5)
        assert hosts_at(config.gmetad_xml_port) == []
    finally:
        daemons.stop()
    assert not any(process_alive(int(p.read_text()))
                   for p in settings.run_dir.glob("*.pid") if p.read_text().strip())


@needs_ganglia
def test_no_daemon_runs_for_an_address_that_is_not_this_hosts(tmp_path: Path) -> None:
    settings = Settings.parse(f"repo = /x\nhome = {tmp_path}\n")
    config = GangliaConfig("test", "198.18.0.3", gmond_port=free_port())
    ganglia.apply(settings, config, own_ip="198.18.0.3", hostname="pi-test", is_master=True)
    daemons = ganglia.Daemons(settings)
    daemons.ensure(is_master=True, own_ip="198.18.0.3")  # pinned in a config, not ours
    assert not (settings.run_dir / "gmond.pid").exists()
    daemons.stop()


def test_without_ganglia_installed_each_daemon_is_reported_once_and_none_runs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings.parse(f"repo = /x\nhome = {tmp_path}\n")
    config = GangliaConfig("test", "127.0.0.1", gmond_port=free_port())
    assert ganglia.apply(settings, config, own_ip="127.0.0.1", hostname="pi-test",
                         is_master=True)
    monkeypatch.setenv("PATH", str(tmp_path))  # no gmond, no gmetad
    daemons = ganglia.Daemons(settings)
    with caplog.at_level(logging.WARNING, logger="picluster.ganglia"):
        daemons.ensure(is_master=True, own_ip="127.0.0.1")
        daemons.ensure(is_master=True, own_ip="127.0.0.1")
        daemons.stop()
        daemons.ensure(is_master=True, own_ip="127.0.0.1")  # stopped: nothing starts again
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 2  # one for each daemon, however often it is ensured
    assert warnings[0].startswith("gmond is not installed: no Ganglia here")
    assert warnings[1].startswith("gmetad is not installed: no Ganglia here")
    assert list(settings.run_dir.glob("*.pid")) == []  # nothing started
    # The configs stay in place, ready for when Ganglia is installed.
    assert (settings.rendered_dir / "gmond.conf").exists()
    assert (settings.rendered_dir / "gmetad.conf").exists()
    assert ganglia.applied_digest(settings) == ganglia.digest(config)


# -- the configs' text --------------------------------------------------------------------


def test_gmond_sends_to_the_master_and_only_the_master_listens() -> None:
    config = GangliaConfig("lab", "198.18.0.11", members=("198.18.0.13", "198.18.0.2"))
    master = gmond_conf(config, own_ip="198.18.0.11", hostname="pi-1", is_master=True)
    worker = gmond_conf(config.for_worker(), own_ip="198.18.0.13", hostname="pi-3",
                        is_master=False)
    for text in (master, worker):
        assert "udp_send_channel {\n  host = 198.18.0.11\n  port = 8649" in text
        assert "daemonize = no" in text and "setuid = no" in text
        assert "mcast" not in text
    assert "tcp_accept_channel" in master and 'default = "deny"' in master
    assert [line.split()[4] for line in master.splitlines() if "access {" in line] == \
        ["198.18.0.2", "198.18.0.11", "198.18.0.13"]
    assert "tcp_accept_channel" not in worker and "udp_recv_channel" not in worker
    assert 'override_hostname = "pi-3"' in worker


def test_gmetad_reads_the_master_and_trusts_members(tmp_path: Path) -> None:
    config = GangliaConfig("lab", "198.18.0.11", members=("198.18.0.13",))
    text = gmetad_conf(config, rrd_dir=tmp_path)
    assert 'data_source "lab" 5 198.18.0.11:8649' in text
    assert "trusted_hosts 127.0.0.1 198.18.0.11 198.18.0.13" in text
    assert "xml_port 8651" in text and "setuid off" in text


def test_worker_configs_do_not_depend_on_membership() -> None:
    one = GangliaConfig("lab", "198.18.0.11", members=("198.18.0.13",))
    two = GangliaConfig("lab", "198.18.0.11", members=("198.18.0.14",))
    assert one.for_worker() == two.for_worker()
    assert GangliaConfig.from_args({**vars(one), "extra": 1}) == one


def test_ports_come_from_cluster_yml_and_bad_ones_keep_their_default() -> None:
    settings = Settings.parse("repo = /x\nping_interval = 2\nprune_after = 2\n")
    membership = Membership((Member("b827eb000001", "198.18.0.11"),
                             Member("b827eb000002", "198.18.0.12")), master="b827eb000001")
    chosen = ClusterVars(name="lab", ganglia={"gmond_port": 9649, "gmetad_xml_port": 9651})
    config = ganglia.cluster_config(settings, membership, chosen)
    assert (config.gmond_port, config.gmetad_xml_port) == (9649, 9651)
    assert (config.metadata_interval, config.host_dmax) == (2, 60)
    assert config.members == ("198.18.0.12",) and ganglia.config_problems(chosen) == []
    bad = ClusterVars(ganglia={"gmond_port": 70000, "gmetad_xml_port": "8651"})
    config = ganglia.cluster_config(settings, membership, bad)
    assert (config.gmond_port, config.gmetad_xml_port) == (8649, 8651)
    assert ganglia.config_problems(bad) == [
        "local-vars/cluster.yml: 'gmond_port' must be a port (1-65535), not 70000; using 8649",
        "local-vars/cluster.yml: 'gmetad_xml_port' should be a int, not '8651'; using 8651"]
