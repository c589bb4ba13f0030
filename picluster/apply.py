"""The cluster's playbooks (tasks/ in the source tree): finding them, and applying one from
the master against the inventory its agent renders.

The playbooks ship inside picluster (package data `picluster/playbooks`, mapped from
tasks/ by pyproject.toml), never from the cluster repository: a playbook is code that
runs as root on every node, and pushing to the repository must not be a way to run code
on every Pi (docs/design.md).  The repository holds data; the installed package holds code.
"""

from __future__ import annotations

from pathlib import Path

from filelock import FileLock, Timeout

from picluster import ansible
from picluster.settings import Settings

__all__ = ["PlaybookError", "apply", "playbook_dir", "resolve", "shipped"]

_PACKAGE = Path(__file__).resolve().parent
# An installed picluster has them as package data; a source checkout (an editable
# install, the lab) has tasks/ beside the package.
_CANDIDATES = (_PACKAGE / "playbooks", _PACKAGE.parent / "tasks")


class PlaybookError(ValueError):
    """Bad input: no such playbook, or nothing to run it against."""


def playbook_dir() -> Path:
    """The directory of the playbooks picluster ships (site.yml marks it)."""
    for candidate in _CANDIDATES:
        if (candidate / "site.yml").is_file():
            return candidate
    raise PlaybookError(f"picluster's playbooks are missing (looked in "
                        f"{', '.join(map(str, _CANDIDATES))}); reinstall picluster")


def shipped() -> list[str]:
    """The names of the shipped playbooks: core, openmpi, ..., site."""
    return sorted(path.stem for path in playbook_dir().glob("*.yml"))


def resolve(name: str) -> Path:
    """`core` (or `core.yml`) is the shipped core.yml; a path with a slash (./mine.yml) is
    that file, a playbook of the operator's own."""
    if "/" in name:
        path = Path(name).expanduser()
        if not path.is_file():
            raise PlaybookError(f"{name}: no such playbook file")
        return path
    path = playbook_dir() / f"{name.removesuffix('.yml')}.yml"
    if not path.is_file():
        raise PlaybookError(f"no playbook '{name}'; picluster ships {', '.join(shipped())}, "
                            "or give a path to a playbook file")
    return path


def apply(settings: Settings, name: str, *, limit: str | None = None,
          check: bool = False) -> ansible.AnsibleRun:
    """Run playbook `name` (see `resolve`) against the rendered inventory, host keys
    checked against the rendered known_hosts; the per-host results are in `.hosts`."""
    path = resolve(name)
    for what, rendered in (("inventory", settings.inventory_file),
                           ("known_hosts", settings.cluster_known_hosts)):
        if not rendered.is_file():
            raise PlaybookError(
                f"no {what} at {rendered}: the master's agent renders it from the registry; "
                "run apply on the master (with its boot config) once its agent is running")
    # As the prototype did: one playbook run at a time (apt's lock, Ansible's artifacts).
    lock = FileLock(settings.ansible_dir.parent / "playbook.lock")
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise PlaybookError(f"another playbook run holds {lock.lock_file}; wait for it to "
                            "finish") from None
    try:
        return ansible.playbook(settings, path, settings.inventory_file,
                                settings.cluster_known_hosts, limit=limit, check=check)
    finally:
        lock.release()
