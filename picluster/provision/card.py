"""The operator's SD-card tool: `picluster prepare-boot`.

`prepare_boot` runs on the operator's machine and writes into a mounted boot partition
(FAT, which any computer can write): the boot config, the cluster key, the operator's
public key as the node's trust anchor (with --signer), the empty `ssh` file that enables
sshd on Raspberry Pi OS, the wheel of the picluster that runs it (with its sha256, and for
a Pi without the internet its dependencies' wheels too), and the first-boot hooks.  Both
hooks run picluster-firstboot.sh, which checks the wheel, installs it into /opt/picluster
and runs `picluster boot` (picluster.provision.firstboot):

*   images with cloud-init run the `runcmd` that `user-data` (#cloud-config) gains;
*   images without cloud-init run picluster-firstrun.sh through ``systemd.run=`` on
    cmdline.txt, as Raspberry Pi Imager runs its firstrun.sh: the one standard hook that
    a boot partition alone can set up (the root file system is ext4, which most
    operators' machines cannot write).  It installs a unit that runs the first boot
    once the network is online, and removes itself.

The card is written all or nothing.  Nothing here loads the agent's dependencies.
"""

from __future__ import annotations

import contextlib
import logging
import shlex
import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from picluster.files import install_file
from picluster.provision.common import BootError, package_text, public_key
from picluster.provision.wheels import (
    DEFAULT_ARCH,
    DEFAULT_PYTHON,
    SUMS,
    WHEELS_DIR,
    build_wheel,
    download_wheels,
    is_picluster_wheel,
    sums_text,
)
from picluster.settings import ConfigError, Settings
from picluster.signing import SignatureError, signer_line

__all__ = [
    "ANCHOR_NAME",
    "CONFIG_NAME",
    "DEFAULT_MOUNT",
    "FIRSTBOOT",
    "FIRSTRUN",
    "KEY_NAME",
    "RUNCMD",
    "Prepared",
    "anchor_text",
    "boot_config",
    "prepare_boot",
]

log = logging.getLogger(__name__)

CONFIG_NAME = "picluster.conf"
KEY_NAME = "picluster_key"
ANCHOR_NAME = "picluster_signers"
FIRSTBOOT = "picluster-firstboot.sh"
FIRSTRUN = "picluster-firstrun.sh"
# Where the node mounts its boot partition: Raspberry Pi OS Bookworm and later, Ubuntu.
# Bullseye and older mount it at /boot.
DEFAULT_MOUNT = "/boot/firmware"
# Every Raspberry Pi boot partition has these, whatever the model and release.
_BOOT_MARKERS = ("config.txt", "cmdline.txt")
# NoCloud's seed: an image that reads user-data has (or is given) meta-data beside it.
_CLOUD_INIT_SEED = "meta-data"
_FIRSTRUN_ARGS = ("systemd.run={mount}/" + FIRSTRUN, "systemd.run_success_action=reboot",
                  "systemd.unit=kernel-command-line.target")
# cloud-init does not know where this image mounts the boot partition; the shell finds it.
RUNCMD = ["sh", "-c", "for b in /boot/firmware /boot; do if [ -f $b/" + FIRSTBOOT + " ]; "
          "then exec sh $b/" + FIRSTBOOT + "; fi; done; "
          "echo picluster: no boot partition holds " + FIRSTBOOT + " >&2; exit 1"]


@dataclass(frozen=True)
class Prepared:
    """What prepare_boot wrote: the CLI reports it."""

    boot_dir: Path
    written: tuple[str, ...]  # the files this run wrote, relative to the boot partition
    hooks: tuple[str, ...]  # "cloud-init", and "firstrun" on images without cloud-init
    wheel: str | None  # the picluster wheel on the card (None: --package)
    dependencies: int  # how many dependency wheels the card carries (0: from the index)


def boot_config(repo: str, *, master: bool, hostname: str | None,
                anchor: bool = False) -> str:
    """The picluster.conf prepare-boot writes, next to the cluster key (KEY_NAME) and,
    with `anchor`, the trust anchor (ANCHOR_NAME)."""
    lines = ["# picluster boot config, written by `picluster prepare-boot`.",
             "# Keys and defaults: picluster/settings.py; paths are relative to this file.",
             f"repo = {repo}", f"ssh_key = {KEY_NAME}"]
    if anchor:
        lines.append(f"trust_anchor = {ANCHOR_NAME}")
    if master:
        lines.append("master = true")
    if hostname:
        lines.append(f"hostname = {hostname}")
    return "\n".join(lines) + "\n"


def anchor_text(public_key: str, name: str) -> str:
    """The trust anchor (ANCHOR_NAME): an allowed-signers file naming the operator, who
    may sign tasks and changes to allowed_signers.  SignatureError for a bad key or name."""
    return ("# The signers this node trusts from its first boot, whatever the cluster "
            "repository says\n# (picluster prepare-boot --signer).\n"
            + signer_line(public_key, name, admin=True) + "\n")


