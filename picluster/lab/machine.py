"""What the lab needs of this machine: root, and the programs it runs, found on one PATH."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from picluster.lab.errors import LabError

__all__ = ["MACHINE_REQUIRED", "REQUIRED", "preflight", "require_root", "search_path"]

# Every executable the lab runs, and the Debian package that has it.
REQUIRED = {
    "ip": "iproute2",
    "nsenter": "util-linux",
    "unshare": "util-linux",
    "mount": "mount",
    "sshd": "openssh-server",
    "ssh-keygen": "openssh-client",
    "git": "git",
    "mpirun": "openmpi-bin",
    "gmond": "ganglia-monitor",
    "gmetad": "gmetad",
}

# What machine nodes need besides (picluster lab up --machines).
MACHINE_REQUIRED = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "dpkg-scanpackages": "dpkg-dev",
}

# sshd and ip live in sbin, which a non-login root shell may not have on its PATH.
_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")

_NOT_ROOT = ("picluster lab must run as root: it creates and enters network namespaces "
             "(try: sudo picluster lab ...)")


def search_path() -> str:
    """PATH for everything the lab runs: this Python's bin first (the agent runs Ansible
    from it), then the caller's PATH, then sbin."""
    parts = [str(Path(sys.executable).parent), *os.environ.get("PATH", "").split(os.pathsep),
             *_SBIN]
    return os.pathsep.join(dict.fromkeys(part for part in parts if part))


def require_root() -> None:
    if os.geteuid() != 0:
        raise LabError(_NOT_ROOT, code=2)


def preflight(*, machines: bool = False) -> list[str]:
    """What stops a lab (of machine nodes, with `machines`) from starting here, as
    sentences that say how to fix it."""
    problems = [] if os.geteuid() == 0 else [_NOT_ROOT]
    path = search_path()
    required = {**REQUIRED, **(MACHINE_REQUIRED if machines else {})}
    missing = sorted({package for exe, package in required.items()
                      if not shutil.which(exe, path=path)})
    if missing:
        problems.append("missing packages; install them with:\n"
                        f"  apt-get install -y {' '.join(missing)}")
    return problems
