"""The lab's hosts, as files: where each keeps its things, and the configs the lab writes.

A host is a machine of the lab (the git server, or a node); a Node is a Raspberry Pi: a
host with a boot partition, a home and an agent.  A MachineNode is a Pi with a system of
its own: a container that boots systemd from a disk of its own.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from picluster.provision import ANCHOR_NAME, CONFIG_NAME, KEY_NAME, boot_config
from picluster.settings import Settings

__all__ = [
    "FAST_TIMINGS",
    "Host",
    "MachineNode",
    "Node",
    "card_settings",
    "render_lab_settings",
    "render_node_config",
    "render_settings",
    "render_sshd_config",
]

# `--fast`: the timings (seconds) of a lab that converges and prunes while you watch.
FAST_TIMINGS: dict[str, float] = {"poll_interval": 1, "master_grace": 3, "ping_interval": 2,
                                  "prune_after": 2, "ping_timeout": 0.5}


@dataclass(frozen=True)
class Host:
    """One machine of the lab: a network namespace with eth0 plugged into the switch."""

    name: str
    netns: str
    ip: str
    port: str  # the other end of its eth0: a port of br0, in the bridge namespace
    dir: Path

    @property
    def host_key(self) -> Path:
        """sshd's private host key (the public one is next to it, `.pub`)."""
        return self.dir / "ssh_host_ed25519_key"

    @property
    def sshd_config(self) -> Path:
        return self.dir / "sshd_config"

    def pid_file(self, process: str) -> Path:
        return self.dir / f"{process}.pid"

    def log(self, process: str) -> Path:
        return self.dir / f"{process}.log"


@dataclass(frozen=True)
class Node(Host):
    """A Raspberry Pi: a host with a boot partition, a home and an agent."""

    mac: str
    index: int

    @property
    def boot_dir(self) -> Path:
        return self.dir / "boot"

    @property
    def config(self) -> Path:
        return self.boot_dir / CONFIG_NAME

    @property
    def ssh_key(self) -> Path:
        """The cluster's private key, as it sits on this node's boot partition."""
        return self.boot_dir / KEY_NAME

    @property
    def anchor(self) -> Path:
        """The operator's public key as this node's trust anchor, on its boot partition."""
        return self.boot_dir / ANCHOR_NAME

    @property
    def home(self) -> Path:
        return self.dir / "home"

    @property
    def agent_log(self) -> Path:
        return self.log("agent")

    def settings(self) -> Settings:
        return Settings.load(self.config)


@dataclass(frozen=True)
class MachineNode(Node):
    """A Pi with a system of its own: systemd-nspawn boots it from `root`, an overlay of the
    lab's image whose writable layer (`disk`) is the node's SD card root partition, and
    binds its boot partition (`boot_dir`) at /boot/firmware.  Its files, home and logs are
    the node's own: paths in its settings are paths inside it (`on_host` finds them)."""

    @property
    def disk(self) -> Path:
        """What the node wrote: kept across power cuts, like an SD card."""
        return self.dir / "disk"

    @property
    def root(self) -> Path:
        """The node's / while it is up (the overlay's mount point)."""
        return self.dir / "root"

    def on_host(self, path: Path) -> Path:
        """Where this machine sees the node's `path` (while the node is up)."""
        return self.root / path.relative_to("/")


def render_sshd_config(host: Host, authorized_keys: Path) -> str:
    """An sshd of the host's own: its address, key and pid file; root by key only."""
    return "\n".join([
        f"# sshd of lab host {host.name} (written by picluster lab)",
        f"ListenAddress {host.ip}",
        f"HostKey {host.host_key}",
        f"PidFile {host.pid_file('sshd')}",
        "PermitRootLogin prohibit-password",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        f"AuthorizedKeysFile {authorized_keys}",
        # The lab lives under /tmp, whose permissions StrictModes refuses.
        "StrictModes no",
        "PrintMotd no",
        "Subsystem sftp internal-sftp",
        "",
    ])


def card_settings(fast: bool, settings: Mapping[str, object]) -> dict[str, object]:
    """The boot-config keys the lab adds to every node's card, as an operator would edit
    picluster.conf: the quick timings with `fast`, then `settings` (`lab up --set`),
    which win."""
    return {**(FAST_TIMINGS if fast else {}), **settings}


def render_settings(values: Mapping[str, object]) -> str:
    """Boot-config lines, `key = value`."""
    return "".join(f"{key} = {value}\n" for key, value in values.items())


def render_node_config(node: Node, repo: str, *, master: bool,
                       extra: Mapping[str, object]) -> str:
    """The boot config (picluster.conf) of a lab node: what prepare-boot --signer writes
    for a Pi, then the lab's settings (render_lab_settings); keys as in picluster.settings."""
    return boot_config(repo, master=master, hostname=node.name, anchor=True) + \
        render_lab_settings(node, extra=extra)


def render_lab_settings(node: Node, *, extra: Mapping[str, object]) -> str:
    """The lines the lab adds to a node's boot config: where the node's own disk is, then
    `extra` (`card_settings`).  A Pi keeps the first at their defaults
    (/var/lib/picluster, ~root/.ssh, /etc, its sshd's key); lab nodes share this
    machine's file system, so `boot` must write only into the node's own directory."""
    return render_settings({
        "home": node.home,
        "interface": "eth0",
        "host_key": f"{node.host_key}.pub",
        "user_ssh_dir": node.dir / "root" / ".ssh",
        "etc_dir": node.dir / "etc",
    }) + render_settings(extra)
