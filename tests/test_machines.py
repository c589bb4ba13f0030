"""Machine nodes (`picluster lab up --machines`): Pis with a system of their own.

One 4-node machine lab serves the module, in this order: the nodes as they first booted,
what they installed on themselves, the services systemd runs, a power cut, MPI from a
worker, then cards that boot a fifth and sixth node, and the lab's removal.  Everything
here is marked `lab` (root, namespaces, systemd-nspawn); the first run on a machine builds
the image (minutes).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import gmetad_hosts, outcomes, run_cli, status_of, wait_until
from test_lab import in_root_namespace, lab_namespaces, marked_processes

from picluster import playbook_task
from picluster.cluster_files import BEGIN, END
from picluster.gitstore import ClusterRepo
from picluster.lab import Lab, LabError, preflight
from picluster.lab.image import BASE_PACKAGES, Image, ensure_wheelhouse
from picluster.lab.machines import blank_card, mounts_under
from picluster.provision.wheels import SUMS, WHEELS_DIR, sha256
from picluster.queue import outcome_of

pytestmark = pytest.mark.lab

NODES = ["pi-1", "pi-2", "pi-3", "pi-4"]


def machine_lab() -> Lab:
    problems = preflight(machines=True)
    if problems:
        pytest.skip("machine nodes need root and their packages: " + " / ".join(problems))
    return Lab(tempfile.mkdtemp(prefix="pclm-", dir="/tmp"))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A 4-node --fast lab of machine nodes; removed at the end, also when `up` fails."""
    made = machine_lab()
    try:
        made.up(4, machines=True, fast=True)
        yield made
    finally:
        made.down()


def on(lab: Lab, node: str, script: str, timeout: float = 60) -> str:
    """What `script` prints on `node` (sh -c), as `picluster lab exec` runs it."""
    done = lab.exec(node, ["sh", "-c", script], capture_output=True, text=True,
                    timeout=timeout)
    return done.stdout.strip()


def worker(lab: Lab) -> str:
    return next(node.name for node in reversed(lab.status()) if node.role == "node")


# -- as the nodes first booted -------------------------------------------------------------


def test_every_node_booted_its_card_into_a_running_agent(lab: Lab) -> None:
    nodes = lab.status()
    assert [node.name for node in nodes] == NODES
    assert all(node.state == "up" and node.registered and node.in_hostfile and node.agent
               and node.problem == "" for node in nodes), nodes  # lab up waited for this
    assert sum(node.role == "master" for node in nodes) == 1
    for name in NODES:
        report = on(lab, name, "systemctl is-system-running; systemctl is-active picluster; "
                               "hostname; cloud-init status; "
                               "journalctl -u picluster -o cat | grep -c 'joined the cluster'")
        assert report.splitlines() == ["running", "active", name, "status: done",
                                       report.splitlines()[-1]], (name, report)
        assert int(report.splitlines()[-1]) >= 1  # the agent's log is in the journal
    # Nothing of the lab's network reaches this machine's own namespace.
    assert in_root_namespace(lab) == []


def test_the_installed_picluster_is_the_wheel_on_the_card(lab: Lab) -> None:
    (wheel,) = lab.wheel_dir.glob("picluster-*.whl")
    card = lab.node("pi-2").boot_dir / WHEELS_DIR
    assert (card / SUMS).read_text().splitlines()[0] == f"{sha256(wheel)}  {wheel.name}"
    record = on(lab, "pi-2", "cat /opt/picluster/lib/python3*/site-packages/"
                             "picluster-*.dist-info/direct_url.json")
    installed = json.loads(record)
    assert installed["url"] == f"file:///boot/firmware/{WHEELS_DIR}/{wheel.name}"
    assert installed["archive_info"]["hashes"]["sha256"] == sha256(wheel)
    # Offline: pip took every dependency from the card (the node has no route anywhere).
    assert on(lab, "pi-2", "ip -4 route show default") == ""


def test_the_image_has_what_raspberry_pi_os_lite_has_and_nothing_of_ours(lab: Lab) -> None:
    image = Image(Path(str(lab.state().image)))
    packages = set(json.loads(image.manifest.read_text())["base"])
    assert {"systemd", "openssh-server", "python3", "cloud-init"} <= packages
    assert packages == set(BASE_PACKAGES)
    for absent in ("usr/bin/git", "usr/bin/mpirun", "usr/sbin/gmond", "opt/picluster",
                   "etc/ssh/ssh_host_ed25519_key"):
        assert not (image.root / absent).exists(), absent
    assert (image.root / "etc/hostname").read_text() == "raspberrypi\n"


# -- the nodes configure themselves --------------------------------------------------------


