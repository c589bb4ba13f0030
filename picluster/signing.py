"""OpenSSH signatures (`ssh-keygen -Y sign`) and the allowed signers that check them.

Three things are signed, each in a namespace of its own, so that a signature made for
one can never pass for another: tasks (`picluster-task`), the cluster repository's
allowed_signers file (`picluster-trust`) and nodes' registrations (`picluster-node`).
An allowed-signers line may sign in the namespaces its `namespaces=` option names.

Signing runs ssh-keygen, which knows every private key format and agent; one process
signs a whole batch.  Verification runs ssh-keygen too (`-Y check-novalidate`, which
checks the signature and names the key that made it); which keys are trusted, for what
and until when is decided here, from the allowed signers file.  A process per signature
costs a few milliseconds, so each verdict is kept (by message digest, signature and
namespace): the master re-reads every registration at every poll.  An in-process port
(`sshsig`, with `cryptography`) was faster but made up a fifth of an idle agent's memory.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import fnmatch
import hashlib
import io
import json
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ClassVar

from picluster.files import install_file
from picluster.proc import CommandError, run

__all__ = ["NAMESPACE", "NODE_NAMESPACE", "TRUST_NAMESPACE", "AllowedSigners", "SignatureError",
           "SignedDocument", "fingerprint", "public_key", "public_key_of", "sign", "signed_by",
           "signer_line"]

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


class SignedDocument:
    """A dataclass kept as a JSON file with a `signature` field that covers all the others.
    `PREFIX` starts what is signed, so that one kind's signature never passes for
    another's."""

    PREFIX: ClassVar[bytes] = b""

    def fields(self) -> dict[str, Any]:
        """The fields as the file holds them."""
        return asdict(self)  # type: ignore[call-overload]  # every subclass is a dataclass

    def signed_bytes(self) -> bytes:
        """What the signature covers: every field but the signature, canonical JSON."""
        data = self.fields()
        del data["signature"]
        return self.PREFIX + json.dumps(data, sort_keys=True, separators=(",", ":"),
                                        ensure_ascii=False).encode()

    def to_json(self) -> str:
        return json.dumps(self.fields(), indent=2, ensure_ascii=False) + "\n"


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
        fingerprint(parts[0], parts[1])
    except ValueError as error:
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


def fingerprint(key_type: str, key: str) -> str:
    """The SHA256 fingerprint of the OpenSSH public key `key_type key` (base64), as
    ssh-keygen prints it; ValueError unless the key's data is a `key_type` key."""
    try:
        blob = base64.b64decode(key, validate=True)
    except binascii.Error:
        raise ValueError(f"the key '{key[:20]}…' is not base64") from None
    # A key's data starts with its type, as a string with a 4-byte length.
    (length,) = struct.unpack(">I", blob[:4]) if len(blob) > 4 else (0,)
    if blob[4:4 + length] != key_type.encode():
        raise ValueError(f"the key's data is not a {key_type} key")
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


# ssh-keygen's verdict on a good signature: 'Good "ns" signature with ED25519 key SHA256:…'
_GOOD = re.compile(r"^Good \".*\" signature with \S+ key (SHA256:\S+)$", re.MULTILINE)
# Verdicts kept, by one digest of what was checked: about 150 bytes each (a few signers'
# fingerprints, interned), so 4096 of them fit in well under a megabyte.
_VERDICTS_KEPT = 4096
_verdicts: dict[bytes, str] = {}
_verdicts_lock = threading.Lock()


def signed_by(message: bytes, signature: str, namespace: str) -> str:
    """The fingerprint of whichever key made `signature` of `message` in `namespace`:
    proof that these are the bytes it signed, not that the key is trusted."""
    known = hashlib.sha256(b"\0".join((namespace.encode(), signature.encode(),
                                        message))).digest()
    with _verdicts_lock:
        if known in _verdicts:
            return _verdicts[known]
    with tempfile.NamedTemporaryFile("w", prefix="picluster-", suffix=".sig") as file:
        file.write(signature)
        file.flush()
        done = subprocess.run(["ssh-keygen", "-Y", "check-novalidate", "-n", namespace,
                               "-s", file.name], input=message, capture_output=True)
    good = _GOOD.search(done.stdout.decode(errors="replace")) if done.returncode == 0 else None
    if good is None:
        why = done.stderr.decode(errors="replace").strip().splitlines()
        raise SignatureError("the signature does not verify" + (f" ({why[0]})" if why else ""))
    with _verdicts_lock:
        if len(_verdicts) >= _VERDICTS_KEPT:
            del _verdicts[next(iter(_verdicts))]  # the oldest
        _verdicts[known] = sys.intern(good.group(1))
    return good.group(1)


