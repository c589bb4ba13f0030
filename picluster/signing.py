"""Task signatures: OpenSSH signatures (`ssh-keygen -Y sign`) checked against the
allowed signers file in the cluster repository.

Signing runs ssh-keygen, which knows every private key format and agent; one process
signs a whole batch.  Verification runs in-process with `sshsig`, a port of
`ssh-keygen -Y verify`, because an agent checks every task and a process per task
would cap throughput.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import io
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import sshsig
from sshsig.allowed_signers import AllowedSigner

__all__ = ["NAMESPACE", "AllowedSigners", "SignatureError", "sign", "signer_line"]

NAMESPACE = "picluster-task"


class SignatureError(ValueError):
    """A signature that does not verify, or a key or signers file that cannot be used."""


def sign(messages: Sequence[bytes], key: Path) -> list[str]:
    """Sign each message with the private `key`; return armored signatures."""
    if not key.is_file():
        raise SignatureError(f"signing key {key} does not exist; set 'signing_key' in the "
                             "boot config to an OpenSSH private key (ssh-keygen -t ed25519)")
    with tempfile.TemporaryDirectory(prefix="picluster-sign-") as tmp:
        files = []
        for number, message in enumerate(messages):
            path = Path(tmp) / f"{number}"
            path.write_bytes(message)
            files.append(str(path))
        if not files:
            return []
        done = subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(key),
                               "-n", NAMESPACE, *files],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise SignatureError(f"ssh-keygen could not sign with {key}: "
                                 f"{done.stderr.strip() or done.returncode}")
        return [Path(f"{name}.sig").read_text() for name in files]


def signer_line(public_key: str, name: str) -> str:
    """An allowed-signers line that lets `name` sign picluster tasks with `public_key`."""
    if not name or any(c.isspace() or c in ',"*?' for c in name):
        raise SignatureError(f"'{name}' is not a usable signer name; use letters, digits, "
                             "'-', '_', '.' or '@'")
    parts = public_key.split()
    if len(parts) < 2:
        raise SignatureError("not an OpenSSH public key (expected e.g. 'ssh-ed25519 AAAA…')")
    try:
        sshsig.PublicKey.from_openssh_str(" ".join(parts[:2]))
    except (ValueError, NotImplementedError) as error:
        raise SignatureError(f"not a usable OpenSSH public key: {error}") from None
    comment = f" {' '.join(parts[2:])}" if len(parts) > 2 else ""
    return f'{name} namespaces="{NAMESPACE}" {parts[0]} {parts[1]}{comment}'


def _valid_now(after: str | None, before: str | None) -> bool:
    """ssh-keygen's valid-after/valid-before: YYYYMMDD[HHMM[SS]], UTC with a Z, else local
    time.  ValueError for a malformed time."""
    now = dt.datetime.now(dt.UTC)

    def parse(text: str) -> dt.datetime:
        utc = text.endswith(("Z", "z"))
        digits = text.rstrip("Zz")
        for pattern in ("%Y%m%d%H%M%S", "%Y%m%d%H%M", "%Y%m%d"):
            try:
                moment = dt.datetime.strptime(digits, pattern)
            except ValueError:
                continue
            return moment.replace(tzinfo=dt.UTC) if utc else moment.astimezone(dt.UTC)
        raise ValueError(f"'{text}' is not a time (YYYYMMDD[HHMM[SS]][Z])")

    return (after is None or parse(after) <= now) and (before is None or now < parse(before))


@dataclass(frozen=True)
class _Entry:
    principals: tuple[str, ...]
    key: sshsig.PublicKey


@dataclass(frozen=True)
class AllowedSigners:
    """The parsed allowed signers file; entries restricted to other namespaces are left out."""

    entries: tuple[_Entry, ...]
    problems: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str, source: str) -> AllowedSigners:
        entries, problems = [], []
        for number, line in enumerate(io.StringIO(text), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                entry = AllowedSigner.parse(line)
                options = entry.options or {}
                namespaces = options.get("namespaces")
                if namespaces is not None and NAMESPACE not in namespaces.split(","):
                    continue
                if "cert-authority" in options:
                    raise NotImplementedError("certificate authorities are not supported; "
                                              "list the signer's own key")
                # As ssh-keygen: a key outside its validity window signs nothing.
                if not _valid_now(options.get("valid-after"), options.get("valid-before")):
                    continue
                key = sshsig.PublicKey.from_openssh_str(f"{entry.key_type} {entry.base64_key}")
            except (ValueError, NotImplementedError) as error:
                problems.append(f"{source}: line {number}: {error}; fix the line or add the "
                                "key again with `picluster trust`")
                continue
            entries.append(_Entry(tuple(entry.principals.split(",")), key))
        return cls(tuple(entries), tuple(problems))

    def verify(self, message: bytes, signature: str, principal: str) -> None:
        """Raise SignatureError unless `signature` is `principal`'s signature of `message`."""
        if not self.entries:
            raise SignatureError("no trusted task signers; add one with "
                                 "`picluster trust PUBKEY --name NAME`")
        try:
            key = sshsig.check_signature(message, signature, NAMESPACE)
        except (sshsig.InvalidSignature, ValueError, NotImplementedError) as error:
            detail = f" ({error})" if str(error) else ""
            raise SignatureError(f"the signature does not verify{detail}") from None
        for entry in self.entries:
            if entry.key == key and any(fnmatch.fnmatchcase(principal, pattern)
                                        for pattern in entry.principals):
                return
        raise SignatureError(f"the key that signed it ({key.sha256_str()}) is not a trusted "
                             f"signer for '{principal}'; add it with `picluster trust`")
