"""What both ends of provisioning need: the SD-card tool on the operator's machine and the
first boot on the node.  Nothing here imports the node layer."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from picluster import signing
from picluster.signing import SignatureError

__all__ = ["BootError", "package_text", "public_key"]


class BootError(RuntimeError):
    """prepare-boot or boot cannot go on; `code` is the CLI's exit status."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def package_text(name: str) -> str:
    """A file the package ships in picluster/data: a first-boot hook, the unit."""
    return resources.files("picluster").joinpath("data", name).read_text()


def public_key(private: bytes, source: Path) -> str:
    """The public half of the OpenSSH private key `private` (read from `source`), which
    must need no passphrase: the agent uses it unattended."""
    try:
        return signing.public_key(private, source)
    except SignatureError as error:
        raise BootError(str(error)) from None
