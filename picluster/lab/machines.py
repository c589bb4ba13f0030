"""Machine nodes: Pis with a system of their own, booted by systemd-nspawn.

Each has an SD card made of two parts, as a Pi's is: its boot partition (a directory laid
out as Raspberry Pi OS's, written by the real `picluster prepare-boot`) and its root
partition (an overlay of the lab's image, whose writable layer keeps what the node wrote
across power cuts).  The lab starts nothing in the node but its systemd: cloud-init reads
the boot partition, runs picluster-firstboot.sh, which installs the wheel from the card and
runs `picluster boot`, which enables picluster.service, as on a Pi.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from picluster.lab.errors import LabError, run
from picluster.lab.hosts import MachineNode, render_settings
from picluster.lab.image import APT_MOUNT, Image
from picluster.lab.procs import Processes

__all__ = [
    "AGENT_COMMAND",
    "CARD_FILES",
    "agent_pid",
    "blank_card",
    "mount_disk",
    "mounts_under",
    "nspawn_argv",
    "problem",
    "unmount_all",
    "write_card",
]

# A Raspberry Pi OS (Trixie) boot partition before prepare-boot: the firmware's files, and
# the NoCloud seed Raspberry Pi Imager writes (meta-data, user-data, network-config).
CARD_FILES = {
    "config.txt": "# Raspberry Pi firmware settings\n[all]\narm_64bit=1\n",
    "cmdline.txt": "console=serial0,115200 console=tty1 root=PARTUUID=4e639091-02 "
                   "rootfstype=ext4 fsck.repair=yes rootwait quiet\n",
    "meta-data": "instance-id: rpios-image\n",
    "user-data": "#cloud-config\n# written as Raspberry Pi Imager would, with no settings\n",
    "network-config": "network:\n  version: 2\n  ethernets:\n    eth0:\n      dhcp4: true\n"
                      "      optional: true\n",
}
# What picluster.service's `picluster boot --foreground` becomes: how the lab tells the
# agent among a node's processes.
AGENT_COMMAND = ("-m", "picluster.node")


def blank_card(directory: Path) -> Path:
    """A boot partition as Raspberry Pi OS comes on a card, before prepare-boot."""
    directory.mkdir(parents=True)
    for name, text in CARD_FILES.items():
        (directory / name).write_text(text)
    return directory


def write_card(node: MachineNode, repo: str, key: Path, *, signer: Path, master: bool,
               extra: Mapping[str, object], wheel: Path, wheelhouse: Path,
               env: dict[str, str]) -> None:
    """Make the node's boot partition and run the real `picluster prepare-boot` on it, with
    the operator's public key `signer` as its trust anchor and the lab's wheel and
    wheelhouse (the lab has no route to a package index); `extra` (the lab's
    `card_settings`) is added to picluster.conf, as an operator would edit it."""
    blank_card(node.boot_dir)
    argv = [sys.executable, "-m", "picluster", "prepare-boot", str(node.boot_dir),
            "--repo", repo, "--key", str(key), "--signer", str(signer),
            "--hostname", node.name, "--wheel", str(wheel), "--wheelhouse", str(wheelhouse)]
    if master:
        argv.append("--master")
    done = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise LabError(f"prepare-boot of {node.name}'s card failed: "
                       f"{done.stderr.strip() or done.stdout.strip()}")
    with node.config.open("a") as config:
        config.write(render_settings(extra))


def mount_disk(node: MachineNode, image: Image) -> None:
    """Mount the node's root file system: its own layer over the image (read-only below)."""
    upper, work = node.disk / "upper", node.disk / "work"
    for directory in (upper, work, node.root):
        directory.mkdir(parents=True, exist_ok=True)
    if not os.path.ismount(node.root):
        run("mount", "-t", "overlay", "overlay", "-o",
            f"lowerdir={image.root},upperdir={upper},workdir={work}", str(node.root))


