"""The playbooks in tasks/: lint and syntax (unit tests), `picluster apply`'s input checks,
and real runs against a lab's nodes (`-m lab`).

A lab node is a network namespace of this machine: a playbook run "on" it runs on this
machine's root file system.  core, openmpi and ganglia run for real there (their
packages are installed, so they change nothing; with no mirror in reach, core's apt cache
refresh is simulated); nfs-server, nfs-client and sudoers run in check mode, and the
tests check that this machine's fstab, exports, sudoers and mounts are as they were.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from filelock import FileLock
from helpers import master_of, run_cli, wait_until

from picluster.apply import PlaybookError, apply, playbook_dir, resolve, shipped
from picluster.lab.lab import Lab, Node
from picluster.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
TASKS = ROOT / "tasks"
PLAYBOOKS = ["core", "ganglia", "nfs-client", "nfs-server", "openmpi", "site", "sudoers"]
BIN = Path(sys.executable).parent

# An inventory as the master renders it (picluster/master/views.py).
INVENTORY = """\
[master]
198.18.0.11 mac=b827eb000001 hostname=pi-1

[nodes]
198.18.0.12 mac=b827eb000002 hostname=pi-2

[all:vars]
ansible_user=root
ansible_python_interpreter=/usr/bin/python3
"""


def tool(name: str) -> str:
    """An executable installed beside this Python (ansible-lint comes with the test extra)."""
    path = BIN / name
    if not path.exists():
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return str(path)


# -- the playbooks themselves ------------------------------------------------------------


def test_the_shipped_playbooks_are_the_ones_in_tasks():
    assert playbook_dir() == TASKS
    assert shipped() == PLAYBOOKS


def test_every_file_in_tasks_ships_in_the_wheel():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"]["picluster.playbooks"] == "tasks"
    assert "picluster.playbooks" in config["packages"]
    globs = config["package-data"]["picluster.playbooks"]
    files = [path.relative_to(TASKS) for path in TASKS.rglob("*") if path.is_file()]
    assert files and all(any(path.match(glob) for glob in globs) for path in files), files


def test_ansible_lint_passes_with_the_production_profile():
    # .ansible-lint: profile production, offline (no update check, no galaxy).
    result = subprocess.run([tool("ansible-lint"), "--nocolor", "tasks/"], cwd=ROOT,
                            capture_output=True, text=True, timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Profile 'production' was required, and it passed" in result.stderr


def test_every_playbook_passes_ansible_playbook_syntax_check(tmp_path):
    inventory = tmp_path / "inventory"
    inventory.write_text(INVENTORY)
    paths = [str(TASKS / f"{name}.yml") for name in PLAYBOOKS]
    result = subprocess.run([tool("ansible-playbook"), "--syntax-check", "-i", str(inventory),
                             *paths], capture_output=True, text=True, timeout=120,
                            check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [line.split(": ", 1)[1] for line in result.stdout.splitlines()
            if line.startswith("playbook: ")] == paths


def run_guarded(tmp_path: Path, *args: str) -> bool:
    """Run a playbook that writes a file, under the shipped group_vars and tasks that
    use `check_mode: dry_run` as the shipped ones do, on this machine; did it write?"""
    (tmp_path / "group_vars").mkdir(exist_ok=True)
    (tmp_path / "group_vars" / "all.yml").write_text(
        (TASKS / "group_vars" / "all.yml").read_text())
    target = tmp_path / "written"
    target.unlink(missing_ok=True)
    (tmp_path / "play.yml").write_text(f"""\
- name: Guarded
  hosts: all
  gather_subset: [min]
  check_mode: "{{{{ dry_run }}}}"
  tasks:
    - name: Write
      ansible.builtin.copy:
        dest: {target}
        content: "x"
        mode: "0644"
