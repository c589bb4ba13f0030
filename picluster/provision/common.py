"""What both ends of provisioning need: the SD-card tool on the operator's machine and the
first boot on the node.  Nothing here imports the node layer."""

from __future__ import annotations

import tempfile
from importlib import resources
from pathlib import Path

from picluster.files import install_file
from picluster.proc import CommandError, run

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
    # ssh-keygen refuses a key that others may read, and FAT shows every file so: it
    # reads a private copy.
    with tempfile.TemporaryDirectory(prefix="picluster-") as scratch:
        copy = Path(scratch) / "key"
        install_file(copy, private, mode=0o600)
        try:
            line = run("ssh-keygen", "-y", "-P", "", "-f", str(copy)).strip()
        except CommandError as error:
            raise BootError(f"{source}: not an OpenSSH private key without a passphrase "
                            f"({str(error).rsplit(': ', 1)[-1]}); make one with "
                            f"ssh-keygen -t ed25519 -N '' -f {source.name}") from None
    return line + "\n"