def _cloud_config(text: str) -> dict[str, object] | None:
    """The settings of a #cloud-config picluster can add a runcmd to, else None."""
    if not text.strip():
        return {}
    if not text.startswith("#cloud-config"):
        return None
    try:
        loaded = yaml.safe_load(text)
    except yaml.YAMLError:
        return None
    if loaded is None:
        return {}
    if isinstance(loaded, dict) and isinstance(loaded.get("runcmd") or [], list):
        return loaded
    return None


def _user_data(existing: str | None, force: bool) -> str:
    """`user-data` with picluster's runcmd added once.  Another #cloud-config (Raspberry
    Pi Imager writes the user, Wi-Fi and ssh keys there) keeps all its settings."""
    config = _cloud_config(existing) if existing is not None else {}
    if config is None:
        if not force:
            raise BootError("user-data exists and is not a #cloud-config that picluster can "
                            "add to; pass --force to replace it")
        config = {}
    runcmd = config.get("runcmd") or []
    assert isinstance(runcmd, list)
    config["runcmd"] = [*(command for command in runcmd if command != RUNCMD), RUNCMD]
    return ("#cloud-config\n# picluster prepare-boot added the last runcmd: it installs "
            "picluster and runs `picluster boot`.\n"
            + yaml.safe_dump(config, sort_keys=False, width=1000, default_flow_style=None))


def _cmdline_with_firstrun(text: str, mount: str) -> str:
    """cmdline.txt (one line; the firmware ignores any other) that runs picluster-firstrun.sh
    once.  It takes the place of Raspberry Pi Imager's firstrun.sh, which it runs first."""
    line, newline, rest = text.partition("\n")
    ours = [arg.format(mount=mount) for arg in _FIRSTRUN_ARGS]
    kept = []
    for arg in line.split():
        if arg.startswith("systemd.run="):
            if not arg.endswith(("/firstrun.sh", f"/{FIRSTRUN}")):
                raise BootError(f"cmdline.txt already runs {arg.split('=', 1)[1]} at first "
                                "boot; remove that systemd.run= first")
        elif not (arg.startswith("systemd.run_") or arg in ours):
            kept.append(arg)
    return " ".join([*kept, *ours]) + (newline or "\n") + rest


def _write_all(files: dict[Path, tuple[bytes | str, int]]) -> None:
    """Write every file or, on an error, put back what was there before."""
    before = {path: path.read_bytes() if path.is_file() else None for path in files}
    new_dirs = {path.parent for path in files if not path.parent.exists()}
    done: list[Path] = []
    try:
        for path, (data, mode) in files.items():
            install_file(path, data, mode=mode)
            done.append(path)
    except OSError as error:
        for written in reversed(done):
            old = before[written]
            try:
                if old is None:
                    written.unlink()
                else:
                    install_file(written, old, mode=files[written][1])
            except OSError:
                log.warning("could not restore %s", written)
        for directory in new_dirs:
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise BootError(f"{error.filename or path}: cannot write it ({error.strerror}); "
                        "nothing was changed", code=1) from None


def _wheels(scratch: Path, *, wheel: Path | None, wheelhouse: Path | None, offline: bool,
            arch: str, python_version: str) -> list[Path]:
    """The wheels for the card: picluster's first (`wheel`, else built from the running
    source), then its dependencies' when the card is to carry them."""
    if wheel is None:
        wheel = build_wheel(scratch)
    elif not (wheel.is_file() and is_picluster_wheel(wheel)):
        raise BootError(f"--wheel {wheel}: not a picluster wheel (a picluster-*.whl file)")
    if offline:
        return [wheel, *download_wheels(wheel, scratch / "dependencies", arch=arch,
                                        python_version=python_version)]
    if wheelhouse is None:
        return [wheel]
    dependencies = sorted(path for path in wheelhouse.glob("*.whl")
                          if not is_picluster_wheel(path))
    if not dependencies:
        raise BootError(f"--wheelhouse {wheelhouse}: no wheels in it; fill it once with "
                        "`picluster prepare-boot --offline`'s download, or `pip download "
                        "--only-binary=:all: --platform ... -d DIR picluster-*.whl`")
    return [wheel, *dependencies]