def status(lab: Lab) -> dict[str, dict[str, Any]]:
    """`picluster status --json`, as the lab's operator runs it, by hostname."""
    done = run_cli("status", "--json", config=lab.operator_config)
    assert done.returncode == 0, done.stderr
    return {node["hostname"]: node for node in json.loads(done.stdout)["nodes"]}


def test_each_node_installed_openmpi_and_ganglia_by_its_own_playbook_tasks(lab: Lab) -> None:
    nodes = status(lab)  # `lab up` returned once every node was configured
    assert sorted(nodes) == NODES
    for name, node in nodes.items():
        group = "master" if node["role"] == "master" else "nodes"
        assert node["configured"] and list(node["playbooks"]) == list(
            playbook_task.ROLES[group]), (name, node)
        # A machine of its own changes itself for real; only NFS, which this kernel
        # lacks, ran in check mode.
        assert {playbook: entry["check"] for playbook, entry in node["playbooks"].items()} \
            == {playbook: playbook.startswith("nfs") for playbook in node["playbooks"]}
        packages = ["openmpi-bin", "python3-mpi4py", "ganglia-monitor",
                    *(["gmetad"] if group == "master" else [])]
        states = on(lab, name, "dpkg-query -W -f '${db:Status-Status}\\n' " + " ".join(packages))
        assert states.split() == ["installed"] * len(packages), (name, states)
        runs = outcomes(lab, lab.node(name), playbook_task.TASK)
        assert {run.result["playbook"] for run in runs} == set(playbook_task.ROLES[group])
        assert all(run.status == "ok" and run.producer == "cluster" for run in runs)
        for run in runs:
            nfs = run.result["playbook"].startswith("nfs")
            assert run.result["mode"] == ("check" if nfs else "real"), run.result
            assert ("this kernel has no NFS" in run.result.get("note", "")) is nfs
    master = next(name for name, node in nodes.items() if node["role"] == "master")
    wait_until(lambda: gmetad_hosts(lab, master) == set(NODES), 60,
               f"{master}'s gmetad to list every node")


# -- systemd runs the agent ----------------------------------------------------------------


def test_systemd_restarts_a_killed_agent_within_10_s(lab: Lab) -> None:
    node = worker(lab)
    before = on(lab, node, "systemctl show -p MainPID --value picluster")
    killed = time.monotonic()
    assert lab.exec(node, ["kill", "-9", before]).returncode == 0

    def back() -> bool:
        state, pid = on(lab, node, "systemctl is-active picluster; "
                                   "systemctl show -p MainPID --value picluster").split()
        return state == "active" and pid not in ("0", before)

    wait_until(back, 10, f"picluster.service on {node} to be active again")
    assert time.monotonic() - killed < 10
    assert on(lab, node, "systemctl show -p NRestarts --value picluster") != "0"


