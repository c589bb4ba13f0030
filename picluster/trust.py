"""The signers a node trusts, kept outside the repository they guard.

`local-vars/allowed_signers` lives in the cluster repository, which anyone who can push
may change.  So each node keeps its own copy under `<home>/trust/` and verifies tasks
against that copy only.  The copy starts as

*   the card's anchor (`prepare-boot --signer`, the `trust_anchor` key), installed by
    `boot`: a new anchor replaces whatever the node trusted before; else
*   the repository's file as the node finds it at its first clone (trust on first use,
    as ssh does with host keys), logged.

From then on a change to the repository's file counts only when `allowed_signers.sig`
beside it is an OpenSSH signature of its exact bytes (namespace `picluster-trust`) by a
signer of the node's copy whose line allows that namespace; the node then takes the new
file as its copy.  Any other change is reported, once per content, and ignored.  A change
in comments or blank lines only is no change.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from picluster import layout
from picluster.files import install_file
from picluster.gitstore import Put, Snapshot
from picluster.settings import Settings
from picluster.signing import (
    NAMESPACE,
    TRUST_NAMESPACE,
    AllowedSigners,
    SignatureError,
    sign,
    signed_by,
)

__all__ = ["Trust", "TrustError", "Verdict", "judge"]

log = logging.getLogger(__name__)


class TrustError(ValueError):
    """A trust anchor or a change of allowed_signers that cannot be used; the message
    names the file and the fix."""


def _signers(text: str, source: str, namespace: str = NAMESPACE) -> AllowedSigners:
    return AllowedSigners.parse(text, source, namespace)


def _lines(text: str) -> list[str]:
    """The lines that say something."""
    return [line.strip() for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")]


@dataclass(frozen=True)
class Verdict:
    """What a node makes of the repository's allowed_signers, given what it trusts."""

    trusted: str  # the allowed signers the node verifies against ("": nobody yet)
    news: str | None = None  # `trusted` is new to the node: what taking it means
    problem: str | None = None  # why the repository's file is ignored


def judge(pinned: str | None, current: str | None, signature: str | None) -> Verdict:
    """The verdict on the repository's allowed_signers (`current`, and `signature` from
    allowed_signers.sig) for a node that trusts `pinned` (None: nothing yet)."""
    path = layout.ALLOWED_SIGNERS
    current = current or ""
    if pinned is None:
        found = _signers(current, path).entries
        if not found:
            return Verdict("")  # nothing to trust yet: no task runs, each says why
        if signature is not None:
            # Changed since it was signed: a plain push on top of a signed file.  (Who
            # signed, this node cannot tell yet: a rotation is signed by a key it drops.)
            try:
                signed_by(current.encode(), signature, TRUST_NAMESPACE)
            except SignatureError as error:
                return Verdict("", problem=(
                    f"{path}: changed since it was signed ({layout.ALLOWED_SIGNERS_SIG}: "
                    f"{error}); trusting no signer until an operator signs it (`picluster "
                    "trust --sign`) or the card holds a trust anchor (prepare-boot --signer)"))
        names = ", ".join(sorted({name for entry in found for name in entry.principals}))
        return Verdict(current, news=(
            f"trust on first use: trusting the task signers of {path} as found ({names}); "
            "from now on a change counts only when one of them signs it (prepare the card "
            "with --signer to anchor trust instead)"))
    if _lines(current) == _lines(pinned):
        return Verdict(pinned)
    if signature is None:
        why = f"there is no {layout.ALLOWED_SIGNERS_SIG}"
    else:
        try:
            who = _signers(pinned, "the trusted signers", TRUST_NAMESPACE).verify(
                current.encode(), signature)
        except SignatureError as error:
            why = f"{layout.ALLOWED_SIGNERS_SIG}: {error}"
        else:
            count = len(_signers(current, path).entries)
            return Verdict(current, news=f"took the change to {path} that {who} signed: "
                                         f"{count} task signer(s) now")
    return Verdict(pinned, problem=(
        f"{path}: changed, but no signer this node trusts signed the change ({why}); "
        "ignored: the node keeps the signers it trusted. Sign the change with `picluster "
        "trust` (an operator key the nodes trust), or revert it"))


