"""`picluster mpirun`: OpenMPI over the cluster's hostfile, from any node.

The master renders the hostfile and the nodes' host keys into its home; any other node
reads the same from the cluster repository, read-only: the `hostfile` the master commits
and the host keys nodes registered in local-vars/nodes/.  mpirun then starts its ranks over
ssh as the cluster's user, with every host key checked against the registered ones (ssh
reads them from a known_hosts file given to it through OMPI_MCA_plm_rsh_agent).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from picluster import layout
from picluster.files import install_file
from picluster.gitstore import ClusterRepo, GitError
from picluster.identity import IdentityError, identify, writer_name
from picluster.registry import read_membership
from picluster.settings import Settings

__all__ = ["MpiError", "cluster_files", "mpirun", "mpirun_command"]

# The identities `picluster boot` installs the cluster key as, in the user's ssh directory.
_IDENTITIES = ("id_ed25519", "id_ecdsa", "id_rsa")


class MpiError(RuntimeError):
    """mpirun cannot start: no hostfile yet, or the repository cannot be read."""


def _is_me(settings: Settings, mac: str | None) -> bool:
    try:
        return mac is not None and identify(settings).mac == mac
    except IdentityError:
        return False


def cluster_files(settings: Settings) -> tuple[Path, Path]:
    """The hostfile and known_hosts mpirun uses: on the master, those it renders; on any
    other node those of the repository, written under the node's home (`mpi/`)."""
    try:
        snapshot = ClusterRepo.from_settings(settings, writer_name(settings)).sync()
    except GitError as error:
        raise MpiError(f"cannot read the cluster repository {settings.repo}: {error}") \
            from None
    membership = read_membership(snapshot)
    rendered = (settings.hostfile, settings.cluster_known_hosts)
    if _is_me(settings, membership.master) and all(path.is_file() for path in rendered):
        return rendered
    hostfile = snapshot.read(layout.HOSTFILE) or ""
    if not any(line.split("#", 1)[0].strip() for line in hostfile.splitlines()):
        raise MpiError("the cluster has no MPI hostfile yet: the master renders it once its "
                       "grace period is over (see `picluster status`)")
    known = "".join(f"{member.ip} {member.host_key}\n"
                    for member in membership.members if member.host_key)
    directory = settings.home / "mpi"
    install_file(directory / "hostfile", hostfile)
    install_file(directory / "known_hosts", known)
    return directory / "hostfile", directory / "known_hosts"


def _identity(settings: Settings) -> Path | None:
    """The cluster key as `picluster boot` installed it for the user; else the boot
    partition's copy."""
    found = (settings.account_ssh_dir / name for name in _IDENTITIES)
    return next((path for path in found if path.is_file()), settings.ssh_key)


def mpirun_command(settings: Settings, args: Sequence[str], hostfile: Path,
                   known_hosts: Path) -> tuple[list[str], dict[str, str]]:
    """mpirun's argv and the environment variables it needs on top of this process's."""
    ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
           "-o", f"UserKnownHostsFile={known_hosts}", "-o", "ConnectTimeout=10"]
    identity = _identity(settings)
    if identity is not None:
        ssh += ["-i", str(identity), "-o", "IdentitiesOnly=yes"]
    # OpenMPI splits the agent on blanks, without quoting.
    env = {"OMPI_MCA_plm_rsh_agent": " ".join(ssh)}
    if settings.user in (None, "root"):
        # The cluster's user is root: OpenMPI refuses it unless told twice.
        env |= {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    argv = ["mpirun", "--hostfile", str(hostfile),
            "--mca", "btl_tcp_if_include", settings.interface,
            "--mca", "oob_tcp_if_include", settings.interface, *args]
    return argv, env


def mpirun(settings: Settings, args: Sequence[str]) -> int:
    """Run mpirun with `args` over the cluster's hostfile, as the cluster's user; returns
    mpirun's exit status.  Root, where the boot config names another `user`, runs all of
    it as that user (then the fetch into the node's clone writes no file of root's)."""
    if os.geteuid() == 0 and settings.user not in (None, "root"):
        command = [sys.executable, "-m", "picluster", "--config", str(settings.source),
                   "mpirun", "--", *args]
        return subprocess.run(["runuser", "-u", str(settings.user), "--", *command],
                              check=False).returncode
    hostfile, known_hosts = cluster_files(settings)
    argv, extra = mpirun_command(settings, args, hostfile, known_hosts)
    try:
        return subprocess.run(argv, env={**os.environ, **extra}, check=False).returncode
    except FileNotFoundError:
        raise MpiError("mpirun is not installed on this node; install OpenMPI with "
                       "`picluster apply openmpi` on the master") from None
