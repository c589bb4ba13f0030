"""The membership the master acts on: the registrations the cluster key signed.

Whoever can push may write `ip/<mac>` and a facts file; only a member holds the cluster
key.  So the master's views, Ganglia configs and pings see only the nodes whose
registration verifies against the public half of its own cluster key (`ssh_key`); the
others are reported, once per change, and stay in the repository as they are.
"""

from __future__ import annotations

import logging
import threading

from picluster import layout
from picluster.gitstore import Snapshot
from picluster.registry import Membership, read_membership, verify_registrations
from picluster.settings import Settings
from picluster.signing import public_key_of

__all__ = ["Members"]

log = logging.getLogger(__name__)


class Members:
    """Reads the verified membership; safe to share between the master's jobs."""

    def __init__(self, settings: Settings) -> None:
        # SignatureError now, at the agent's start, if the key cannot be used.
        self._key = public_key_of(settings.ssh_key) if settings.ssh_key else None
        self._source = settings.source
        self._lock = threading.Lock()
        self._said: dict[str, tuple[str | None, ...]] = {}  # mac -> the files reported
        self._warned = False

    def read(self, snapshot: Snapshot) -> Membership:
        """The registry of `snapshot`, less the registrations that do not verify."""
        membership = read_membership(snapshot)
        if self._key is None:
            with self._lock:
                if not self._warned:
                    log.warning("%s sets no ssh_key: registrations cannot be verified, and "
                                "every one reaches the views as written", self._source)
                    self._warned = True
            return membership
        verified, refused = verify_registrations(snapshot, membership, self._key)
        said = {mac: tuple(snapshot.read(path) for path in (
            layout.ip_path(mac), layout.facts_path(mac), layout.registration_sig_path(mac)))
            for mac in refused}
        with self._lock:
            new = [problem for mac, problem in refused.items()
                   if self._said.get(mac) != said[mac]]
            self._said = said
        for problem in new:
            log.warning("%s", problem)
        return verified