def test_stopping_the_service_lets_a_running_task_finish_and_push(lab: Lab,
                                                                  tmp_path: Path) -> None:
    node = lab.node(worker(lab))
    queued = run_cli("--config", str(lab.operator_config), "enqueue", node.mac, "sleep",
                     "--arg", "seconds=5")
    assert queued.returncode == 0, queued.stderr
    task_id = queued.stdout.strip()
    wait_until(lambda: task_id in on(lab, node.name, "journalctl -u picluster -o cat"), 30,
               f"{node.name}'s agent to queue the task")
    time.sleep(1)  # an idle worker has taken it by then: the task runs (a stop leaves a
    # task that has not started in the node's queue, for the next start)
    started = time.monotonic()
    stop = lab.exec(node.name, ["systemctl", "stop", "picluster"], capture_output=True,
                    text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr
    journal = on(lab, node.name, "journalctl -u picluster -o short-precise -n 30")
    assert time.monotonic() - started > 1, journal  # it waited for the task
    assert on(lab, node.name, "systemctl show -p Result --value picluster") == "success"

    operator = ClusterRepo(url=str(lab.bare_repo), clone_dir=tmp_path / "repo", writer="test")
    outcome = outcome_of(operator.sync(), node.mac, task_id)
    assert outcome is not None and outcome.status == "ok", outcome
    assert lab.exec(node.name, ["systemctl", "start", "picluster"]).returncode == 0


# -- a power cut -------------------------------------------------------------------------------


def test_a_power_cut_node_is_pruned_then_boots_from_its_own_disk(lab: Lab) -> None:
    name = worker(lab)
    assert lab.exec(name, ["touch", "/root/written-before-the-power-cut"]).returncode == 0
    lab.kill(name)
    assert status_of(lab, name).state == "down"
    assert mounts_under(lab.node(name).dir) == []
    wait_until(lambda: not status_of(lab, name).registered, 60,
               f"the master to prune {name}")

    lab.revive(name)
    lab.converge(timeout=120)
    back = status_of(lab, name)
    assert back.registered and back.in_hostfile and back.agent and back.problem == ""
    assert on(lab, name, "test -f /root/written-before-the-power-cut && echo kept") == "kept"
    # The second boot found picluster installed: no second first-boot install.
    assert on(lab, name, "journalctl --list-boots | tail -n +2 | wc -l") == "2"
    assert on(lab, name, "grep -c 'Successfully installed' "
                         "/var/log/cloud-init-output.log") == "1"


# -- MPI ------------------------------------------------------------------------------------


def test_picluster_mpirun_from_a_worker_runs_a_rank_on_every_node(lab: Lab) -> None:
    ranks = lab.mpirun(["-np", "4", "--map-by", "node", "hostname"], node=worker(lab),
                       capture_output=True, text=True, timeout=120)
    assert ranks.returncode == 0, ranks.stderr
    assert sorted(ranks.stdout.split()) == NODES
    printed = run_cli("lab", "mpirun", "--dir", str(lab.dir), "--", "-np", "4", "--map-by",
                      "node", "hostname")
    assert printed.returncode == 0 and sorted(printed.stdout.split()) == NODES


# -- more cards ---------------------------------------------------------------------------------


def card_for(lab: Lab, directory: Path, *args: str) -> Path:
    """A boot partition prepared for the lab's cluster with `picluster prepare-boot`, from
    the lab's wheel and wheelhouse, as the lab prepares its own."""
    (wheel,) = lab.wheel_dir.glob("picluster-*.whl")
    card = blank_card(directory)
    done = run_cli("prepare-boot", str(card), "--repo", lab.state().repo, "--key",
                   str(lab.cluster_key), "--wheel", str(wheel), "--wheelhouse",
                   str(ensure_wheelhouse(wheel)), *args)
    assert done.returncode == 0, done.stderr
    return card


def test_a_card_without_a_hostname_names_the_node_after_its_mac(lab: Lab,
                                                                tmp_path: Path) -> None:
    node = lab.add_node(card_for(lab, tmp_path / "card"), timeout=300)
    expected = f"pi-{node.mac[-6:]}"
    assert on(lab, node.name, "hostname") == expected
    # It configured itself, and every node's cluster files list all five.
    assert status(lab)[expected]["configured"]
    names = {*NODES, expected}
    for name in [*NODES, node.name]:
        hosts = on(lab, name, "cat /etc/hosts").splitlines()
        block = hosts[hosts.index(BEGIN) + 1:hosts.index(END)]
        assert {line.split()[1] for line in block} == names, (name, hosts)
        hostfile = on(lab, name, "grep -v '^#' /etc/picluster/hostfile")
        assert len(hostfile.splitlines()) == 5, (name, hostfile)


def test_a_tampered_card_stops_first_boot_with_one_line(lab: Lab, tmp_path: Path) -> None:
    card = card_for(lab, tmp_path / "card", "--hostname", "pi-tampered")
    (wheel,) = (card / WHEELS_DIR).glob("picluster-*.whl")
    with wheel.open("ab") as file:
        file.write(b"\0")
    with pytest.raises(LabError, match="does not match its sha256") as failed:
        lab.add_node(card, timeout=120)
    name = lab.nodes[-1].name
    assert f"{name}: first boot failed: " in str(failed.value)

    status = status_of(lab, name)
    assert status.problem.startswith("first boot failed: ") and not status.agent
    lines = on(lab, name, "journalctl -q -o cat -t picluster-firstboot").splitlines()
    assert len(lines) == 1 and "nothing was installed" in lines[0]
    assert on(lab, name, "command -v git; test -e /opt/picluster && echo installed") == ""
    printed = run_cli("lab", "status", "--dir", str(lab.dir))
    assert f"{name}: first boot failed: " in printed.stdout


# -- removing the lab ----------------------------------------------------------------------


def test_down_shuts_machines_down_and_leaves_nothing(lab: Lab) -> None:
    image = Image(Path(str(lab.state().image)))
    removed = lab.down()
    assert removed and lab_namespaces(lab) == []
    assert marked_processes(lab) == []
    assert not lab.dir.exists()
    assert image.manifest.is_file()  # the cache stays for the next lab
    nspawn = subprocess.run(["pgrep", "-f", f"systemd-nspawn.*{lab.dir}/"],
                            capture_output=True, text=True, check=False).stdout
    assert nspawn == ""


def test_down_cleans_up_after_a_failed_machine_up() -> None:
    made = machine_lab()
    try:
        with pytest.raises(LabError, match="not converged"):
            made.up(1, machines=True, fast=True, timeout=0)
        assert mounts_under(made.dir)  # the node's disk was mounted
    finally:
        made.down()
    assert lab_namespaces(made) == [] and marked_processes(made) == []
    assert not made.dir.exists()
