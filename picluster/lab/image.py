"""The disk a machine node boots from, built once on this machine and cached.

An Image is a Debian 12 root file system made with debootstrap from this machine's Debian
mirror: what a fresh Raspberry Pi OS Lite has that first boot relies on (systemd, sshd,
Python, cloud-init) and nothing of picluster's.  Beside it lies the node's package mirror:
a local Debian repository of the .debs first boot and the playbooks install, fetched with
apt on this machine, since lab nodes have no route to any mirror.  Nodes see both read-only
(each node writes into an overlay of its own).

The nodes' Python packages come from a wheelhouse, downloaded here once per set of
picluster's requirements, for the nodes' Python and this machine's architecture; a node's
card gets them with prepare-boot --wheelhouse, as a Pi without the internet would.

The cache directory (/var/cache/picluster-lab, or $PICLUSTER_LAB_CACHE) holds one image per
recipe: the key hashes the mirror, the suite, both package lists and the configuration, so
changing any of them builds a new image and never touches one a running node uses.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from picluster.lab.errors import LabError, run
from picluster.provision import BootError
from picluster.provision.wheels import download_wheels

__all__ = [
    "APT_MOUNT",
    "BASE_PACKAGES",
    "CACHE_ENV",
    "NODE_PACKAGES",
    "NODE_PYTHON",
    "Image",
    "cache_dir",
    "debian_mirror",
    "ensure_image",
    "ensure_wheelhouse",
]

CACHE_ENV = "PICLUSTER_LAB_CACHE"
_DEFAULT_CACHE = Path("/var/cache/picluster-lab")
_SUITE = "bookworm"
NODE_PYTHON = "3.11"  # the suite's python3
_DEFAULT_MIRROR = "http://deb.debian.org/debian"

# A fresh Raspberry Pi OS Lite, as far as first boot goes: systemd and D-Bus (hostnamectl),
# sshd, Python, cloud-init, sudo and ps.  No git, no picluster, no OpenMPI, no Ganglia.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "iproute2", "openssh-server", "python3",
                 "cloud-init", "sudo", "procps",
                 # debootstrap does not resolve virtual packages: cloud-init's cryptography
                 # needs python3-cffi-backend-api-*, which this one provides.
                 "python3-cffi-backend")
# The node's mirror: what picluster-firstboot.sh installs (git, python3-venv), and what the
# playbooks do (openmpi, ganglia, nfs; Ansible's apt module needs python3-apt).  The NFS
# packages are there for the NFS playbooks' check mode: this kernel has no NFS to run them.
NODE_PACKAGES = ("git", "python3-venv", "openssh-client", "python3-apt", "openmpi-bin",
                 "libopenmpi-dev", "python3-mpi4py", "ganglia-monitor", "gmetad",
                 "nfs-common", "nfs-kernel-server")
# Where nodes see the local repository, and the apt source that names it.
APT_MOUNT = "/srv/picluster-lab/debs"
_APT_SOURCE = f"deb [trusted=yes] file:{APT_MOUNT} ./\n"

# What the image is configured with, beyond its packages (part of the cache key).
_FILES = {
    # NoCloud from the boot partition, as Raspberry Pi OS with cloud-init reads it.  The lab
    # sets each node's address as a DHCP server would, and the local repository is the
    # node's mirror: cloud-init configures neither.
    "etc/cloud/cloud.cfg.d/99-picluster-lab.cfg": (
        "# picluster lab: the boot partition is the NoCloud seed, as on Raspberry Pi OS.\n"
        "datasource_list: [ NoCloud, None ]\n"
        "datasource:\n  NoCloud:\n    seedfrom: file:///boot/firmware/\n"
        "network: {config: disabled}\n"
        "apt: {preserve_sources_list: true}\n"),
    # cloud-init's locale module then has nothing to do (minbase has no `locales`).
    "etc/default/locale": "LANG=C.UTF-8\n",
    "etc/hostname": "raspberrypi\n",
    "etc/hosts": "127.0.0.1\tlocalhost\n::1\t\tlocalhost ip6-localhost ip6-loopback\n"
                 "127.0.1.1\traspberrypi\n",
    "etc/apt/sources.list": _APT_SOURCE,
    # Each node gets its own identity at first boot: systemd a machine id, cloud-init the
    # ssh host keys (removed below).
    "etc/machine-id": "",
}
# Units that reach for the internet or a disk the node does not have: they would only fail.
_MASKED = ("apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
           "e2scrub_reap.service", "systemd-networkd-wait-online.service")
_RECIPE = 1  # bump when the building steps change in a way the key does not see


def cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or _DEFAULT_CACHE)


def debian_mirror(apt_dir: Path = Path("/etc/apt")) -> str:
    """This machine's Debian mirror for the suite, as its apt sources name it (one-line
    and deb822 formats); deb.debian.org when none does."""
    files = [apt_dir / "sources.list", *sorted((apt_dir / "sources.list.d").glob("*.list")),
             *sorted((apt_dir / "sources.list.d").glob("*.sources"))]
    for path in files:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            for stanza in text.split("\n\n"):
                fields = dict(line.split(":", 1) for line in stanza.splitlines()
                              if ":" in line and not line.startswith("#"))
                suites = fields.get("Suites", "").split()
                if "deb" in fields.get("Types", "").split() and _SUITE in suites:
                    return fields.get("URIs", "").split()[0].rstrip("/")
            continue
        for line in text.splitlines():
            words = [word for word in line.split("#", 1)[0].split()
                     if not word.startswith("[")]
            if words[:1] == ["deb"] and len(words) > 2 and words[2] == _SUITE:
                return words[1].rstrip("/")
    return _DEFAULT_MIRROR


@dataclass(frozen=True)
class Image:
    """A built image: the root file system and the local repository beside it."""

    dir: Path

    @property
    def root(self) -> Path:
        return self.dir / "root"

    @property
    def debs(self) -> Path:
        return self.dir / "debs"

    @property
    def manifest(self) -> Path:
        return self.dir / "image.json"


def _recipe(mirror: str) -> dict[str, object]:
    return {"recipe": _RECIPE, "suite": _SUITE, "mirror": mirror,
            "arch": platform.machine(), "base": sorted(BASE_PACKAGES),
            "node": sorted(NODE_PACKAGES), "files": _FILES, "masked": sorted(_MASKED)}


def image_for(mirror: str, cache: Path | None = None) -> Image:
    """The image the current recipe builds from `mirror` (built or not)."""
    key = hashlib.sha256(json.dumps(_recipe(mirror), sort_keys=True).encode()).hexdigest()
    return Image((cache or cache_dir()) / f"debian-{_SUITE}-{key[:12]}")


@contextlib.contextmanager
def _locked(cache: Path) -> Iterator[None]:
    """One build at a time, whichever lab asks: the second waits, then finds it built."""
    cache.mkdir(parents=True, exist_ok=True)
    with (cache / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _fresh(directory: Path) -> Path:
    """A scratch directory to build `directory` in, rid of what a dead build left."""
    scratch = directory.with_name(directory.name + ".building")
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    return scratch


def ensure_image(report: Callable[[str], None] = lambda _step: None) -> Image:
    """The current image, built first if the cache has none (minutes, once)."""
    mirror = debian_mirror()
    image = image_for(mirror)
    if image.manifest.is_file():
        return image
    with _locked(image.dir.parent):
        if image.manifest.is_file():
            return image
        report(f"building the machine image from {mirror} (once)")
        _build(image, mirror)
    return image


def _chroot(root: Path, *argv: str) -> str:
    env = ["env", "DEBIAN_FRONTEND=noninteractive", "LC_ALL=C.UTF-8"]
    return run("chroot", str(root), *env, *argv)


def _build(image: Image, mirror: str) -> None:
    started = time.monotonic()
    scratch = _fresh(image.dir)
    root, debs = scratch / "root", scratch / "debs"
    run("debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
        _SUITE, str(root), mirror)
    # The node's mirror, fetched through the image's own apt (from the mirror debootstrap
    # configured), so it holds exactly what the image lacks.
    shutil.copy2("/etc/resolv.conf", root / "etc" / "resolv.conf")
    _chroot(root, "apt-get", "update", "-q")
    _chroot(root, "apt-get", "install", "-q", "-y", "--download-only", *NODE_PACKAGES)
    debs.mkdir()
    archives = root / "var" / "cache" / "apt" / "archives"
    for deb in archives.glob("*.deb"):
        shutil.move(deb, debs / deb.name)
    # A flat repository: its Packages index names each .deb relative to itself.
    scan = subprocess.run(["dpkg-scanpackages", "--multiversion", "."], cwd=debs,
                          capture_output=True, text=True, check=False)
    if scan.returncode:
        raise LabError(f"dpkg-scanpackages failed in {debs}: {scan.stderr.strip()}")
    (debs / "Packages").write_text(scan.stdout)
    _chroot(root, "apt-get", "clean")
    shutil.rmtree(root / "var" / "lib" / "apt" / "lists")
    (root / "var" / "lib" / "apt" / "lists" / "partial").mkdir(parents=True)
    (root / "etc" / "resolv.conf").unlink()
    for name, text in _FILES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    for key in (root / "etc" / "ssh").glob("ssh_host_*"):
        key.unlink()
    (root / "var" / "lib" / "dbus" / "machine-id").unlink(missing_ok=True)
    (root / APT_MOUNT.lstrip("/")).mkdir(parents=True)
    (root / "boot" / "firmware").mkdir(parents=True, exist_ok=True)
    _chroot(root, "systemctl", "mask", *_MASKED)
    scratch.joinpath("image.json").write_text(json.dumps(
        {**_recipe(mirror), "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
         "seconds": round(time.monotonic() - started, 1),
         "debs": sorted(path.name for path in debs.glob("*.deb"))}, indent=2) + "\n")
    # The finished image appears at once, whole, under its key.
    os.replace(scratch, image.dir)


def _requirements(wheel: Path) -> list[str]:
    """The Requires-Dist lines of a wheel's metadata."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(name for name in archive.namelist()
                    if name.endswith(".dist-info/METADATA"))
        metadata = archive.read(name).decode()
    return sorted(line for line in metadata.splitlines() if line.startswith("Requires-Dist:"))


def ensure_wheelhouse(wheel: Path, report: Callable[[str], None] = lambda _step: None) -> Path:
    """The wheels of `wheel`'s dependencies for the nodes' Python on this machine's
    architecture, downloaded once per set of requirements."""
    recipe = {"requires": _requirements(wheel), "python": NODE_PYTHON,
              "arch": platform.machine()}
    key = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
    directory = cache_dir() / f"wheels-{key[:12]}"
    manifest = directory / "wheels.json"
    if manifest.is_file():
        return directory
    with _locked(directory.parent):
        if manifest.is_file():
            return directory
        report("downloading the wheels of picluster's dependencies (once)")
        scratch = _fresh(directory)
        try:
            wheels = download_wheels(wheel, scratch, arch=platform.machine(),
                                     python_version=NODE_PYTHON)
        except BootError as error:
            raise LabError(str(error)) from None
        (scratch / "wheels.json").write_text(json.dumps(
            {**recipe, "wheels": [path.name for path in wheels]}, indent=2) + "\n")
        os.replace(scratch, directory)
    return directory