def nspawn_argv(node: MachineNode, image: Image) -> list[str]:
    """systemd-nspawn booting the node in its network namespace: its boot partition at
    /boot/firmware, the lab's package mirror at APT_MOUNT, both read-only."""
    return ["systemd-nspawn", "--quiet", "--boot", "--register=no", "--keep-unit",
            f"--network-namespace-path=/run/netns/{node.netns}", f"--directory={node.root}",
            f"--machine={node.name}", f"--bind-ro={node.boot_dir}:/boot/firmware",
            f"--bind-ro={image.debs}:{APT_MOUNT}",
            # The node's files are its own: nothing of this machine's is copied in.
            "--resolv-conf=off", "--timezone=off", "--link-journal=no"]


def _unescape(field: str) -> str:
    """A path as /proc/self/mountinfo writes it (blanks and the like as octal escapes)."""
    return field.encode().decode("unicode_escape")


def mounts_under(directory: Path) -> list[Path]:
    """The mount points in `directory`, deepest first."""
    prefix = str(directory.resolve()).rstrip("/") + "/"
    points = [Path(_unescape(line.split()[4]))
              for line in Path("/proc/self/mountinfo").read_text().splitlines()]
    inside = {point for point in points if str(point).startswith(prefix)}
    return sorted(inside, key=lambda point: len(point.parts), reverse=True)


def unmount_all(directory: Path) -> None:
    """Unmount everything mounted in `directory` (the nodes' root file systems)."""
    for point in mounts_under(directory):
        for attempt in range(20):
            done = subprocess.run(["umount", str(point)], capture_output=True, text=True,
                                  check=False)
            if done.returncode == 0 or not os.path.ismount(point):
                break
            if attempt == 19:  # still busy after 2 s: detach it, it goes when unused
                run("umount", "--lazy", str(point))
            time.sleep(0.1)
    left = mounts_under(directory)
    if left:
        raise LabError(f"cannot unmount {', '.join(map(str, left))}")


def agent_pid(node: MachineNode) -> int | None:
    """The pid (on this machine) of the node's agent, the process picluster.service runs."""
    try:
        pids = run("ip", "netns", "pids", node.netns).split()
    except LabError:
        return None
    for pid in map(int, pids):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            words = [Path(word.decode(errors="replace")).name for word in argv]
            if any(tuple(words[i:i + len(AGENT_COMMAND)]) == AGENT_COMMAND
                   for i in range(len(words))):
                return pid
    return None


# Run in the node: the first thing that keeps it from being a healthy node, in one line
# ('' while it is healthy, or still booting).  picluster-firstboot.sh logs its failure in
# one journal line; cloud-init's status turns to error just after, so a failed status is
# read once the journal has caught up.
_PROBE = r"""
systemctl is-active -q picluster && exit 0
firstboot() {
    line=$(journalctl -q -o cat -p err -t picluster-firstboot -n 1 --no-pager 2>/dev/null)
    [ -n "$line" ] && echo "first boot failed: $line"
}
firstboot && exit 0
[ -f /boot/firmware/user-data ] \
    || { echo "the boot partition has no user-data: cloud-init runs nothing"; exit 0; }
if cloud-init status 2>/dev/null | grep -q 'status: error'; then
    sleep 1
    firstboot || echo "cloud-init failed; see cloud-init status --long"
    exit 0
fi
if systemctl is-failed -q picluster; then
    echo "picluster.service failed: $(journalctl -q -o cat -u picluster -n 1 --no-pager)"
fi
"""


def problem(procs: Processes, node: MachineNode, timeout: float = 10.0) -> str:
    """What keeps an up machine node from being healthy, in one line ('' if nothing)."""
    try:
        done = subprocess.run([*procs.enter(node), "sh", "-c", _PROBE], capture_output=True,
                              text=True, env=procs.machine_env(), timeout=timeout,
                              check=False)
    except (LabError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()
