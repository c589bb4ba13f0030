"""The lab: names, addresses and configs (unit tests), and real labs (`-m lab`, root)."""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from helpers import run_cli, status_of
from typer.testing import CliRunner

from picluster.gitstore import ClusterRepo, Remove
from picluster.lab import image, machine
from picluster.lab import lab as lab_module
from picluster.lab.cli import app
from picluster.lab.errors import LabError
from picluster.lab.hosts import (
    FAST_TIMINGS,
    card_settings,
    render_node_config,
    render_sshd_config,
)
from picluster.lab.lab import Lab
from picluster.lab.machine import preflight
from picluster.lab.machines import blank_card, nspawn_argv
from picluster.lab.net import MAX_NODES, lab_dir, lab_prefix, node_ip, node_mac
from picluster.lab.procs import alive
from picluster.lab.status import NodeStatus, parse_hostfile, status_json
from picluster.layout import format_mac, ip_path, normalize_mac
from picluster.settings import Settings

# -- names and addresses ---------------------------------------------------------------


def test_the_lab_directory_comes_from_the_option_then_the_environment(monkeypatch):
    monkeypatch.delenv("PICLUSTER_LAB_DIR", raising=False)
    assert lab_dir() == Path("/tmp/picluster-lab")
    monkeypatch.setenv("PICLUSTER_LAB_DIR", "/tmp/from-env")
    assert lab_dir() == Path("/tmp/from-env")
    assert lab_dir("/tmp/explicit") == Path("/tmp/explicit")


def test_the_prefix_is_a_short_hash_of_the_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    prefix = lab_prefix(tmp_path / "a")
    digest = hashlib.sha256(str((tmp_path / "a").resolve()).encode()).hexdigest()
    assert re.fullmatch(r"pcl[0-9a-f]{6}", prefix) and prefix == f"pcl{digest[:6]}"
    assert lab_prefix("a") == prefix  # the same directory, however it is spelled
    assert lab_prefix(tmp_path / "b") != prefix


def test_every_namespace_and_interface_name_fits_the_kernel(tmp_path):
    lab = Lab(tmp_path)
    biggest = lab._node(MAX_NODES)
    names = [lab.bridge_ns, lab.git_host.netns, lab.git_host.port, biggest.netns, biggest.port]
    assert all(len(name) <= 15 for name in names), names
    assert all(netns.startswith(f"{lab.prefix}-")
               for netns in (lab.bridge_ns, lab.git_host.netns, biggest.netns))


def test_macs_are_pi_macs_unique_in_a_lab_and_stable():
    macs = [node_mac("pcl0a1b2c", index) for index in range(1, MAX_NODES + 1)]
    assert all(normalize_mac(mac) == mac and mac.startswith("b827eb") for mac in macs)
    assert len(set(macs)) == MAX_NODES
    assert node_mac("pcl0a1b2c", 3) == "b827eb0a1b03" == macs[2]
    assert node_mac("pclffee00", 3) != macs[2]  # another lab, other MACs
    with pytest.raises(ValueError):
        node_mac("pcl0a1b2c", 0)


def test_node_addresses_stay_in_the_benchmarking_range():
    assert node_ip(1) == "198.18.0.11"
    assert all(ipaddress.IPv4Address(node_ip(index)) in ipaddress.IPv4Network("198.18.0.0/15")
               for index in (1, MAX_NODES))
    assert ipaddress.IPv4Address(node_ip(MAX_NODES)) < ipaddress.IPv4Address("198.18.0.255")
    with pytest.raises(ValueError):
        node_ip(MAX_NODES + 1)


# -- what the lab writes -----------------------------------------------------------------


def test_a_node_config_is_a_boot_config_the_node_reads(tmp_path):
    node = Lab(tmp_path)._node(2)
    text = render_node_config(node, "ssh://root@198.18.0.2/x.git", master=True,
                              extra=card_settings(True, {}))
    settings = Settings.parse(text, node.config)
    assert settings.repo == "ssh://root@198.18.0.2/x.git"
    assert settings.home == node.home and settings.interface == "eth0"
    assert settings.hostname == "pi-2" and settings.master is True
    assert settings.ssh_key == node.ssh_key
    assert settings.host_key == Path(f"{node.host_key}.pub")
    assert all(getattr(settings, key) == value for key, value in FAST_TIMINGS.items())
    plain = Settings.parse(render_node_config(node, "/x.git", master=False,
                                              extra=card_settings(False, {})))
    assert plain.master is False and plain.poll_interval == Settings(repo="x").poll_interval


def test_lab_up_set_adds_a_key_to_every_card_and_wins_over_fast():
    extra = card_settings(True, {"converge_batch": "2", "poll_interval": "5"})
    assert extra == {**FAST_TIMINGS, "converge_batch": "2", "poll_interval": "5"}
    assert card_settings(False, {"converge_batch": "2"}) == {"converge_batch": "2"}


