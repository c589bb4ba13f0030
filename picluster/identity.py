"""Who this node is: its MAC and IPv4, and the facts it reports about itself."""

from __future__ import annotations

import fcntl
import ipaddress
import os
import platform
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

from picluster.layout import format_mac, normalize_mac
from picluster.settings import Settings
from picluster.version import __version__

__all__ = ["IdentityError", "NodeIdentity", "address_problem", "facts", "identify",
           "is_local", "writer_name"]

_SIOCGIFADDR = 0x8915
_NOBODY = ipaddress.IPv4Network("0.0.0.0/8")  # "this network": nobody's address
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")
_SIOCGIFHWADDR = 0x8927
_MODEL_FILES = ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model")


class IdentityError(RuntimeError):
    """The node cannot tell its own MAC or IPv4 (interface missing or without address)."""


@dataclass(frozen=True)
class NodeIdentity:
    mac: str  # 12 lower-case hex digits
    ip: str


def _ioctl(interface: str, request: int) -> bytes:
    # An ioctl on the interface works in any network namespace, unlike /sys, which shows
    # the namespace it was mounted in.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        return fcntl.ioctl(sock.fileno(), request, struct.pack("256s", interface[:15].encode()))


def address_problem(mac: str, ip: str) -> str | None:
    """Why `mac` (12 hex digits) and `ip` cannot name one node, or None when they can.

    A MAC with the group bit set (broadcast ff:ff:ff:ff:ff:ff, multicast) or all zeros,
    and an IPv4 that is unspecified (0.0.0.0/8), multicast or the broadcast address, are
    no single host's: such a node would claim `master` and every message to it would
    reach nobody, or everybody.  Loopback stays allowed (tests pin 127.x addresses).
    """
    if mac == "0" * 12:
        return f"MAC {format_mac(mac)} is all zeros, not a network card's"
    if int(mac[:2], 16) & 1:
        return f"MAC {format_mac(mac)} is a broadcast or multicast address, not a network card's"
    address = ipaddress.IPv4Address(ip)
    if address.is_multicast:
        return f"IP {ip} is a multicast address, not a host's"
    if address in _NOBODY or address == _BROADCAST:
        return f"IP {ip} is {'the broadcast' if address == _BROADCAST else 'an unspecified'} " \
               "address, not a host's"
    return None


def identify(settings: Settings) -> NodeIdentity:
    """This node's identity: the pinned `mac`/`ip`, else read from `interface`.
    IdentityError for an address that cannot be one node's (`address_problem`)."""
    mac, ip = settings.mac, settings.ip
    try:
        if mac is None:
            mac = normalize_mac(_ioctl(settings.interface, _SIOCGIFHWADDR)[18:24].hex())
        if ip is None:
            ip = socket.inet_ntoa(_ioctl(settings.interface, _SIOCGIFADDR)[20:24])
    except OSError as error:
        raise IdentityError(
            f"cannot read {'the MAC' if mac is None else 'an IPv4 address'} of interface "
            f"'{settings.interface}': {error.strerror}; is the network up? Set 'interface' "
            f"(or pin 'mac' and 'ip') in {settings.source}") from None
    problem = address_problem(mac, ip)
    if problem:
        raise IdentityError(f"this node cannot register: {problem}; pin 'mac' and 'ip', or set "
                            f"'interface' to the cluster's network card, in {settings.source}")
    return NodeIdentity(mac, ip)


def is_local(ip: str) -> bool:
    """Whether `ip` is an address of this host (of this network namespace).

    A node whose configured IP is not (a pinned `ip` in a test, a typo) must not send
    cluster traffic: it would leave through whatever route this host has."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        try:
            sock.bind((ip, 0))
        except OSError:
            return False
    return True


def writer_name(settings: Settings) -> str:
    """A name for commits and inbox refs: the MAC when known, else the host name."""
    try:
        return identify(settings).mac
    except IdentityError:
        host = "".join(c if c.isalnum() or c in "-_" else "-" for c in socket.gethostname())
        return f"{host or 'host'}-{os.getpid()}"


def _model() -> str:
    for name in _MODEL_FILES:
        try:
            return Path(name).read_text().strip("\0\n ")
        except OSError:
            continue
    return f"{platform.system()} {platform.machine()}"


def facts(settings: Settings) -> dict[str, object]:
    """What a node is, as it reports it in local-vars/nodes/<mac>.yml: stable values only,
    so an unchanged node makes no commit.  (The agent adds what its services report.)"""
    try:
        host_key = " ".join(settings.host_key.read_text().split()[:2])
    except OSError:
        host_key = None
    return {
        "hostname": socket.gethostname(),
        "cores": os.cpu_count() or 1,
        "model": _model(),
        "host_key": host_key,
        "picluster": __version__,
    }