class Trust:
    """The signers one node (one `home`) trusts, following the signed changes to the
    repository's allowed_signers."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._said: tuple[str, ...] = ()  # the ignored change last reported, and why

    @property
    def path(self) -> Path:
        return self._settings.trusted_signers

    def pinned(self) -> str | None:
        """The allowed signers this node trusts; None before it trusts any."""
        try:
            return self.path.read_text()
        except FileNotFoundError:
            return None

    def install_anchor(self) -> bool:
        """Trust the card's anchor (`trust_anchor`) if it is new to this node: it replaces
        what the node trusted before.  True if it was installed now."""
        anchor = self._settings.trust_anchor
        if anchor is None:
            return False
        where = f"{self._settings.source}: trust_anchor: {anchor}"
        try:
            text = anchor.read_text()
        except OSError as error:
            raise TrustError(f"{where}: {error.strerror}") from None
        except UnicodeDecodeError:
            raise TrustError(f"{where}: not text") from None
        signers = _signers(text, str(anchor), TRUST_NAMESPACE)
        if signers.problems or not signers.entries:
            raise TrustError(f"{where}: " + ("; ".join(signers.problems) or (
                "no signer allowed to change allowed_signers (namespace picluster-trust)"
                "; write it with `picluster prepare-boot --signer`")))
        installed = self._settings.installed_anchor
        with self._lock:
            if installed.is_file() and installed.read_text() == text:
                return False
            install_file(self.path, text)
            install_file(installed, text)
        names = sorted({name for entry in signers.entries for name in entry.principals})
        log.warning("installed the trust anchor from %s: this node trusts %s, in place of "
                    "whatever it trusted before", anchor, ", ".join(names))
        return True

    def judge(self, snapshot: Snapshot) -> Verdict:
        """The verdict on `snapshot`'s allowed_signers; changes nothing."""
        return judge(self.pinned(), snapshot.read(layout.ALLOWED_SIGNERS),
                     snapshot.read(layout.ALLOWED_SIGNERS_SIG))

    def follow(self, snapshot: Snapshot) -> Verdict:
        """Look at `snapshot`: trust its allowed_signers on first use or when signed by a
        signer trusted already; report any other change (once per content)."""
        with self._lock:
            verdict = self.judge(snapshot)
            if verdict.news is not None:
                install_file(self.path, verdict.trusted)
                log.warning("%s", verdict.news)
            said: tuple[str, ...] = ()
            if verdict.problem is not None:
                said = (verdict.problem, snapshot.read(layout.ALLOWED_SIGNERS) or "",
                        snapshot.read(layout.ALLOWED_SIGNERS_SIG) or "")
                if said != self._said:
                    log.warning("%s (this node trusts %s)", verdict.problem, self.path)
            self._said = said
            return verdict

    def signers(self, snapshot: Snapshot) -> AllowedSigners:
        """The task signers this node trusts, after a look at `snapshot` (`follow`)."""
        return _signers(self.follow(snapshot).trusted, str(self.path))

    # -- changing the repository's file (an operator's `picluster trust`) -----------------

    def add(self, snapshot: Snapshot, line: str, key: Path) -> list[Put]:
        """The ops that add the allowed-signers `line` to `snapshot`'s file, signed with
        `key`; [] when it is there.  A line for the same name and key is replaced.
        TrustError when the file holds a change nobody trusted signed, or when `key` may
        not change it."""
        verdict = self.follow(snapshot)
        if verdict.problem is not None:
            raise TrustError(f"{verdict.problem}. Review it (git log -p "
                             f"{layout.ALLOWED_SIGNERS}), then sign it as it is with "
                             "`picluster trust --sign` before adding a signer")
        current = snapshot.read(layout.ALLOWED_SIGNERS) or ""
        lines = current.splitlines()
        if line in lines:
            return []
        name, key_blob = line.split()[0], line.split()[3]
        kept = [old for old in lines if not (old.split()[:1] == [name]
                                             and key_blob in old.split())]
        text = "\n".join([*kept, line]) + "\n"
        return self._signed(verdict.trusted, text, key)

    def endorse(self, snapshot: Snapshot, key: Path) -> list[Put]:
        """The ops that sign `snapshot`'s allowed_signers as it is with `key` (after an
        edit by hand: a signer removed, a key rotated).  TrustError when `key` is not
        one this home trusts to change it."""
        pinned = self.pinned()
        return self._signed(pinned or "", snapshot.read(layout.ALLOWED_SIGNERS) or "", key)

    def _signed(self, trusted: str, text: str, key: Path) -> list[Put]:
        (signature,) = sign([text.encode()], key, TRUST_NAMESPACE)
        # A cluster that trusts nobody yet takes its first signers on first use.
        if _signers(trusted, str(self.path)).entries:
            try:
                _signers(trusted, str(self.path), TRUST_NAMESPACE).verify(text.encode(),
                                                                          signature)
            except SignatureError as error:
                raise TrustError(f"signing_key {key} may not change {layout.ALLOWED_SIGNERS}"
                                 f" ({error}); nodes would ignore the change") from None
        return [Put(layout.ALLOWED_SIGNERS, text), Put(layout.ALLOWED_SIGNERS_SIG, signature)]