@pytest.mark.parametrize(("setting", "words"), [
    ("converge_batch=-1", "--set converge_batch: '-1' is not a whole number"),
    ("home=/elsewhere", "--set home: set twice"),  # the lab's to set: a node's own disk
    ("converge_bach=2", "did you mean 'converge_batch'"),
    ("converge_batch", "give KEY=VALUE"),
])
def test_up_refuses_a_setting_no_node_could_boot_with(monkeypatch, tmp_path, setting, words):
    monkeypatch.setattr(lab_module, "preflight", lambda **_: [])
    result = CliRunner().invoke(app, ["up", "--nodes", "2", "--dir", str(tmp_path),
                                      "--set", setting])
    assert result.exit_code == 2
    assert words in " ".join(result.output.split())
    assert not any(tmp_path.iterdir())  # nothing was made


def test_sshd_config_is_the_node_own_and_key_only(tmp_path):
    node = Lab(tmp_path)._node(1)
    lines = render_sshd_config(node, tmp_path / "cluster.pub").splitlines()
    for line in ("ListenAddress 198.18.0.11", f"HostKey {node.host_key}",
                 f"PidFile {node.pid_file('sshd')}", "PermitRootLogin prohibit-password",
                 "PasswordAuthentication no", "UsePAM no", "StrictModes no",
                 f"AuthorizedKeysFile {tmp_path / 'cluster.pub'}"):
        assert line in lines


def test_parse_hostfile():
    text = "# rendered by the master\n198.18.0.11 slots=4\n\n198.18.0.12 slots=2  # pi-2\n"
    assert parse_hostfile(text) == {"198.18.0.11", "198.18.0.12"}
    assert parse_hostfile("") == set()


def test_status_json_shape():
    node = NodeStatus(name="pi-1", mac="b827eb0a1b01", ip="198.18.0.11", role="master",
                      state="up", registered=True, in_hostfile=False, agent=True)
    data = json.loads(json.dumps(status_json([node])))
    assert data == {"nodes": [{"name": "pi-1", "mac": "b827eb0a1b01", "ip": "198.18.0.11",
                               "role": "master", "state": "up", "registered": True,
                               "in_hostfile": False, "agent": True, "problem": ""}]}


# -- the machine nodes' image and cards (nothing built) --------------------------------------


def test_the_mirror_is_the_one_this_machine_s_apt_sources_name(tmp_path):
    (tmp_path / "sources.list.d").mkdir(parents=True)
    assert image.debian_mirror(tmp_path) == "http://deb.debian.org/debian"
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian/\nSuites: bookworm bookworm-updates\n"
        "Components: main\n\nTypes: deb\nURIs: http://security.example/debian-security\n"
        "Suites: bookworm-security\nComponents: main\n")
    assert image.debian_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list").write_text(
        "# one-line format\ndeb [arch=amd64] http://old.example/debian bookworm main\n")
    assert image.debian_mirror(tmp_path) == "http://old.example/debian"


def test_the_image_is_rebuilt_when_its_package_lists_change(monkeypatch, tmp_path):
    first = image.image_for("http://m/debian", tmp_path)
    assert first == image.image_for("http://m/debian", tmp_path)  # cached under its key
    monkeypatch.setattr(image, "NODE_PACKAGES", (*image.NODE_PACKAGES, "htop"))
    assert image.image_for("http://m/debian", tmp_path) != first
    monkeypatch.undo()
    assert image.image_for("http://other/debian", tmp_path) != first
    assert first.dir.parent == tmp_path


def test_the_image_holds_nothing_of_picluster_s_and_the_mirror_all_it_installs():
    assert not {"git", "openmpi-bin", "ganglia-monitor", "gmetad"} & set(image.BASE_PACKAGES)
    root = Path(__file__).resolve().parent.parent
    firstboot = (root / "picluster" / "data" / "picluster-firstboot.sh").read_text()
    wanted = set(re.findall(r'missing="\$missing ([a-z0-9.+-]+)"', firstboot))
    assert wanted == {"git", "openssh-client", "python3-venv"}
    for playbook in (root / "tasks").glob("*.yml"):
        if playbook.stem.startswith("nfs"):
            continue  # no NFS in the lab machine's kernel
        for play in yaml.safe_load(playbook.read_text()) or []:
            for task in play.get("tasks", []):
                names = task.get("ansible.builtin.apt", {}).get("name", [])
                wanted.update([names] if isinstance(names, str) else names)
    assert wanted <= set(image.NODE_PACKAGES) | set(image.BASE_PACKAGES)


