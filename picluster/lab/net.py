"""The lab's network: names and addresses derived from the lab directory, and the
namespaces and cables that make up its wire.

    <prefix>-br    the switch: bridge br0 with one port per host
    <prefix>-git   the git server, 198.18.0.2
    <prefix>-nK    node pi-K, 198.18.0.(10+K): eth0 with a Raspberry Pi MAC

The prefix is a hash of the lab's directory, so a test lab and a demo lab coexist, and
`down` finds every namespace of a lab even when a crashed `up` never wrote its state file.
Nothing here touches the root namespace: the bridge lives in a namespace of its own, and
each veth is born there with its peer born in the host's.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
from collections.abc import Iterable
from pathlib import Path

from picluster.lab.errors import run
from picluster.lab.hosts import Host
from picluster.layout import format_mac

__all__ = [
    "DEFAULT_DIR",
    "DIR_ENV",
    "GIT_IP",
    "MAX_NODES",
    "Network",
    "lab_dir",
    "lab_prefix",
    "namespace",
    "node_ip",
    "node_mac",
]

DEFAULT_DIR = Path("/tmp/picluster-lab")
DIR_ENV = "PICLUSTER_LAB_DIR"

# 198.18.0.0/15 is reserved for benchmarking networks: lab traffic can never be mistaken
# for, or leak into, anyone's real network.
_SUBNET = ipaddress.IPv4Network("198.18.0.0/24")
GIT_IP = str(_SUBNET.network_address + 2)
_NODE_BASE = 10  # node K is 198.18.0.(10+K)
MAX_NODES = _SUBNET.num_addresses - 2 - _NODE_BASE
_PI_OUI = "b827eb"  # the Raspberry Pi Foundation's MAC prefix


def lab_dir(explicit: str | Path | None = None) -> Path:
    """The lab's directory: --dir, else $PICLUSTER_LAB_DIR, else /tmp/picluster-lab."""
    return Path(explicit or os.environ.get(DIR_ENV) or DEFAULT_DIR).resolve()


def lab_prefix(directory: str | Path) -> str:
    """'pcl' + 6 hex digits of the directory's hash: short enough that every namespace
    and interface name built on it stays within the kernel's 15 characters."""
    digest = hashlib.sha256(str(Path(directory).resolve()).encode()).hexdigest()
    return f"pcl{digest[:6]}"


def namespace(prefix: str, name: str) -> str:
    """The lab's namespace `name` (br, git, nK): all of them start with `<prefix>-`."""
    return f"{prefix}-{name}"


def node_mac(prefix: str, index: int) -> str:
    """Node `index`'s MAC: the Pi prefix, two bytes of the lab's hash, then the index, so
    MACs never repeat within a lab and rarely between labs."""
    _check_index(index)
    return f"{_PI_OUI}{prefix[3:7]}{index:02x}"


def node_ip(index: int) -> str:
    _check_index(index)
    return str(_SUBNET.network_address + _NODE_BASE + index)


def _check_index(index: int) -> None:
    if not 1 <= index <= MAX_NODES:
        raise ValueError(f"node index {index} is not between 1 and {MAX_NODES}")


class Network:
    """One lab's wire: the switch in a namespace of its own, and a cable to each host."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self.bridge_ns = namespace(prefix, "br")

    def namespaces(self) -> list[str]:
        """This lab's namespaces that exist, whatever the state file says."""
        listing = run("ip", "netns", "list")
        names = (line.split()[0] for line in listing.splitlines() if line.strip())
        return sorted(name for name in names if name.startswith(namespace(self.prefix, "")))

    def add_switch(self) -> None:
        run("ip", "netns", "add", self.bridge_ns)
        run("ip", "-n", self.bridge_ns, "-batch", "-",
            stdin="link add br0 type bridge\nlink set br0 up\n")

    def add_host(self, host: Host, mac: str | None) -> None:
        """Create the host's namespace and cable its eth0 to the switch (port still down)."""
        run("ip", "netns", "add", host.netns)
        # The veth is created in the bridge namespace with its peer born in the host's:
        # no interface ever appears in the root namespace.
        run("ip", "-n", self.bridge_ns, "link", "add", host.port, "type", "veth",
            "peer", "name", "eth0", "netns", host.netns)
        run("ip", "-n", self.bridge_ns, "link", "set", host.port, "master", "br0")
        commands = [f"address add {host.ip}/{_SUBNET.prefixlen} dev eth0",
                    "link set eth0 up", "link set lo up"]
        if mac:  # else the kernel picks one
            commands.insert(0, f"link set eth0 address {format_mac(mac)}")
        run("ip", "-n", host.netns, "-batch", "-", stdin="\n".join(commands) + "\n")

    def set_port(self, host: Host, *, up: bool) -> None:
        """Plug the host's cable into the switch (`up`), or pull it."""
        run("ip", "-n", self.bridge_ns, "link", "set", host.port, "up" if up else "down")

    def remove(self, namespaces: Iterable[str]) -> None:
        for netns in namespaces:
            run("ip", "netns", "del", netns)
