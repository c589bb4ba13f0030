"""The `playbook` task (picluster.playbook_task): the roles' playbooks, what each reads of
the cluster, its schema, its digest, and a run's outcome and fact; Ansible replaced by a
script here (real runs: tests/test_converge.py, tests/test_machines.py and
tests/test_playbooks.py)."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from picluster import ansible, apply, playbook_task
from picluster.identity import NodeIdentity
from picluster.node import catalogue
from picluster.playbook_task import INPUTS, ROLES, args_for, digest
from picluster.registry import ClusterVars, Member, Membership
from picluster.settings import Settings
from picluster.tasks import TaskContext, TaskError, TaskFailed

ME = NodeIdentity("b827eb000002", "198.18.0.12")
MEMBERSHIP = Membership((Member("b827eb000001", "198.18.0.11"), Member(ME.mac, ME.ip),
                         Member("b827eb000003", "198.18.0.9")), "b827eb000001")


def test_the_roles_apply_shipped_playbooks_in_site_order() -> None:
    site = re.findall(r"import_playbook: (\S+)\.yml", (apply.playbook_dir() / "site.yml")
                      .read_text())
    for playbooks in ROLES.values():
        assert [name for name in site if name in playbooks] == list(playbooks)
    assert set(ROLES["master"]) ^ set(ROLES["nodes"]) == {"nfs-server", "nfs-client"}
    assert sorted(INPUTS) == apply.shipped()


@pytest.mark.parametrize("name", sorted(INPUTS))
def test_inputs_say_what_each_playbook_reads_of_the_cluster(name: str) -> None:
    text = "".join(path.read_text() for path in playbook_task._sources(name)
                   if path.parent == apply.playbook_dir())  # not the group_vars
    reads = {"master": "groups['master']" in text, "nodes": "groups['nodes']" in text,
             "user": "cluster_user" in text or "ansible_user" in text}
    assert {key for key, read in reads.items() if read} == set(INPUTS[name])


def test_args_for_gives_a_playbook_only_what_it_reads() -> None:
    cluster = ClusterVars(ssh_user="pi")
    assert args_for("core", "nodes", MEMBERSHIP, cluster) == {
        "playbook": "core", "group": "nodes", "master": [], "nodes": [], "user": "root"}
    assert args_for("nfs-server", "master", MEMBERSHIP, cluster) == {
        "playbook": "nfs-server", "group": "master", "master": [],
        "nodes": ["198.18.0.9", "198.18.0.12"], "user": "pi"}
    assert args_for("nfs-client", "nodes", MEMBERSHIP, cluster)["master"] == ["198.18.0.11"]


@pytest.mark.parametrize(("args", "words"), [
    ({"playbook": "/tmp/mine.yml", "group": "nodes"}, "must be a playbook picluster ships"),
    ({"playbook": "../../etc/evil", "group": "nodes"}, "must be a playbook picluster ships"),
    ({"playbook": "core.yml", "group": "nodes"}, "must be a playbook picluster ships"),
    ({"playbook": "core", "group": "all"}, "'group' must be master or nodes"),
    ({"playbook": "core", "group": "nodes", "user": "{{ lookup('pipe', 'id') }}"},
     "'user' must be a plain user name"),
    ({"playbook": "core", "group": "nodes", "master": ["198.18.0.1", "198.18.0.2"]},
     "at most 1 items"),
    ({"playbook": "core", "group": "nodes", "nodes": ["198.18.0.1; reboot"]},
     "'nodes[0]' must be an IPv4 address"),
    ({"playbook": "core", "group": "nodes", "text": "- hosts: all"}, "unknown argument 'text'"),
])
def test_only_shipped_playbooks_run_by_name_with_checked_values(args: dict[str, Any],
                                                                words: str) -> None:
    with pytest.raises(TaskError) as caught:
        catalogue.check("playbook", args)
    assert words in str(caught.value)


def test_the_digest_follows_the_text_the_defaults_and_the_arguments(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    core = {"playbook": "core", "group": "nodes"}
    before = {name: digest({"playbook": name, "group": "nodes"}) for name in INPUTS}
    assert digest(core) == digest({**core, "user": "root"}) == before["core"]  # defaults
    assert digest({**core, "group": "master"}) != digest(core)
    assert digest({**core, "user": "pi"}) != digest(core)
    shipped = tmp_path / "playbooks"
    shutil.copytree(apply.playbook_dir(), shipped)
    monkeypatch.setattr(apply, "_CANDIDATES", (shipped,))
    assert {name: digest({"playbook": name, "group": "nodes"}) for name in INPUTS} == before
    # An upgrade that changes one playbook changes it, and site, which imports it.
    (shipped / "openmpi.yml").write_text((shipped / "openmpi.yml").read_text() + "# new\n")
    after = {name: digest({"playbook": name, "group": "nodes"}) for name in INPUTS}
    assert {name for name in INPUTS if after[name] != before[name]} == {"openmpi", "site"}
    # The shipped defaults reach every playbook.
    defaults = shipped / "group_vars" / "all.yml"
    defaults.write_text(defaults.read_text() + "share_dir_mode: '0755'\n")
    assert all(digest({"playbook": name, "group": "nodes"}) != after[name] for name in INPUTS)


# -- a run, with Ansible scripted ------------------------------------------------------------


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.parse(f"repo = /x\nhome = {tmp_path / 'home'}\nmac = {ME.mac}\n"
                          f"ip = {ME.ip}\n")


def script(monkeypatch: pytest.MonkeyPatch, *, manager: str | None = "process_api",
           failed: bool = False, ran: bool = True,
           facts: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """ansible.playbook_here answers as a run would; records what it was given."""
    calls: list[dict[str, Any]] = []

    def fake(settings: Settings, path: Path, inventory: dict[str, Any],
             host: str) -> ansible.AnsibleRun:
        calls.append({"path": path, "inventory": inventory, "host": host})
        if not ran:
            return ansible.AnsibleRun(127, "failed")
        result = ansible.HostResult(
            host, "failed" if failed else "changed",
            "No package matching 'nfs-common' is available" if failed else "",
            "Install the NFS client" if failed else "Create the mount point")
        return ansible.AnsibleRun(
            2 if failed else 0, "failed" if failed else "successful", {host: result}, 4.2,
            {host: {"ok": 3, "changed": 1, "failures": int(failed), "skipped": 2,
                    "dark": 0}},
            {host: {"ansible_service_mgr": manager, **(facts or {})}} if manager else {})

    monkeypatch.setattr(ansible, "playbook_here", fake)
    return calls


def run_task(settings: Settings, args: dict[str, Any]) -> Any:
    function = catalogue.get("playbook")
    assert function is not None
    return function(args, TaskContext(settings, None, dict))  # type: ignore[arg-type]


NFS_CLIENT = {"playbook": "nfs-client", "group": "nodes", "master": ["198.18.0.11"]}


def test_a_run_on_a_node_that_cannot_change_itself_says_it_was_in_check_mode(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = script(monkeypatch)
    result = run_task(settings, NFS_CLIENT)
    # The shipped playbook, against this node alone, connecting locally, in its group,
    # with the master in its own group as the master's inventory has it.
    (call,) = calls
    assert call["path"] == apply.playbook_dir() / "nfs-client.yml"
    assert call["host"] == ME.ip
    groups = call["inventory"]["all"]["children"]
    assert set(groups["nodes"]["hosts"]) == {ME.ip}
    me = groups["nodes"]["hosts"][ME.ip]
    assert me["ansible_connection"] == "local" and me["mac"] == ME.mac
    assert groups["master"]["hosts"] == {"198.18.0.11": {}}
    assert result["status"] == "changed" and result["mode"] == "check"
    assert "cannot change its own system" in result["note"]
    assert "process_api, not systemd" in result["note"]
    assert result["stats"] == {"ok": 3, "changed": 1, "failed": 0, "skipped": 2,
                               "unreachable": 0, "ignored": 0}
    assert result["digest"] == digest(NFS_CLIENT)
    assert playbook_task.applied(settings) == {
        "nfs-client": {"applied": digest(NFS_CLIENT), "check": True}}


def test_on_a_machine_of_its_own_a_run_is_real(settings: Settings,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    script(monkeypatch, manager="systemd")
    result = run_task(settings, NFS_CLIENT)
    assert result["mode"] == "real" and "note" not in result
    assert playbook_task.applied(settings)["nfs-client"]["check"] is False


def test_a_playbook_that_finds_no_nfs_in_the_kernel_says_it_only_checked(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    script(monkeypatch, manager="systemd",
           facts={"kernel_has_nfs": False,
                  "picluster_check_mode": "this kernel has no NFS client (nfs)"})
    result = run_task(settings, NFS_CLIENT)
    assert result["mode"] == "check"
    assert result["note"] == ("this kernel has no NFS client (nfs): the playbook ran in "
                              "check mode and changed nothing")
    assert playbook_task.applied(settings)["nfs-client"]["check"] is True


def test_the_nfs_playbooks_look_for_nfs_in_the_kernel_before_anything_else() -> None:
    for name, fs in (("nfs-client", "nfs"), ("nfs-server", "nfsd")):
        (play,) = yaml.safe_load(apply.resolve(name).read_text())
        assert play["check_mode"] == "{{ nfs_check_only }}"
        assert "kernel_has_nfs" in play["vars"]["nfs_check_only"]
        probe, note = play["tasks"][:2]
        assert f"grep -qw {fs} /proc/filesystems" in probe["ansible.builtin.shell"]
        assert probe["check_mode"] is False and probe["failed_when"] is False
        assert set(note["ansible.builtin.set_fact"]) == {"kernel_has_nfs",
                                                         "picluster_check_mode"}


def test_a_failed_run_is_an_error_that_keeps_its_result_and_what_was_applied(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    script(monkeypatch)
    run_task(settings, NFS_CLIENT)
    script(monkeypatch, failed=True)
    changed = {**NFS_CLIENT, "master": ["198.18.0.20"]}
    with pytest.raises(TaskFailed) as caught:
        run_task(settings, changed)
    assert str(caught.value) == ("playbook nfs-client failed at 'Install the NFS client': "
                                 "No package matching 'nfs-common' is available")
    result = caught.value.result
    assert result["status"] == "failed" and result["stats"]["failed"] == 1
    assert result["failed_task"] == "Install the NFS client"
    # What was applied stays, with the failure of the new digest beside it.
    assert playbook_task.applied(settings)["nfs-client"] == {
        "applied": digest(NFS_CLIENT), "check": True,
        "failed": {"digest": digest(changed), "task": "Install the NFS client",
                   "message": "No package matching 'nfs-common' is available"}}
    reported = playbook_task.reported({"playbooks": playbook_task.applied(settings)},
                                      "nfs-client")
    assert reported.applied == digest(NFS_CLIENT) and reported.failed is not None
    # A later success clears the failure.
    script(monkeypatch)
    run_task(settings, changed)
    assert playbook_task.applied(settings)["nfs-client"] == {"applied": digest(changed),
                                                             "check": True}


def test_a_run_where_no_host_ran_is_a_failure_that_says_where_to_look(
        settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    script(monkeypatch, ran=False)
    with pytest.raises(TaskFailed, match=r"no host ran the playbook \(ansible-playbook exit "
                                         r"127\); its output is under .*/ansible/here/"):
        run_task(settings, NFS_CLIENT)


def test_odd_facts_report_nothing() -> None:
    for facts in ({}, {"playbooks": "x"}, {"playbooks": {"core": 3}},
                  {"playbooks": {"core": {"applied": 1, "check": "yes", "failed": "x"}}}):
        assert playbook_task.reported(facts, "core") == playbook_task.Reported()
