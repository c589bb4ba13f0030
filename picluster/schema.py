"""Task argument schemas: what each argument of a task may be, declared next to the task.

A `Schema` maps argument names to rules (`Int`, `Float`, `Duration`, `Port`, `Str`,
`Bool`, `IPv4`, `List`, `Record`, `Json`); a rule without a `default` is required, and an argument
no rule names is refused.  The producer checks before it signs, the node before it runs,
so a task never sees a value its schema does not allow::

    Schema({"seconds": Duration(maximum=3600, default=1)})

Standard library only: the agent imports it on every node.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["REQUIRED", "ArgError", "Bool", "Duration", "Float", "IPv4", "Int", "Json", "List",
           "Port", "Record", "Rule", "Schema", "Str", "shown"]

REQUIRED: Any = object()  # the `default` of a rule whose argument must be given
_SHOWN = 60  # characters of a refused value an error quotes
_MAX_DEPTH = 64  # lists and objects in any task's arguments nest no deeper


class ArgError(ValueError):
    """Arguments a schema refuses; one line that names the argument and the rule."""


def shown(value: object, limit: int = _SHOWN) -> str:
    """`value` as an error quotes it: its repr, on one line, cut after `limit` characters
    (a 100 KB value is never echoed whole)."""
    try:
        text = repr(value)
    except ValueError:  # an int too long to convert to text
        return "a number too long to show"
    return text if len(text) <= limit else text[:limit] + "…"


@dataclass(frozen=True, kw_only=True)
class Rule:
    """What one argument may be.  `check` returns the value as the task gets it."""

    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def describe(self) -> str:
        raise NotImplementedError

    def accepts(self, value: Any) -> Any:
        """The value as the task gets it; ValueError (any message) when the rule refuses."""
        raise NotImplementedError

    def check(self, value: Any, name: str) -> Any:
        try:
            return self.accepts(value)
        except ArgError:
            raise
        except (ValueError, TypeError, OverflowError):
            raise ArgError(f"argument {shown(name)} must be {self.describe()}, "
                           f"not {shown(value)}") from None


def _number(value: Any, kinds: tuple[type, ...]) -> Any:
    if not isinstance(value, kinds) or isinstance(value, bool):
        raise TypeError
    return value


@dataclass(frozen=True, kw_only=True)
class Int(Rule):
    minimum: int
    maximum: int

    def describe(self) -> str:
        return f"a whole number from {self.minimum} to {self.maximum}"

    def accepts(self, value: Any) -> int:
        if not self.minimum <= _number(value, (int,)) <= self.maximum:
            raise ValueError
        return value


@dataclass(frozen=True, kw_only=True)
class Port(Int):
    minimum: int = 1
    maximum: int = 65535

    def describe(self) -> str:
        return f"a port ({self.minimum}-{self.maximum})"


@dataclass(frozen=True, kw_only=True)
class Float(Rule):
    minimum: float
    maximum: float

    def describe(self) -> str:
        return f"a number from {self.minimum:g} to {self.maximum:g}"

    def accepts(self, value: Any) -> float:
        number = float(_number(value, (int, float)))
        if not (math.isfinite(number) and self.minimum <= number <= self.maximum):
            raise ValueError
        return number


@dataclass(frozen=True, kw_only=True)
class Duration(Float):
    """Seconds, with a maximum: nothing waits for ever."""

    minimum: float = 0.0

    def describe(self) -> str:
        return f"a duration of {self.minimum:g} to {self.maximum:g} seconds"


@dataclass(frozen=True, kw_only=True)
class Str(Rule):
    """Text of at most `max_length` characters; with `pattern`, only text it fully
    matches (`what` then says in words what that is)."""

    max_length: int = 256
    pattern: str | None = None
    what: str = ""

    def describe(self) -> str:
        what = self.what or (f"text matching {self.pattern}" if self.pattern else "text")
        return f"{what}, at most {self.max_length} characters"

    def accepts(self, value: Any) -> str:
        if not isinstance(value, str):
            raise TypeError
        if len(value) > self.max_length or \
                (self.pattern is not None and not re.fullmatch(self.pattern, value)):
            raise ValueError
        return value


@dataclass(frozen=True, kw_only=True)
class Bool(Rule):
    def describe(self) -> str:
        return "true or false"

    def accepts(self, value: Any) -> bool:
        if not isinstance(value, bool):
            raise TypeError
        return value


@dataclass(frozen=True, kw_only=True)
class IPv4(Rule):
    def describe(self) -> str:
        return "an IPv4 address, e.g. 198.18.0.11"

    def accepts(self, value: Any) -> str:
        if not isinstance(value, str):
            raise TypeError
        return str(ipaddress.IPv4Address(value))  # strict: no spaces, no leading zeros


@dataclass(frozen=True, kw_only=True)
class List(Rule):
    """A list of `min_length` to `max_length` values, each one `item` allows."""

    item: Rule
    max_length: int
    min_length: int = 0

    def describe(self) -> str:
        least = f"at least {self.min_length} and " if self.min_length else ""
        return f"a list of {least}at most {self.max_length} items, each {self.item.describe()}"

    def accepts(self, value: Any) -> list[Any]:
        if not isinstance(value, list | tuple) or \
                not self.min_length <= len(value) <= self.max_length:
            raise ValueError
        return value  # checked item by item in `check`, which names the item

    def check(self, value: Any, name: str) -> list[Any]:
        items = super().check(value, name)
        return [self.item.check(item, f"{name}[{index}]") for index, item in enumerate(items)]


@dataclass(frozen=True, kw_only=True)
class Record(Rule):
    """An object whose fields `schema` checks, as it checks a task's arguments (a list of
    hosts, each with its address and name)."""

    schema: Schema

    def describe(self) -> str:
        return f"an object with {', '.join(self.schema.rules) or 'no fields'}"

    def accepts(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise TypeError
        return value  # checked field by field in `check`, which names the record

    def check(self, value: Any, name: str) -> dict[str, Any]:
        fields = super().check(value, name)
        try:
            return self.schema.check(fields)
        except ArgError as error:
            raise ArgError(f"argument {shown(name)}: {error}") from None


@dataclass(frozen=True, kw_only=True)
class Json(Rule):
    """Any JSON value: nested at most `max_depth` deep (the size is the schema's bound)."""

    max_depth: int = 32

    def describe(self) -> str:
        return f"a JSON value nested at most {self.max_depth} deep"

    def accepts(self, value: Any) -> Any:
        if _depth(value, self.max_depth) > self.max_depth:
            raise ValueError
        return value


def _depth(value: Any, limit: int) -> int:
    """How deep lists and objects nest in `value`, counted without recursion and no
    further than `limit` + 1."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list | tuple):
            deepest = max(deepest, depth)
            if depth > limit:
                break
            stack.extend((child, depth + 1)
                         for child in (item.values() if isinstance(item, dict) else item))
    return deepest


@dataclass(frozen=True)
class Schema:
    """The arguments of one task: a rule per name; `others` is the rule for any other
    name (None: other names are refused); the arguments as JSON are at most `max_bytes`."""

    rules: Mapping[str, Rule] = field(default_factory=dict)
    others: Rule | None = None
    max_bytes: int = 65536

    def check(self, args: Any) -> dict[str, Any]:
        """The arguments as the task gets them (each checked, defaults filled in); ArgError
        names the first argument refused and the rule it breaks."""
        if not isinstance(args, dict):
            raise ArgError(f"the arguments must be a JSON object, not {type(args).__name__}")
        if _depth(args, _MAX_DEPTH) > _MAX_DEPTH:
            raise ArgError(f"the arguments nest deeper than {_MAX_DEPTH} levels")
        try:
            size = len(json.dumps(args, ensure_ascii=False, allow_nan=False).encode())
        except (TypeError, ValueError):
            raise ArgError("the arguments must be JSON values (text, finite numbers, "
                           "true/false, null, lists and objects)") from None
        if size > self.max_bytes:
            raise ArgError(f"the arguments are {size} bytes of JSON; at most {self.max_bytes}")
        if self.others is None:
            unknown = sorted(set(args) - set(self.rules))
            if unknown:
                raise ArgError(f"unknown argument {shown(unknown[0])}; the arguments it "
                               f"takes: {', '.join(self.rules) or 'none'}")
        checked: dict[str, Any] = {}
        for name, rule in self.rules.items():
            if name in args:
                checked[name] = rule.check(args[name], name)
            elif rule.required:
                raise ArgError(f"argument {shown(name)} is missing: give {rule.describe()}")
            else:
                checked[name] = rule.default
        for name in sorted(args.keys() - self.rules.keys()):
            assert self.others is not None
            checked[name] = self.others.check(args[name], name)
        return checked
