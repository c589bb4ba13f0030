import os
import stat
from pathlib import Path

import pytest

from picluster import ansible
from picluster.settings import Settings

# A stand-in for ssh: answers as the host named on its command line would.
_FAKE_SSH = """#!/bin/sh
echo "$@" >> "$(dirname "$0")/calls"
for last; do :; done
for arg; do case "$arg" in 198.18.*) host=$arg;; esac; done
case "$host" in
  198.18.0.2) echo pong;;
  198.18.0.3) echo "Host key verification failed." >&2; exit 255;;
  198.18.0.4) echo "sh: 1: /usr/bin/python3: not found" >&2; exit 127;;
  198.18.0.5) echo "Python 2, say"; exit 0;;
  198.18.0.6) sleep 30;;
esac
"""


@pytest.fixture
def fake_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    ssh = bin_dir / "ssh"
    ssh.write_text(_FAKE_SSH)
    ssh.chmod(ssh.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return bin_dir


def test_the_ping_tells_each_way_a_node_can_fail(tmp_path: Path, fake_ssh: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ansible, "_ANSWER_WITHIN", 0.5)
    settings = Settings.parse(f"repo = /x\nhome = {tmp_path / 'home'}\nping_timeout = 1\n"
                              f"ssh_key = {tmp_path / 'key'}\n")
    known_hosts = tmp_path / "known_hosts"
    hosts = {f"198.18.0.{n}": {"mac": f"b827eb00000{n}"} for n in range(2, 7)}
    run = ansible.ping(settings, hosts, "pi", known_hosts)
    status = {host: (result.status, result.message) for host, result in run.hosts.items()}
    assert status == {
        "198.18.0.2": ("ok", ""),
        "198.18.0.3": ("unreachable", "Host key verification failed."),
        "198.18.0.4": ("failed", "/usr/bin/python3 answered exit 127: "
                                 "sh: 1: /usr/bin/python3: not found"),
        "198.18.0.5": ("failed", "/usr/bin/python3 answered exit 0"),
        "198.18.0.6": ("unreachable", "no answer over ssh in time"),
    }
    assert run.rc == 4 and run.status == "failed" and not run.ok
    assert run.seconds < 5  # all at once, and the silent one given up on
    calls = (fake_ssh / "calls").read_text().splitlines()
    assert len(calls) == len(hosts)
    for option in ("BatchMode=yes", "StrictHostKeyChecking=yes",
                   f"UserKnownHostsFile={known_hosts}", "ControlMaster=auto",
                   f"ControlPath={settings.ssh_dir}/cp/%C", "IdentitiesOnly=yes",
                   f"-i {tmp_path / 'key'}", "-l pi"):
        assert all(option in call for call in calls), option


def test_a_ping_of_live_nodes_succeeds(tmp_path: Path, fake_ssh: Path) -> None:
    settings = Settings.parse(f"repo = /x\nhome = {tmp_path / 'home'}\n")
    run = ansible.ping(settings, {"198.18.0.2": {}}, "root", tmp_path / "known_hosts")
    assert run.ok and run.rc == 0 and run.status == "successful"
    assert ansible.ping(settings, {}, "root", tmp_path / "known_hosts").hosts == {}
