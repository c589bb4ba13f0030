"""A commit as a `git fast-import` stream: no working tree, no index, one pack."""

from __future__ import annotations

import time
from collections.abc import Mapping

__all__ = ["stream"]


def stream(ref: str, ident: str, parent: str, message: str,
           changes: Mapping[str, str | None]) -> bytes:
    """The stream that commits `changes` (path -> content, None: delete) on `parent` as
    `ident` ("name <email>"), leaving the commit at `ref`.  Text that is not Unicode
    (a lone surrogate, from a JSON escape in someone's intent) is written escaped, so
    no message or content can make a commit fail."""
    text = message.encode("utf-8", "backslashreplace")
    stamp = f"{ident} {int(time.time())} +0000"
    out = bytearray()
    out += f"commit {ref}\nauthor {stamp}\ncommitter {stamp}\n".encode()
    out += b"data %d\n%s\nfrom %s\n" % (len(text), text, parent.encode())
    for path, content in sorted(changes.items()):
        if content is None:
            out += b"D %s\n" % _quote(path)
        else:
            data = content.encode("utf-8", "backslashreplace")
            out += b"M 100644 inline %s\ndata %d\n%s\n" % (_quote(path), len(data), data)
    out += b"done\n"
    return bytes(out)


def _quote(path: str) -> bytes:
    """A path as fast-import reads it: C-quoted, so spaces, quotes and backslashes are
    safe; a name that is not UTF-8 (read with surrogate escapes) keeps its bytes."""
    escaped = path.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'.encode("utf-8", "surrogateescape")
