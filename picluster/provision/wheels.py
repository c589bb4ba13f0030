"""The wheels a card carries, so that first boot installs exactly this picluster.

`build_wheel` makes the wheel of the picluster that is running, from its source; a card
gets it with its sha256 (SHA256SUMS, which picluster-firstboot.sh checks before it installs
anything).  For Pis without the internet, `download_wheels` fetches the wheels of its
dependencies for the Pi's platform (pip download, never built here), and a wheelhouse
made that way can be given to prepare-boot again and again.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

from picluster.provision.common import BootError

__all__ = [
    "DEFAULT_ARCH",
    "DEFAULT_PYTHON",
    "SUMS",
    "WHEELS_DIR",
    "build_wheel",
    "download_wheels",
    "is_picluster_wheel",
    "sha256",
    "source_root",
    "sums_text",
]

WHEELS_DIR = "picluster-wheels"  # on the card: picluster's wheel, and its dependencies'
SUMS = "SHA256SUMS"  # in WHEELS_DIR: `sha256sum` lines for every wheel there
# A 64-bit Raspberry Pi OS (Bookworm): aarch64, glibc 2.36, Python 3.11.
DEFAULT_ARCH = "aarch64"
DEFAULT_PYTHON = "3.11"
_GLIBC_MINOR = 36
# What the build never needs from a source tree (and must not copy: .venv is large).
_NOT_SOURCE = (".git", ".venv", "venv", "__pycache__", "build", "dist", "*.egg-info",
               ".pytest_cache", ".ruff_cache", "tests", "bench")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def sums_text(wheels: list[Path]) -> str:
    """SHA256SUMS for `wheels`, in `sha256sum` format (names relative to their folder)."""
    return "".join(f"{sha256(wheel)}  {wheel.name}\n" for wheel in wheels)


def is_picluster_wheel(path: Path) -> bool:
    return path.name.startswith("picluster-") and path.suffix == ".whl"


def source_root() -> Path | None:
    """The source tree of the running picluster (pyproject.toml naming it), if it runs from
    one; an installed wheel has none."""
    root = Path(__file__).resolve().parents[2]
    try:
        project = tomllib.loads((root / "pyproject.toml").read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    return root if project.get("project", {}).get("name") == "picluster" else None


def _pip(*args: str, what: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        last = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise BootError(f"{what} failed: {last[-1] if last else f'pip exit {done.returncode}'}",
                        code=1)


def build_wheel(dest: Path) -> Path:
    """Build the wheel of the running picluster into `dest` from a copy of its source (the
    source tree stays as it is); BootError when it runs from no source tree."""
    root = source_root()
    if root is None:
        raise BootError("this picluster was not installed from a source tree, so it cannot "
                        "build its own wheel; give one with --wheel")
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="picluster-wheel-") as scratch:
        copy = Path(scratch) / "src"
        shutil.copytree(root, copy, ignore=shutil.ignore_patterns(*_NOT_SOURCE))
        out = Path(scratch) / "out"
        _pip("wheel", "--no-deps", "--quiet", "--wheel-dir", str(out), str(copy),
             what=f"building picluster's wheel from {root}")
        (built,) = out.glob("picluster-*.whl")
        return Path(shutil.copy2(built, dest / built.name))


def platform_tags(arch: str) -> list[str]:
    """pip's platform tags of a Debian 12 (glibc 2.36) machine of `arch`, newest first."""
    return [*(f"manylinux_2_{minor}_{arch}" for minor in range(_GLIBC_MINOR, 16, -1)),
            f"manylinux2014_{arch}", f"linux_{arch}"]


def download_wheels(wheel: Path, dest: Path, *, arch: str = DEFAULT_ARCH,
                    python_version: str = DEFAULT_PYTHON) -> list[Path]:
    """Download the wheels of `wheel`'s dependencies for `arch` and CPython
    `python_version` into `dest` (binary wheels only: a Pi builds nothing); returns them."""
    abi = "cp" + python_version.replace(".", "")
    platforms = [arg for tag in platform_tags(arch) for arg in ("--platform", tag)]
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="picluster-wheels-") as scratch:
        _pip("download", "--quiet", "--only-binary=:all:", "--dest", scratch, *platforms,
             "--python-version", python_version, "--implementation", "cp", "--abi", abi,
             "--abi", "abi3", "--abi", "none", str(wheel),
             what=f"downloading picluster's dependencies for {arch} Python {python_version}")
        # pip saves the requirement itself there too: the dependencies are the others.
        return sorted(Path(shutil.copy2(path, dest / path.name))
                      for path in Path(scratch).glob("*.whl") if not is_picluster_wheel(path))
