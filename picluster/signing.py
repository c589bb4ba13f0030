"""OpenSSH signatures (`ssh-keygen -Y sign`) and the allowed signers that check them.

Three things are signed, each in a namespace of its own, so that a signature made for
one can never pass for another: tasks (`picluster-task`), the cluster repository's
allowed_signers file (`picluster-trust`) and nodes' registrations (`picluster-node`).
An allowed-signers line may sign in the namespaces its `namespaces=` option names.

Signing runs ssh-keygen, which knows every private key format and agent; one process
signs a whole batch.  Verification runs in-process with `sshsig`, a port of
`ssh-keygen -Y verify`, because an agent checks every task and a process per task
would cap throughput.
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import io
import os
import subprocess
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import sshsig
from sshsig.allowed_signers import AllowedSigner

from picluster.files import install_file
from picluster.proc import CommandError, run

__all__ = ["NAMESPACE", "NODE_NAMESPACE", "TRUST_NAMESPACE", "AllowedSigners", "SignatureError",
           "public_key", "public_key_of", "sign", "signed_by", "signer_line"]

NAMESPACE = "picluster-task"  # tasks
TRUST_NAMESPACE = "picluster-trust"  # local-vars/allowed_signers itself
NODE_NAMESPACE = "picluster-node"  # a node's registration, signed with the cluster key

# What the signers of each namespace are, in messages.
_SIGNERS_OF = {NAMESPACE: "task signers",
               TRUST_NAMESPACE: "signers allowed to change allowed_signers",
               NODE_NAMESPACE: "cluster keys"}
# How to add one, in messages.
_ADD_ONE = {NAMESPACE: "add one with `picluster trust PUBKEY --name NAME`",
            TRUST_NAMESPACE: "an operator's line names the namespace picluster-trust "
                             "(`picluster init-repo --signer`, `picluster trust --admin`)",
            NODE_NAMESPACE: "nodes sign with the cluster key (ssh_key)"}


class SignatureError(ValueError):
    """A signature that does not verify, or a key or signers file that cannot be used."""


def _private(key: Path, scratch: Path) -> Path:
    """`key`, or a private copy of it in `scratch` when others may read it: ssh-keygen
    refuses such a key, and a boot partition (FAT) shows every file so."""
    if os.stat(key).st_mode & 0o077 == 0:
        return key
    copy = scratch / "key"
    install_file(copy, key.read_bytes(), mode=0o600)
    return copy


def sign(messages: Sequence[bytes], key: Path, namespace: str = NAMESPACE) -> list[str]:
    """Sign each message with the private `key` in `namespace`; return armored
    signatures."""
    if not key.is_file():
        raise SignatureError(f"signing key {key} does not exist; set 'signing_key' in the "
                             "boot config to an OpenSSH private key (ssh-keygen -t ed25519)")
    with tempfile.TemporaryDirectory(prefix="picluster-sign-") as tmp:
        signing_key = _private(key, Path(tmp))
        files = []
        for number, message in enumerate(messages):
            path = Path(tmp) / f"{number}"
            path.write_bytes(message)
            files.append(str(path))
        if not files:
            return []
        done = subprocess.run(["ssh-keygen", "-q", "-Y", "sign", "-f", str(signing_key),
                               "-n", namespace, *files],
                              capture_output=True, text=True, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise SignatureError(f"ssh-keygen could not sign with {key}: "
                                 f"{done.stderr.strip() or done.returncode}")
        return [Path(f"{name}.sig").read_text() for name in files]


def public_key(private: bytes, source: Path) -> str:
    """The public half (`type base64 comment`) of the OpenSSH private key `private`, read
    from `source`; it must need no passphrase, since nodes use it unattended."""
    # ssh-keygen refuses a key that others may read, and FAT shows every file so: it
    # reads a private copy.
    with tempfile.TemporaryDirectory(prefix="picluster-") as scratch:
        copy = Path(scratch) / "key"
        install_file(copy, private, mode=0o600)
        try:
            line = run("ssh-keygen", "-y", "-P", "", "-f", str(copy)).strip()
        except CommandError as error:
            raise SignatureError(f"{source}: not an OpenSSH private key without a passphrase "
                                 f"({str(error).rsplit(': ', 1)[-1]}); make one with "
                                 f"ssh-keygen -t ed25519 -N '' -f {source.name}") from None
    return line + "\n"


def public_key_of(key: Path) -> str:
    """The public half of the private key file `key` (`public_key`)."""
    try:
        private = key.read_bytes()
    except OSError as error:
        raise SignatureError(f"{key}: {error.strerror}") from None
    return public_key(private, key)


def signer_line(public_key: str, name: str, *, admin: bool = False) -> str:
    """An allowed-signers line that lets `name` sign picluster tasks with `public_key`;
    with `admin`, changes to allowed_signers too (an operator, never the cluster key)."""
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
    namespaces = f"{NAMESPACE},{TRUST_NAMESPACE}" if admin else NAMESPACE
    return f'{name} namespaces="{namespaces}" {parts[0]} {parts[1]}{comment}'


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


def _signer_key(message: bytes, signature: str, namespace: str) -> sshsig.PublicKey:
    try:
        return sshsig.check_signature(message, signature, namespace)
    except (sshsig.InvalidSignature, ValueError, NotImplementedError) as error:
        detail = f" ({error})" if str(error) else ""
        raise SignatureError(f"the signature does not verify{detail}") from None


def signed_by(message: bytes, signature: str, namespace: str) -> str:
    """The fingerprint of whichever key made `signature` of `message` in `namespace`:
    proof that these are the bytes it signed, not that the key is trusted."""
    return _signer_key(message, signature, namespace).sha256_str()


@dataclass(frozen=True)
class _Entry:
    principals: tuple[str, ...]
    key: sshsig.PublicKey


@dataclass(frozen=True)
class AllowedSigners:
    """An allowed signers file, parsed for one `namespace`: entries restricted to other
    namespaces are left out."""

    entries: tuple[_Entry, ...]
    problems: tuple[str, ...] = ()
    namespace: str = NAMESPACE

    @classmethod
    def parse(cls, text: str, source: str, namespace: str = NAMESPACE) -> AllowedSigners:
        entries, problems = [], []
        for number, line in enumerate(io.StringIO(text), start=1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                entry = AllowedSigner.parse(line)
                options = entry.options or {}
                namespaces = options.get("namespaces")
                if namespaces is not None and namespace not in namespaces.split(","):
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
        return cls(tuple(entries), tuple(problems), namespace)

    def verify(self, message: bytes, signature: str, principal: str | None = None) -> str:
        """Raise SignatureError unless `signature` is a signature of `message` by
        `principal` (by any signer listed, when None); return the signer's name."""
        if not self.entries:
            raise SignatureError(f"no trusted {_SIGNERS_OF[self.namespace]}; "
                                 f"{_ADD_ONE[self.namespace]}")
        key = _signer_key(message, signature, self.namespace)
        for entry in self.entries:
            if entry.key != key:
                continue
            if principal is None:
                return entry.principals[0]
            if any(fnmatch.fnmatchcase(principal, pattern) for pattern in entry.principals):
                return principal
        if principal is None:
            raise SignatureError(f"the key that signed it ({key.sha256_str()}) is not one of "
                                 f"the {_SIGNERS_OF[self.namespace]}")
        raise SignatureError(f"the key that signed it ({key.sha256_str()}) is not a trusted "
                             f"signer for '{principal}'; add it with `picluster trust`")
