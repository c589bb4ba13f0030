"""`picluster mpirun`: the hostfile and host keys it uses on the master and on any other
node, and the mpirun command line it runs (a stand-in mpirun prints what it was given)."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
from helpers import Cluster, ip_of, keypair, run_cli

from picluster import layout
from picluster.gitstore import Put
from picluster.mpi import MpiError, cluster_files, mpirun_command
from picluster.settings import Settings

HOSTFILE = f"# rendered\n{ip_of(1)} slots=4\n{ip_of(2)} slots=4\n"


def registered(cluster: Cluster, count: int) -> list[Settings]:
    """`count` nodes registered (node 1 is the master), each with a host key of its own."""
    nodes = []
    for number in range(1, count + 1):
        host_key = keypair(cluster.root / f"host{number}", f"root@pi-{number}")
        config = cluster.node_config(number, host_key=f"{host_key}.pub",
                                     user_ssh_dir=cluster.root / f"ssh{number}")
        done = run_cli("register", config=config)
        assert done.returncode == 0, done.stderr
        nodes.append(Settings.load(config))
    return nodes


def commit_hostfile(cluster: Cluster, text: str = HOSTFILE) -> None:
    """What the master's render commits."""
    cluster.operator_repo().transact([Put(layout.HOSTFILE, text)], "test: render")


def test_a_worker_uses_the_committed_hostfile_and_the_registered_host_keys(
        cluster: Cluster) -> None:
    _, worker = registered(cluster, 2)
    commit_hostfile(cluster)
    hostfile, known_hosts = cluster_files(worker)
    assert (hostfile, known_hosts) == (worker.home / "mpi" / "hostfile",
                                       worker.home / "mpi" / "known_hosts")
    assert hostfile.read_text() == HOSTFILE
    keys = {f"{ip_of(n)} {' '.join((cluster.root / f'host{n}.pub').read_text().split()[:2])}"
            for n in (1, 2)}
    assert set(known_hosts.read_text().splitlines()) == keys


def test_the_master_uses_what_it_renders(cluster: Cluster) -> None:
    master, _ = registered(cluster, 2)
    commit_hostfile(cluster)
    for path in (master.hostfile, master.cluster_known_hosts):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("rendered\n")
    assert cluster_files(master) == (master.hostfile, master.cluster_known_hosts)
    assert not (master.home / "mpi").exists()


def test_no_hostfile_yet_says_so(cluster: Cluster) -> None:
    _, worker = registered(cluster, 2)
    with pytest.raises(MpiError, match="no MPI hostfile yet"):
        cluster_files(worker)
    commit_hostfile(cluster, "# rendered, nobody yet\n")
    with pytest.raises(MpiError, match="no MPI hostfile yet"):
        cluster_files(worker)


def test_the_command_checks_host_keys_and_allows_root_only_for_root(tmp_path: Path) -> None:
    ssh_dir = tmp_path / "ssh"
    ssh_dir.mkdir()
    (ssh_dir / "id_ed25519").write_text("key")
    root = Settings.parse(f"repo = /x\nuser_ssh_dir = {ssh_dir}\ninterface = end0\n")
    argv, env = mpirun_command(root, ["-np", "2", "hostname"], Path("/h"), Path("/k"))
    assert argv == ["mpirun", "--hostfile", "/h", "--mca", "btl_tcp_if_include", "end0",
                    "--mca", "oob_tcp_if_include", "end0", "-np", "2", "hostname"]
    ssh = env["OMPI_MCA_plm_rsh_agent"].split()
    assert ssh[0] == "ssh" and shlex.join(ssh) == env["OMPI_MCA_plm_rsh_agent"]
    for option in ("StrictHostKeyChecking=yes", "UserKnownHostsFile=/k", "BatchMode=yes",
                   "IdentitiesOnly=yes"):
        assert option in ssh
    assert ssh[ssh.index("-i") + 1] == str(ssh_dir / "id_ed25519")
    assert env["OMPI_ALLOW_RUN_AS_ROOT"] == env["OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] == "1"

    pi = root.replace(user="pi")
    _, env = mpirun_command(pi, [], Path("/h"), Path("/k"))
    assert "OMPI_ALLOW_RUN_AS_ROOT" not in env


def test_picluster_mpirun_runs_mpirun_and_exits_with_its_code(
        cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _, worker = registered(cluster, 2)
    commit_hostfile(cluster)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "mpirun").write_text('#!/bin/sh\necho "$@"\necho "$OMPI_MCA_plm_rsh_agent"\n'
                                 "exit 7\n")
    (fake / "mpirun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    done = run_cli("mpirun", "--", "-np", "2", "hostname", config=worker.source)
    assert done.returncode == 7, done.stderr
    args, agent = done.stdout.splitlines()
    assert args.startswith(f"--hostfile {worker.home / 'mpi' / 'hostfile'} ")
    assert args.endswith(" -np 2 hostname")
    assert f"UserKnownHostsFile={worker.home / 'mpi' / 'known_hosts'}" in agent


def test_picluster_mpirun_without_a_hostfile_says_why_in_one_line(cluster: Cluster) -> None:
    _, worker = registered(cluster, 2)
    done = run_cli("mpirun", "hostname", config=worker.source)
    assert done.returncode == 1
    assert done.stderr.startswith("picluster: the cluster has no MPI hostfile yet")
    assert done.stderr.count("\n") == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="root hands mpirun to the cluster's user")
def test_root_runs_it_all_as_the_cluster_s_user(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "node.conf"
    config.write_text(f"repo = {tmp_path / 'none.git'}\nuser = pi\n")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "runuser").write_text('#!/bin/sh\necho "$@"\nexit 5\n')
    (fake / "runuser").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
    done = run_cli("mpirun", "--", "-np", "2", "hostname", config=config)
    assert done.returncode == 5, done.stderr
    assert done.stdout.startswith("-u pi -- ")  # before it reads or writes anything
    assert done.stdout.rstrip().endswith(f"--config {config} mpirun -- -np 2 hostname")
