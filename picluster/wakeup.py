"""Wake-ups: a UDP datagram that makes a node fetch now instead of at its next poll.

After a push that concerns a node (a task for it; a registration or outcomes for the
master), the writer sends that node a datagram at the IP it registered, on the cluster's
wake-up port (`wakeup_port` in local-vars/cluster.yml).  Git stays the only source of
truth: a wake-up carries no authority, only the address it is meant for, so a forged or
replayed one costs its receiver one look at the remote.  A lost one costs the time to the
next poll, which stays the fallback.

Sending is best effort and never fails its sender.  It goes from the sender's own
address only, and only to this host or a host on a network this host is directly
attached to, never through a gateway: a cluster is one LAN, so an address registered by
a test (the benchmark range pinned in this machine's root namespace), a lab, or a node
that moved to another network is never sent to.

Receiving: `Listener` reads datagrams on the node's own address, no more of each than a
wake-up's length, drops anything but a wake-up for this node, and calls back at most
once per `gap` after the previous call returned, once more for whatever arrived meanwhile.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from picluster import layout
from picluster.gitstore import Snapshot
from picluster.identity import is_local

__all__ = ["PORT", "Listener", "datagram", "parse_routes", "reachable", "send"]

log = logging.getLogger(__name__)

# The wake-up port when local-vars/cluster.yml names none: next to Ganglia's 8649 and
# 8651 (gmetad's interactive port is 8652), used by no service picluster runs.
PORT = 8650
_MAGIC = b"picluster-wake/1 "
_ROUTES = Path("/proc/net/route")
_RTF_UP, _RTF_GATEWAY, _RTF_REJECT = 0x1, 0x2, 0x200
# How long the listener blocks in recv() before it looks whether it should stop.
_IDLE = 0.5


def datagram(mac: str) -> bytes:
    """The wake-up for node `mac`: the same bytes every time, so it proves nothing."""
    return _MAGIC + layout.normalize_mac(mac).encode()


Route = tuple[ipaddress.IPv4Network, bool]  # a destination network, and whether on-link


def parse_routes(text: str) -> list[Route]:
    """The usable routes of a /proc/net/route table.  Addresses and masks are printed as
    the raw network-order words read as native (little-endian) integers; flags plainly."""
    routes = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        try:
            destination, gateway, mask = (int.from_bytes(bytes.fromhex(fields[i]), "little")
                                          for i in (1, 2, 7))
            flags = int(fields[3], 16)
            network = ipaddress.IPv4Network((destination, bin(mask).count("1")),
                                            strict=False)
        except (IndexError, ValueError):
            continue
        if flags & _RTF_UP and not flags & _RTF_REJECT:
            routes.append((network, gateway == 0 and not flags & _RTF_GATEWAY))
    return routes


def _routes() -> list[Route]:
    """This network namespace's IPv4 routes (main table)."""
    try:
        return parse_routes(_ROUTES.read_text())
    except OSError:
        return []


def reachable(ip: str, routes: list[Route] | None = None) -> bool:
    """Whether a wake-up may go to `ip`: a unicast address of this host, or of a host on
    a network this host is directly attached to (its most specific route has no gateway;
    a default route never counts, nor a network's own or broadcast address)."""
    try:
        address = ipaddress.IPv4Address(ip)
    except ValueError:
        return False
    if address.is_multicast or address.is_unspecified or address.is_reserved:
        return False
    covering = [(network, on_link) for network, on_link in
                (_routes() if routes is None else routes) if address in network]
    network, on_link = max(covering, key=lambda route: route[0].prefixlen,
                           default=(ipaddress.IPv4Network("0.0.0.0/0"), False))
    if network.prefixlen < 31 and address in (network.network_address,
                                              network.broadcast_address):
        return False  # a broadcast, though this host may bind it
    return is_local(ip) or (on_link and network.prefixlen > 0)


def _registered(snapshot: Snapshot, mac: str) -> str | None:
    """The IPv4 in ip/<mac>, if it holds one."""
    try:
        text = snapshot.read(layout.ip_path(mac)) or ""
        return str(ipaddress.IPv4Address(text.strip().split("\n", 1)[0].strip()))
    except ValueError:
        return None


def send(snapshot: Snapshot, macs: Iterable[str], port: int, *,
         source: str | None = None) -> int:
    """Wake each node of `macs` at the IP it registered in `snapshot`, on `port` (0: wake-ups
    are off), from `source` (the sender's own IP; None: let the kernel choose one of this
    host's).  Returns how many datagrams went out; never raises: what could not be sent
    is one debug line."""
    if not port:
        return 0
    sent, skipped = 0, []
    try:
        routes = _routes()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)
            if source is not None:
                sock.bind((source, 0))  # fails unless `source` is an address of this host
            for mac in macs:
                ip = _registered(snapshot, mac)
                if ip is None or not reachable(ip, routes):
                    why = "no IP registered" if ip is None else "not on a network of this host"
                    skipped.append(f"{mac} ({ip or '-'}: {why})")
                    continue
                try:
                    sock.sendto(datagram(mac), (ip, port))
                    sent += 1
                except OSError as error:
                    skipped.append(f"{mac} ({ip}:{port}: {error.strerror or error})")
    except Exception as error:  # a wake-up is a courtesy: it must never fail its sender
        skipped.append(f"all ({type(error).__name__}: {error})")
    if skipped:
        log.debug("wake-ups not sent from %s to %s; they poll instead", source or "this host",
                  ", ".join(skipped))
    return sent


class Listener:
    """Wake-ups for node `mac`, received on `ip`:`port`; `woken` is called for them from
    the listener's own thread, never more often than once per `gap` seconds, counted
    from the end of the previous call."""

    def __init__(self, ip: str, port: int, mac: str, woken: Callable[[], None],
                 gap: float = 0.2) -> None:
        self.ip, self.port = ip, port
        self._expected = datagram(mac)
        self._woken = woken
        self._gap = gap
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> bool:
        """Bind and start listening; False (said in the log) when the port is not ours:
        then the node keeps to its polls."""
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.bind((self.ip, self.port))
        except OSError as error:
            sock.close()
            if error.errno == errno.EADDRNOTAVAIL:
                log.info("no wake-ups: %s is not an address of this host; polling only",
                         self.ip)
            else:
                log.warning("cannot listen for wake-ups on %s:%d (%s); polling only",
                            self.ip, self.port, error.strerror or error)
            return False
        sock.settimeout(_IDLE)
        self._thread = threading.Thread(target=self._run, args=(sock,), name="wake-ups",
                                        daemon=True)
        self._thread.start()
        log.info("listening for wake-ups on %s:%d", self.ip, self.port)
        return True

    def stop(self, *, wait: bool = True) -> None:
        """Stop listening; with `wait`, also for a running `woken` call to return."""
        self._stopping.set()
        if wait and self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()

    def _run(self, sock: socket.socket) -> None:
        size = len(self._expected) + 1  # anything longer is cut to a mismatch
        due, ready_at = False, 0.0
        with sock:
            while not self._stopping.is_set():
                try:
                    due |= sock.recv(size) == self._expected
                except TimeoutError:
                    pass
                except OSError as error:  # e.g. an ICMP error queued on the socket
                    log.debug("wake-up socket: %s", error)
                now = time.monotonic()
                if due and now >= ready_at:
                    due = False
                    try:
                        self._woken()
                    except Exception:
                        log.exception("acting on a wake-up failed; the next poll catches up")
                    ready_at = time.monotonic() + self._gap
                sock.settimeout(max(0.001, ready_at - time.monotonic()) if due else _IDLE)