""")
    result = subprocess.run([tool("ansible-playbook"), "-i", "localhost,", "-c", "local",
                             "-e", "ansible_python_interpreter=/usr/bin/python3",
                             str(tmp_path / "play.yml"), *args],
                            capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    return target.exists()


def test_only_a_host_of_its_own_outside_check_mode_is_changed(tmp_path):
    # `own_system` comes from facts (systemd or not); forcing it tests what follows from it.
    assert run_guarded(tmp_path, "-e", "own_system=true")
    assert not run_guarded(tmp_path, "-e", "own_system=true", "--check")
    assert not run_guarded(tmp_path, "-e", "own_system=false")


# -- picluster apply: what it refuses ------------------------------------------------------


def test_resolve_finds_shipped_playbooks_by_name_and_others_by_path(tmp_path):
    assert resolve("core") == resolve("core.yml") == TASKS / "core.yml"
    mine = tmp_path / "mine.yml"
    mine.write_text("[]\n")
    assert resolve(str(mine)) == mine
    with pytest.raises(PlaybookError, match="no playbook 'cores'; picluster ships core, "):
        resolve("cores")
    with pytest.raises(PlaybookError, match="no such playbook file"):
        resolve(str(tmp_path / "missing.yml"))


@pytest.fixture
def node_config(tmp_path: Path) -> Path:
    config = tmp_path / "node.conf"
    config.write_text(f"repo = {tmp_path / 'cluster.git'}\nhome = {tmp_path / 'home'}\n")
    return config


def test_apply_an_unknown_playbook_exits_2(node_config):
    result = run_cli("apply", "cores", config=node_config)
    assert result.returncode == 2
    assert "no playbook 'cores'" in result.stderr and "nfs-server" in result.stderr


def test_apply_without_a_rendered_inventory_exits_2_and_says_who_renders_it(node_config,
                                                                            tmp_path):
    result = run_cli("apply", "core", config=node_config)
    assert result.returncode == 2
    assert f"no inventory at {tmp_path / 'home' / 'rendered' / 'inventory'}" in result.stderr
    assert "the master's agent renders it" in result.stderr


def test_apply_waits_for_no_one_while_another_playbook_runs(node_config):
    settings = Settings.load(node_config)
    for rendered in (settings.inventory_file, settings.cluster_known_hosts):
        rendered.parent.mkdir(parents=True, exist_ok=True)
        rendered.write_text("")
    with FileLock(settings.home / "playbook.lock"), \
            pytest.raises(PlaybookError, match="another playbook run holds"):
        apply(settings, "core")


# -- real runs on a lab --------------------------------------------------------------------


@pytest.fixture(scope="module")
def master(lab: Lab) -> Node:
    """The lab's master, once its agent rendered an inventory and known_hosts that hold
    every node."""
    name = master_of(lab).name
    node = lab.node(name)
    settings = node.settings()

    def rendered() -> bool:
        try:
            inventory = settings.inventory_file.read_text()
            known = settings.cluster_known_hosts.read_text()
        except FileNotFoundError:
            return False
        return all(f"{n.ip} " in inventory and f"{n.ip} " in known for n in lab.nodes)

    # The master renders after its grace (3 s in a --fast lab), on its next poll.
    wait_until(rendered, 60, f"{name} to render its inventory and known_hosts")
    return node


def apply_on(lab: Lab, master: Node, *args: str) -> tuple[int, dict]:
    """`picluster apply ... --json`, run on the master node as its operator would."""
    result = lab.exec(master.name, [sys.executable, "-m", "picluster", "--config",
                                    str(master.config), "apply", *args, "--json"],
                      capture_output=True, text=True, timeout=600)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def machine_state() -> dict[str, object]:
    """What a run on a lab node must never change on this machine."""
    def read(path: str) -> str | None:
        try:
            return Path(path).read_text()
        except FileNotFoundError:
            return None

    return {"fstab": read("/etc/fstab"), "exports": read("/etc/exports"),
            "exports.d": sorted(p.name for p in Path("/etc/exports.d").glob("*")),
            "sudoers.d": sorted(p.name for p in Path("/etc/sudoers.d").glob("*")),
            "share": Path("/share").exists(),
            # Only NFS: other labs add and remove their /run/netns mounts meanwhile.
            "nfs mounts": [line for line in (read("/proc/self/mounts") or "").splitlines()
                           if line.split()[2].startswith("nfs")]}


@pytest.fixture
def unchanged_machine() -> Iterator[None]:
    before = machine_state()
    yield
    assert machine_state() == before


@pytest.mark.lab
@pytest.mark.parametrize("playbook", ["core", "openmpi", "ganglia"])
def test_installing_playbooks_run_for_real_and_change_nothing_installed(
        lab, master, playbook, unchanged_machine):
    code, report = apply_on(lab, master, playbook)
    assert code == 0 and report["ok"], report
    assert set(report["hosts"]) == {node.ip for node in lab.nodes}
    statuses = {host["status"] for host in report["hosts"].values()}
    if playbook == "core":
        # The apt cache refresh runs in check mode (no mirror in reach): "changed" while
        # the machine's package lists are older than apt_cache_valid_time.
        assert statuses <= {"ok", "changed"}
    else:
        # Everything is installed already, and the distribution's services are left
        # alone on nodes without systemd: idempotent.
        assert statuses == {"ok"}, report


@pytest.mark.lab
@pytest.mark.parametrize(("playbook", "hosts"), [("nfs-server", "master"),
                                                 ("nfs-client", "nodes"),
                                                 ("sudoers", "all")])
def test_system_changing_playbooks_run_in_check_mode(lab, master, playbook, hosts,
                                                     unchanged_machine):
    code, report = apply_on(lab, master, playbook, "--check")
    assert code == 0 and report["ok"] and report["check"], report
    expected = {"master": {master.ip}, "nodes": {n.ip for n in lab.nodes} - {master.ip},
                "all": {n.ip for n in lab.nodes}}[hosts]
    assert set(report["hosts"]) == expected


@pytest.mark.lab
def test_without_check_a_lab_node_is_still_only_simulated(lab, master, unchanged_machine):
    # No systemd: not a machine of its own, so sudoers' copy runs in check mode anyway.
    drop_in = Path("/etc/sudoers.d/picluster")
    existed = drop_in.exists()
    try:
        code, report = apply_on(lab, master, "sudoers", "--limit", master.ip)
        written = drop_in.exists() and not existed
    finally:
        if not existed:  # should the guard ever fail, leave the machine as it was
            drop_in.unlink(missing_ok=True)
    assert not written, f"a real run on a lab node wrote this machine's {drop_in}"
    assert code == 0 and not report["check"], report
    assert set(report["hosts"]) == {master.ip}