def test_a_machine_node_s_card_is_a_raspberry_pi_os_boot_partition(tmp_path):
    card = blank_card(tmp_path / "card")
    assert {"config.txt", "cmdline.txt", "meta-data", "user-data", "network-config"} <= \
        {path.name for path in card.iterdir()}
    assert yaml.safe_load((card / "network-config").read_text())["network"]["version"] == 2
    node = Lab(tmp_path)._node(2, machine=True)
    argv = nspawn_argv(node, image.Image(tmp_path / "img"))
    assert f"--network-namespace-path=/run/netns/{node.netns}" in argv
    assert f"--bind-ro={node.boot_dir}:/boot/firmware" in argv and "--boot" in argv
    assert node.on_host(Path("/var/lib/picluster/x")) == node.root / "var/lib/picluster/x"


# -- refusing to start, without touching the machine --------------------------------------


def test_preflight_says_how_to_install_what_is_missing(monkeypatch):
    real_which = machine.shutil.which
    monkeypatch.setattr(machine.shutil, "which",
                        lambda exe, path=None: None if exe in ("gmond", "gmetad")
                        else real_which(exe, path=path))
    monkeypatch.setattr(machine.os, "geteuid", lambda: 1000)
    problems = preflight()
    assert "must run as root" in problems[0]
    assert problems[1].endswith("apt-get install -y ganglia-monitor gmetad")


