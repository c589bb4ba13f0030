"""The `hosts` task (picluster.cluster_files): the MPI hostfile, picluster's blocks of
/etc/hosts and ssh's known hosts, the NFS server; every other line left as it was."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from picluster import cluster_files
from picluster.cluster_files import BEGIN, END, args_for, digest, install, managed_block
from picluster.node import catalogue
from picluster.registry import Member, Membership
from picluster.settings import Settings
from picluster.tasks import TaskContext, TaskError

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAbc"
MEMBERSHIP = Membership((
    Member("b827eb000003", "198.18.0.13", {"hostname": "pi-3", "cores": 4, "host_key": KEY}),
    Member("b827eb000001", "198.18.0.11", {"hostname": "pi-1", "cores": 4, "host_key": KEY}),
    # No name nor key of its own (an odd one is none), and 198.18.0.9 sorts before .11.
    Member("b827eb000009", "198.18.0.9", {"hostname": "bad name", "host_key": "x\ny"}),
), "b827eb000003")


def test_args_put_the_master_first_then_the_workers_by_address() -> None:
    args = args_for(MEMBERSHIP)
    assert args == {"nfs_server": "198.18.0.13", "hosts": [
        {"ip": "198.18.0.13", "slots": 4, "name": "pi-3", "key": KEY},
        {"ip": "198.18.0.9", "slots": 1, "name": "", "key": ""},
        {"ip": "198.18.0.11", "slots": 4, "name": "pi-1", "key": KEY}]}
    assert digest(args) == digest(args_for(MEMBERSHIP))
    fewer = Membership(MEMBERSHIP.members[:2], MEMBERSHIP.master)
    assert digest(args_for(fewer)) != digest(args)


@pytest.mark.parametrize(("host", "words"), [
    ({"ip": "198.18.0.1", "slots": 1, "name": "{{ lookup('pipe', 'id') }}"}, "a host name"),
    ({"ip": "198.18.0.1", "slots": 1, "name": "pi-1\n198.18.0.66 evil"}, "a host name"),
    ({"ip": "198.18.0.1", "slots": 1, "key": KEY + "\n* ssh-ed25519 AAAA"}, "an ssh host key"),
    ({"ip": "198.18.0.1 pi-1", "slots": 1}, "must be an IPv4 address"),
    ({"ip": "198.18.0.1", "slots": 0}, "'slots' must be a whole number from 1 to 1024"),
    ({"ip": "198.18.0.1"}, "'slots' is missing"),
    ("198.18.0.1", "must be an object with ip, slots, name, key"),
])
def test_the_files_take_checked_values_only(host: Any, words: str) -> None:
    with pytest.raises(TaskError) as caught:
        catalogue.check("hosts", {"hosts": [host], "nfs_server": "198.18.0.1"})
    assert words in str(caught.value) and "hosts[0]" in str(caught.value)


def test_the_block_is_appended_once_then_replaced_in_place() -> None:
    mine = "127.0.0.1 localhost\n127.0.1.1 pi-1\n"
    first = managed_block(mine, ["198.18.0.11 pi-1"])
    assert first == f"{mine}{BEGIN}\n198.18.0.11 pi-1\n{END}\n"
    # The operator's lines after the block stay after it.
    edited = first + "198.19.0.1 nas\n"
    assert managed_block(edited, ["198.18.0.11 pi-1", "198.18.0.12 pi-2"]) == \
        f"{mine}{BEGIN}\n198.18.0.11 pi-1\n198.18.0.12 pi-2\n{END}\n198.19.0.1 nas\n"
    assert managed_block(managed_block(edited, []), []) == f"{mine}{BEGIN}\n{END}\n198.19.0.1 nas\n"
    assert managed_block("", ["x"]) == f"{BEGIN}\nx\n{END}\n"
    # A BEGIN whose END was deleted: only the block that ends counts; nothing of the
    # operator's between them is lost.
    broken = f"{BEGIN}\n198.19.0.2 printer\n{BEGIN}\nold\n{END}\n"
    assert managed_block(broken, ["new"]) == f"{BEGIN}\n198.19.0.2 printer\n{BEGIN}\nnew\n{END}\n"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings.parse(f"repo = /x\nhome = {tmp_path / 'home'}\netc_dir = {tmp_path / 'etc'}\n"
                          "mac = b827eb000009\nip = 198.18.0.9\n")


def test_install_writes_the_hostfile_hosts_known_hosts_and_the_nfs_server(
        settings: Settings) -> None:
    settings.etc_hosts.parent.mkdir(parents=True)
    settings.etc_hosts.write_text("127.0.0.1 localhost\n")
    settings.etc_hosts.chmod(0o640)
    args = args_for(MEMBERSHIP)
    assert install(settings, args) == [str(p) for p in (
        settings.cluster_hostfile, settings.etc_hosts, settings.ssh_known_hosts,
        settings.cluster_files_state)]
    assert settings.cluster_hostfile.read_text().splitlines()[1:] == [
        "198.18.0.13 slots=4", "198.18.0.9 slots=1", "198.18.0.11 slots=4"]
    assert settings.etc_hosts.read_text() == (
        f"127.0.0.1 localhost\n{BEGIN}\n198.18.0.13 pi-3\n198.18.0.11 pi-1\n{END}\n")
    assert settings.etc_hosts.stat().st_mode & 0o777 == 0o640  # its mode kept
    assert settings.ssh_known_hosts.read_text() == (
        f"{BEGIN}\n198.18.0.13,pi-3 {KEY}\n198.18.0.11,pi-1 {KEY}\n{END}\n")
    state = json.loads(settings.cluster_files_state.read_text())
    assert state == {"version": digest(args), "nfs_server": "198.18.0.13", "nodes": 3}
    assert cluster_files.applied_digest(settings) == digest(args)
    assert install(settings, args) == []  # the same files: nothing rewritten


def test_the_task_installs_and_reports_the_version(settings: Settings) -> None:
    function = catalogue.get("hosts")
    assert function is not None
    context = TaskContext(settings, None, dict)  # type: ignore[arg-type]
    result = function(args_for(MEMBERSHIP), context)
    assert result["version"] == digest(args_for(MEMBERSHIP)) and result["nodes"] == 3
    assert result["nfs_server"] == "198.18.0.13"
    assert cluster_files.reported({"cluster_files": result["version"]}) == result["version"]
    assert cluster_files.reported({"cluster_files": 3}) is None
    # The node's new facts (its registration) go out with the outcome.
    assert any(op.path.startswith("local-vars/nodes/b827eb000009") for op in context.ops)
