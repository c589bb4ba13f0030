"""Parsing text that anyone who can push wrote, within bounds set before parsing.

json and yaml recurse once per level of nesting, so a file nested 10,000 deep ends deep
inside the parser with a RecursionError, and a huge file costs its whole size in memory
before anything refuses it.  Here the size is checked first, and the nesting depth before
the parser recurses into it; either bound passed is a `LimitError` that says which.
Syntax errors stay the parser's own (`json.JSONDecodeError`, `yaml.YAMLError`), with
their line and column.
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml

__all__ = ["DEPTH", "LimitError", "check_size", "load_json", "load_yaml"]

# Deeper than any file picluster reads needs; far below Python's recursion limit.
DEPTH = 32

# A JSON string (skipped whole, brackets and all) or a bracket.
_JSON_TOKENS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')


class LimitError(ValueError):
    """Text over a size or nesting bound; the message names the bound."""


def check_size(size: int, max_size: int) -> None:
    """LimitError when `size` bytes are more than `max_size`."""
    if size > max_size:
        raise LimitError(f"is {size} bytes, over the limit of {max_size} bytes")


def _check_text(text: str, max_size: int) -> None:
    # Characters first: a text with more characters than the limit has more bytes too,
    # and is refused without being copied.
    check_size(len(text), max_size)
    check_size(len(text.encode("utf-8", "surrogateescape")), max_size)


def load_json(text: str, *, max_size: int, max_depth: int = DEPTH) -> Any:
    """`json.loads(text)`, once `text` is at most `max_size` bytes and nests at most
    `max_depth` arrays and objects deep."""
    _check_text(text, max_size)
    # Each level opens a bracket: with few of them, the depth needs no counting.
    if text.count("[") + text.count("{") > max_depth:
        depth = 0
        for token in _JSON_TOKENS.finditer(text):
            if token.group() in ("[", "{"):
                depth += 1
                if depth > max_depth:
                    line = text.count("\n", 0, token.start()) + 1
                    raise LimitError(f"line {line}: nested deeper than {max_depth} levels")
            elif token.group() in ("]", "}"):
                depth -= 1
    try:
        return json.loads(text)
    except RecursionError:  # the count above bounds it; this is the last line of defence
        raise LimitError(f"nested deeper than {max_depth} levels") from None


class _Loader(yaml.SafeLoader):
    """yaml's safe loader, refusing nodes nested deeper than `max_depth` before it
    recurses into them (its composer recurses once per level)."""

    def __init__(self, text: str, max_depth: int) -> None:
        super().__init__(text)
        self._max_depth = max_depth
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > self._max_depth:
                mark = self.peek_event().start_mark
                raise LimitError(f"line {mark.line + 1}: nested deeper than "
                                 f"{self._max_depth} levels")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def load_yaml(text: str, *, max_size: int, max_depth: int = DEPTH) -> Any:
    """`yaml.safe_load(text)`, once `text` is at most `max_size` bytes; nodes nested
    deeper than `max_depth` are refused as they are reached."""
    _check_text(text, max_size)
    loader = _Loader(text, max_depth)
    try:
        return loader.get_single_data()
    except RecursionError:
        raise LimitError(f"nested deeper than {max_depth} levels") from None
    finally:
        loader.dispose()