def prepare_boot(boot_dir: Path, *, repo: str, key: Path, master: bool = False,
                 hostname: str | None = None, force: bool = False,
                 mount: str = DEFAULT_MOUNT, package: str | None = None,
                 wheel: Path | None = None, wheelhouse: Path | None = None,
                 offline: bool = False, arch: str = DEFAULT_ARCH,
                 python_version: str = DEFAULT_PYTHON, signer: Path | None = None,
                 signer_name: str = "operator") -> Prepared:
    """Make the mounted boot partition `boot_dir` boot a node of the cluster at `repo`;
    with `signer` (a public key file), one that trusts `signer_name`'s key from the start.

    The card gets picluster's `wheel` (default: built from the running source) and, with
    `offline` (downloaded for `arch` and `python_version`) or `wheelhouse` (copied from
    there), its dependencies' wheels.  Only `package` (a requirement, e.g. picluster==1.0)
    makes the node install from the package index by name instead.
    """
    if not boot_dir.is_dir():
        raise BootError(f"{boot_dir}: no such directory; give the mount point of the SD "
                        "card's boot partition")
    missing = [name for name in _BOOT_MARKERS if not (boot_dir / name).is_file()]
    if missing and not force:
        raise BootError(f"{boot_dir} does not look like a Raspberry Pi boot partition (no "
                        f"{' or '.join(missing)}); give the SD card's boot partition, or "
                        "pass --force")
    config = boot_dir / CONFIG_NAME
    if config.exists() and not force:
        raise BootError(f"{config} exists; pass --force to replace it")
    if not mount.startswith("/"):
        raise BootError(f"--mount {mount}: give the absolute path where the node mounts its "
                        "boot partition, e.g. /boot/firmware")
    if package is not None and (wheel or wheelhouse or offline):
        raise BootError("--package installs picluster from the package index by name; it "
                        "cannot be combined with --wheel, --wheelhouse or --offline")
    if wheelhouse is not None and offline:
        raise BootError("--offline downloads the dependencies' wheels; --wheelhouse gives "
                        "them: choose one")
    if wheelhouse is not None and not wheelhouse.is_dir():
        raise BootError(f"--wheelhouse {wheelhouse}: no such directory")
    try:
        private = key.read_bytes()
    except OSError as error:
        raise BootError(f"--key {key}: {error.strerror}") from None
    anchor = None
    if signer is not None:
        try:
            anchor = anchor_text(signer.read_text(), signer_name)
        except OSError as error:
            raise BootError(f"--signer {signer}: {error.strerror}") from None
        except (SignatureError, UnicodeDecodeError) as error:
            raise BootError(f"--signer {signer}: {error}") from None
    text = boot_config(repo, master=master, hostname=hostname, anchor=anchor is not None)
    try:
        Settings.parse(text, config)
    except ConfigError as error:
        raise BootError(f"{error.key}: {error.problem}") from None

    def existing(name: str) -> str | None:
        path = boot_dir / name
        return path.read_text(errors="replace") if path.is_file() else None

    with tempfile.TemporaryDirectory(prefix="picluster-card-") as scratch:
        wheels = [] if package is not None else _wheels(
            Path(scratch), wheel=wheel, wheelhouse=wheelhouse, offline=offline, arch=arch,
            python_version=python_version)
        on_card = boot_dir / WHEELS_DIR
        files: dict[Path, tuple[bytes | str, int]] = {
            on_card / path.name: (path.read_bytes(), 0o644) for path in wheels}
        if wheels:
            files[on_card / SUMS] = (sums_text(wheels), 0o644)
    script = package_text(FIRSTBOOT)
    for name, value in (("WHEEL", wheels[0].name if wheels else ""),
                        ("OFFLINE", "yes" if len(wheels) > 1 else ""),
                        ("PACKAGE", package or "")):
        script = script.replace(f"@{name}@", shlex.quote(value))
    files |= {
        config: (text, 0o644),
        boot_dir / KEY_NAME: (private, 0o600),
        boot_dir / f"{KEY_NAME}.pub": (public_key(private, key), 0o644),
        boot_dir / FIRSTBOOT: (script, 0o755),
        boot_dir / "user-data": (_user_data(existing("user-data"), force), 0o644),
    }
    if anchor is not None:
        files[boot_dir / ANCHOR_NAME] = (anchor, 0o644)
    hooks = ["cloud-init"]
    cmdline = existing("cmdline.txt")
    if cmdline is not None and not (boot_dir / _CLOUD_INIT_SEED).exists():
        files[boot_dir / FIRSTRUN] = (package_text(FIRSTRUN), 0o755)
        files[boot_dir / "cmdline.txt"] = (_cmdline_with_firstrun(cmdline, mount), 0o644)
        hooks.append("firstrun")
    if not (boot_dir / "ssh").exists():
        files[boot_dir / "ssh"] = ("", 0o644)
    _write_all(files)
    # Wheels of an earlier prepare-boot would fail first boot's check: they go.
    for stale in set((boot_dir / WHEELS_DIR).glob("*")) - set(files):
        stale.unlink()
    return Prepared(boot_dir, tuple(str(path.relative_to(boot_dir)) for path in files),
                    tuple(hooks), wheels[0].name if wheels else None, len(wheels[1:]))