def test_up_exits_2_with_the_reason_when_the_machine_is_not_ready(monkeypatch, tmp_path):
    monkeypatch.setattr(lab_module, "preflight", lambda **_: ["picluster lab must run as root"])
    result = CliRunner().invoke(app, ["up", "--nodes", "2", "--dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "must run as root" in result.output
    assert not any(tmp_path.iterdir())  # nothing was made


@pytest.mark.parametrize("command", [["status"], ["exec", "pi-1", "--", "true"],
                                     ["kill", "pi-1"], ["down"]])
def test_every_command_says_plainly_that_it_needs_root(monkeypatch, tmp_path, command):
    monkeypatch.setattr(machine.os, "geteuid", lambda: 1000)
    result = CliRunner().invoke(app, [*command[:1], "--dir", str(tmp_path), *command[1:]])
    assert result.exit_code == 2
    assert "must run as root" in result.output


def test_up_refuses_a_directory_too_long_for_ssh_sockets(monkeypatch, tmp_path):
    monkeypatch.setattr(lab_module, "preflight", lambda **_: [])
    with pytest.raises(LabError, match="too long") as raised:
        Lab(tmp_path / ("x" * 60)).up(2)
    assert raised.value.code == 2


# -- real labs ---------------------------------------------------------------------------


def run_lab_cli(lab: Lab, *args: str) -> subprocess.CompletedProcess[str]:
    command, rest = args[0], args[1:]
    return run_cli("lab", command, "--dir", str(lab.dir), *rest)


def lab_namespaces(lab: Lab) -> list[str]:
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                             check=True).stdout
    return [line.split()[0] for line in listing.splitlines()
            if line.startswith(f"{lab.prefix}-")]


def in_root_namespace(lab: Lab) -> list[str]:
    """The root namespace's interfaces and IPv4 addresses that are the lab's: none ever."""
    def ip(*args: str) -> list[str]:
        return subprocess.run(["ip", "-o", *args], capture_output=True, text=True,
                              check=True).stdout.splitlines()

    ports = {"br0", lab.git_host.port, *(node.port for node in lab.nodes)}
    macs = {format_mac(node.mac) for node in lab.nodes}
    lab_net = ipaddress.IPv4Network("198.18.0.0/15")
    return [line for line in ip("link") if line.split()[1].split("@")[0].rstrip(":") in ports
            or any(mac in line for mac in macs)] + \
        [line for line in ip("-4", "addr")
         if ipaddress.IPv4Interface(line.split()[3]).ip in lab_net]


def marked_processes(lab: Lab) -> list[int]:
    """Living processes that carry the lab's environment marker."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            marked = f"PICLUSTER_LAB={lab.prefix}".encode() in \
                (proc / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError):
            continue
        if marked and alive(int(proc.name)):
            found.append(int(proc.name))
    return found


@pytest.mark.lab
def test_nodes_register_with_exactly_one_master(lab):
    nodes = lab.status()
    assert [node.name for node in nodes] == ["pi-1", "pi-2", "pi-3", "pi-4"]
    assert all(node.registered and node.state == "up" and node.agent for node in nodes)
    assert [node.mac for node in nodes] == [node_mac(lab.prefix, k) for k in range(1, 5)]
    assert sum(node.role == "master" for node in nodes) == 1
    assert sorted(lab_namespaces(lab)) == sorted(
        [lab.bridge_ns, lab.git_host.netns, *(node.netns for node in lab.nodes)])
    assert in_root_namespace(lab) == []

    printed = json.loads(run_lab_cli(lab, "status", "--json").stdout)
    assert [(node["name"], node["ip"], node["registered"]) for node in printed["nodes"]] == \
        [(f"pi-{k}", node_ip(k), True) for k in range(1, 5)]


@pytest.mark.lab
def test_exec_runs_a_command_as_the_node(lab):
    assert run_lab_cli(lab, "exec", "pi-1", "--", "hostname").stdout == "pi-1\n"
    mac = run_lab_cli(lab, "exec", "3", "cat", "/sys/class/net/eth0/address").stdout.strip()
    assert mac == format_mac(node_mac(lab.prefix, 3))
    assert run_lab_cli(lab, "exec", "pi-2", "--", "sh", "-c", "exit 3").returncode == 3
    missing = run_lab_cli(lab, "exec", "pi-9", "--", "true")
    assert missing.returncode == 1 and "no node 'pi-9'" in missing.stderr


@pytest.mark.lab
def test_logins_on_a_lab_host_read_none_of_this_machine_s_root_startup_files(lab):
    # ssh logins (git, Ansible, mpirun) run root's shell; this machine's ~/.bashrc must
    # not run on a virtual Pi (pyenv's, for one, stalls every login after a killed one).
    script = 'for f in ~/.bashrc ~/.bash_profile ~/.bash_login ~/.profile; do ' \
             '[ -f "$f" ] && wc -c < "$f"; done; true'
    sizes = run_lab_cli(lab, "exec", "pi-2", "--", "sh", "-c", script).stdout.split()
    assert set(sizes) <= {"0"}


@pytest.mark.lab
def test_a_killed_worker_comes_back_registered_with_its_mac(lab, tmp_path):
    nodes = lab.status()
    master = next(node for node in nodes if node.role == "master")
    worker = next(node for node in reversed(nodes) if node.role == "node")

    lab.kill(worker.name)
    assert status_of(lab, worker.name).state == "down"
    assert subprocess.run(["ip", "netns", "pids", lab.node(worker.name).netns],
                          capture_output=True, text=True, check=True).stdout == ""
    # Unplugged: the master cannot reach the worker's sshd any more.
    probe = f"import socket; socket.create_connection(('{worker.ip}', 22), timeout=2)"
    assert lab.exec(master.name, ["python3", "-c", probe], capture_output=True).returncode

    # What the master's prune would do; the revived node must register again.
    operator = ClusterRepo(url=str(lab.bare_repo), clone_dir=tmp_path / "repo", writer="test")
    operator.transact([Remove(ip_path(worker.mac))], f"test: unplug {worker.name}")

    lab.revive(worker.name)
    lab.converge(timeout=60)
    back = status_of(lab, worker.name)
    assert back.registered and back.state == "up" and back.agent and back.mac == worker.mac
    inside = lab.exec(worker.name, ["cat", "/sys/class/net/eth0/address"],
                      capture_output=True, text=True).stdout.strip()
    assert inside == format_mac(worker.mac)


@pytest.mark.lab
def test_down_removes_every_namespace_process_and_file(fresh_lab):
    state = fresh_lab.up(2, fast=True, master_index=2, git="daemon", timeout=120)
    assert state.master == "pi-2"  # the designated master, served by git daemon
    assert json.loads(fresh_lab.state_file.read_text())["repo"].startswith("git://")
    # up returned once the cluster was usable: MPI runs at once on every node.
    assert all(node.in_hostfile for node in fresh_lab.status())
    ranks = fresh_lab.mpirun(["-np", "2", "--map-by", "node", "hostname"],
                             capture_output=True, text=True, timeout=60)
    assert ranks.returncode == 0 and sorted(ranks.stdout.split()) == ["pi-1", "pi-2"], ranks
    pids = [pid for group in fresh_lab.pids().values() for pid in group]
    assert len(pids) >= 6  # per node a holder, sshd and agent at least

    result = run_lab_cli(fresh_lab, "down")
    assert result.returncode == 0, result.stderr
    assert lab_namespaces(fresh_lab) == []
    assert not [pid for pid in pids if alive(pid)]
    assert marked_processes(fresh_lab) == []
    assert not fresh_lab.dir.exists()
    assert run_lab_cli(fresh_lab, "down").returncode == 0  # idempotent


@pytest.mark.lab
def test_down_cleans_up_after_a_crashed_up(fresh_lab):
    with pytest.raises(LabError, match="not converged"):
        fresh_lab.up(1, fast=True, timeout=0)
    # A crash can come before the state file is written: down must not need it.
    fresh_lab.state_file.unlink()
    assert any(fresh_lab.pids().values())

    fresh_lab.down()
    assert lab_namespaces(fresh_lab) == []
    assert marked_processes(fresh_lab) == []
    assert not fresh_lab.dir.exists()