# The options ssh-keygen knows on an allowed signers line; a value is quoted.
_OPTION = re.compile(r'(cert-authority|namespaces|valid-after|valid-before)(?:="([^"]*)")?',
                     re.IGNORECASE)
_OPTIONS = re.compile(rf"{_OPTION.pattern}(?:,{_OPTION.pattern})*(?=\s)", re.IGNORECASE)


def _allowed_signer(line: str) -> tuple[list[str], dict[str, str], str, str]:
    """An allowed signers line (ssh-keygen(1), ALLOWED SIGNERS): its principals, options,
    key type and key.  ValueError when malformed."""
    if line.startswith('"'):
        principals, quote, rest = line[1:].partition('"')
        if not quote:
            raise ValueError("the principals' closing quote is missing")
    else:
        principals, _, rest = " ".join(line.split(maxsplit=1)).partition(" ")
    options: dict[str, str] = {}
    rest = rest.strip()
    first = rest.split(maxsplit=1)[0] if rest else ""
    if "=" in first or "," in first or first.lower() == "cert-authority":
        found = _OPTIONS.match(rest)
        if found is None:
            raise ValueError(f"options '{first}' are not cert-authority, namespaces=\"…\", "
                             "valid-after=\"…\" or valid-before=\"…\"")
        for option in _OPTION.finditer(found.group(0)):
            name = option.group(1).lower()
            if name in options:
                raise ValueError(f"option '{name}' is given twice")
            options[name] = option.group(2) or ""
        rest = rest[found.end():]
    parts = rest.split()
    if not principals or len(parts) < 2:
        raise ValueError("expected: principals [options] key-type base64-key [comment]")
    return principals.split(","), options, parts[0], parts[1]


@dataclass(frozen=True)
class _Entry:
    principals: tuple[str, ...]
    fingerprint: str


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
                principals, options, key_type, key = _allowed_signer(line)
                namespaces = options.get("namespaces")
                if namespaces is not None and namespace not in namespaces.split(","):
                    continue
                if "cert-authority" in options:
                    raise ValueError("certificate authorities are not supported; list the "
                                     "signer's own key")
                # As ssh-keygen: a key outside its validity window signs nothing.
                if not _valid_now(options.get("valid-after"), options.get("valid-before")):
                    continue
                key_print = fingerprint(key_type, key)
            except ValueError as error:
                problems.append(f"{source}: line {number}: {error}; fix the line or add the "
                                "key again with `picluster trust`")
                continue
            entries.append(_Entry(tuple(principals), key_print))
        return cls(tuple(entries), tuple(problems), namespace)

    def verify(self, message: bytes, signature: str, principal: str | None = None) -> str:
        """Raise SignatureError unless `signature` is a signature of `message` by
        `principal` (by any signer listed, when None); return the signer's name."""
        if not self.entries:
            raise SignatureError(f"no trusted {_SIGNERS_OF[self.namespace]}; "
                                 f"{_ADD_ONE[self.namespace]}")
        key = signed_by(message, signature, self.namespace)
        for entry in self.entries:
            if entry.fingerprint != key:
                continue
            if principal is None:
                return entry.principals[0]
            if any(fnmatch.fnmatchcase(principal, pattern) for pattern in entry.principals):
                return principal
        if principal is None:
            raise SignatureError(f"the key that signed it ({key}) is not one of "
                                 f"the {_SIGNERS_OF[self.namespace]}")
        raise SignatureError(f"the key that signed it ({key}) is not a trusted "
                             f"signer for '{principal}'; add it with `picluster trust`")
