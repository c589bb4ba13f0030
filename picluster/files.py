"""Installing files atomically: a reader (or a power cut) sees the old file or the new
one, never half of one, and a key is never readable by others, not even for a moment."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

__all__ = ["install_file"]


def install_file(path: Path, data: bytes | str, *, mode: int = 0o644,
                 owner: tuple[int, int] | None = None) -> bool:
    """Write `data` to `path` with `mode` and `owner` (uid, gid) through a temporary file
    renamed into place.  Returns False, writing nothing, when the file is already so."""
    content = data.encode() if isinstance(data, str) else data
    try:
        stat = path.stat()
        if (path.read_bytes() == content and stat.st_mode & 0o7777 == mode
                and (owner is None or (stat.st_uid, stat.st_gid) == owner)):
            return False
    except OSError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    # mkstemp creates the file 0600: private until it has its final mode and owner.
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(handle, "wb") as file:
            file.write(content)
            file.flush()
            os.fsync(file.fileno())
            if owner is not None:
                os.fchown(file.fileno(), *owner)
            # FAT (a boot partition) has no modes; there the mount decides.
            with contextlib.suppress(PermissionError):
                os.fchmod(file.fileno(), mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    return True
