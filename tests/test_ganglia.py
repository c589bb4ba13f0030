"""Real gmond and gmetad, supervised by the agent's Daemons, on loopback."""

import json
import re
import shutil
import socket
import time
from pathlib import Path

import pytest
from helpers import process_alive, wait_until

from picluster import ganglia
from picluster.ganglia import GangliaConfig
from picluster.settings import Settings

pytestmark = pytest.mark.skipif(not (shutil.which("gmond") and shutil.which("gmetad")),
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


def test_no_daemon_runs_for_an_address_that_is_not_this_hosts(tmp_path: Path) -> None:
    settings = Settings.parse(f"repo = /x\nhome = {tmp_path}\n")
    config = GangliaConfig("test", "198.18.0.3", gmond_port=free_port())
    ganglia.apply(settings, config, own_ip="198.18.0.3", hostname="pi-test", is_master=True)
    daemons = ganglia.Daemons(settings)
    daemons.ensure(is_master=True, own_ip="198.18.0.3")  # pinned in a config, not ours
    assert not (settings.run_dir / "gmond.pid").exists()
    daemons.stop()


def test_without_ganglia_installed_nothing_breaks(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings.parse(f"repo = /x\nhome = {tmp_path}\n")
    config = GangliaConfig("test", "127.0.0.1", gmond_port=free_port())
    ganglia.apply(settings, config, own_ip="127.0.0.1", hostname="pi-test", is_master=True)
    monkeypatch.setenv("PATH", str(tmp_path))  # no gmond, no gmetad
    daemons = ganglia.Daemons(settings)
    daemons.ensure(is_master=True, own_ip="127.0.0.1")
    daemons.ensure(is_master=True, own_ip="127.0.0.1")
    daemons.stop()
    daemons.ensure(is_master=True, own_ip="127.0.0.1")  # stopped: nothing starts again
