"""Reading JSON objects with fixed keys into frozen dataclasses: the machinery of the plan schema.

A :class:`Section` is a dataclass whose fields name its keys; each field carries the check that
reads its value (``field(metadata=reads(check))``). ``Section.from_dict(data, where, source)``
refuses a key the section does not know, or a key it needs and does not find, with a
:class:`vfnet.errors.PlanError` naming the file and the key's path inside it, in one sentence::

    plans.json: unknown key 'presets.quick.2d.iteratons' (did you mean 'iterations'?)

Example:
    >>> @dataclass(frozen=True)
    ... class Window(Section):
    ...     patch_size: list[int] = field(metadata=reads(integers(3)))
    ...     weighting: str = field(metadata=reads(choice("gaussian", "uniform")))
    >>> Window.from_dict({"patch_size": [8, 8, 8], "weigting": "gaussian"}, "window")
    PlanError: plans.json: unknown key 'window.weigting' (did you mean 'weighting'?)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, fields
from difflib import get_close_matches
from typing import Any

from vfnet.errors import PlanError

Check = Callable[[Any, str, str], Any]


def key_path(where: str, key: object) -> str:
    """``presets.quick.2d`` + ``lr`` → ``presets.quick.2d.lr``."""
    return f"{where}.{key}" if where else str(key)


def _fail(source: str, path: str, expected: str, value: object) -> PlanError:
    return PlanError(f"{source}: '{path}' must be {expected}, got {value!r}")


def check_keys(data: object, known: Sequence[str], required: Sequence[str], where: str, source: str) -> dict:
    """``data`` as a dict when it has every ``required`` key and no key outside ``known``.

    Raises:
        PlanError: naming the first unknown (with the closest known key) or missing key.
    """
    if not isinstance(data, Mapping):
        if not where:
            raise PlanError(f"{source}: expected a JSON object, found {type(data).__name__}")
        raise _fail(source, where, "an object", data)
    unknown = [k for k in data if k not in known]
    if unknown:
        close = get_close_matches(str(unknown[0]), [str(k) for k in known], n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f"; expected {', '.join(map(str, known))}"
        raise PlanError(f"{source}: unknown key '{key_path(where, unknown[0])}'{hint}")
    missing = [k for k in required if k not in data]
    if missing:
        raise PlanError(f"{source}: missing key '{key_path(where, missing[0])}'")
    return dict(data)


# ------------------------------------------------------------------------------ value checks
def integer(minimum: int = 0) -> Check:
    def check(value, path, source):
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise _fail(source, path, f"a whole number of at least {minimum}", value)
        return value
    return check


def number(minimum: float | None = None, maximum: float | None = None) -> Check:
    bounds = minimum is not None or maximum is not None
    expected = (f"a number in [{-math.inf if minimum is None else minimum:g}, "
                f"{math.inf if maximum is None else maximum:g}]") if bounds else "a number"

    def check(value, path, source):
        if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
                or (minimum is not None and value < minimum) or (maximum is not None and value > maximum)):
            raise _fail(source, path, expected, value)
        return float(value)
    return check


def boolean(value, path, source) -> bool:
    if not isinstance(value, bool):
        raise _fail(source, path, "true or false", value)
    return value


def text(value, path, source) -> str:
    if not isinstance(value, str):
        raise _fail(source, path, "a string", value)
    return value


def exactly(expected: object) -> Check:
    def check(value, path, source):
        if value != expected or isinstance(value, bool):
            raise _fail(source, path, repr(expected), value)
        return value
    return check


def choice(*options: str) -> Check:
    def check(value, path, source):
        if value not in options:
            raise _fail(source, path, f"one of {', '.join(options)}", value)
        return value
    return check


def nullable(inner: Check) -> Check:
    """``inner``, or null (a key that must be present but may be empty)."""
    return lambda value, path, source: None if value is None else inner(value, path, source)


def list_of(inner: Check, length: int | None = None) -> Check:
    def check(value, path, source):
        if not isinstance(value, list) or (length is not None and len(value) != length):
            raise _fail(source, path, f"a list of {length} values" if length else "a list", value)
        return [inner(v, f"{path}[{i}]", source) for i, v in enumerate(value)]
    return check


def integers(length: int | None = None, minimum: int = 1) -> Check:
    return list_of(integer(minimum), length)


def distinct_axes(count: int) -> Check:
    """A list of distinct axis indices below ``count`` (mirroring axes)."""
    def check(value, path, source):
        out = list_of(integer(0), None)(value, path, source)
        if any(a >= count for a in out) or len(set(out)) != len(out):
            raise _fail(source, path, f"distinct axes among 0..{count - 1}", value)
        return out
    return check


def mapping_of(inner: Check, keys: Sequence[str] | None = None) -> Check:
    """An object whose values pass ``inner``; with ``keys``, exactly those keys."""
    def check(value, path, source):
        data = check_keys(value, keys, keys, path, source) if keys is not None else value
        if not isinstance(data, Mapping):
            raise _fail(source, path, "an object", value)
        return {str(k): inner(v, key_path(path, k), source) for k, v in data.items()}
    return check


def section(cls: type[Section]) -> Check:
    return lambda value, path, source: cls.from_dict(value, path, source)


def variant(key: str, classes: Mapping[str, type[Section]]) -> Check:
    """A section whose ``key`` (``name``, ``scheme``) picks its class, and with it its keys."""
    def check(value, path, source):
        if not isinstance(value, Mapping):
            raise _fail(source, path, "an object", value)
        if key not in value:
            raise PlanError(f"{source}: missing key '{key_path(path, key)}'")
        name = choice(*classes)(value[key], key_path(path, key), source)
        return classes[name].from_dict(value, path, source)
    return check


def reads(check: Check) -> dict:
    """The metadata of a section field read with ``check``; a field with a default is a key that may be
    left out (and is not written back while it holds the default)."""
    return {"check": check}


# ------------------------------------------------------------------------------- sections
class Section:
    """A plans.json object with fixed keys: the dataclass fields, each read by its ``check``."""

    @classmethod
    def from_dict(cls, data: object, where: str = "", source: str = "plans.json"):
        """Read ``data`` (found at ``where`` in ``source``).

        Raises:
            PlanError: an unknown, missing or malformed key, named by its path.
        """
        specs = fields(cls)
        required = [f.name for f in specs if f.default is MISSING]
        data = check_keys(data, [f.name for f in specs], required, where, source)
        return cls(**{f.name: f.metadata["check"](data[f.name], key_path(where, f.name), source)
                      for f in specs if f.name in data})

    def to_dict(self) -> dict:
        """As plans.json holds it; optional keys left at their default are not written."""
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self)
                if f.default is MISSING or getattr(self, f.name) != f.default}


def _plain(value):
    if isinstance(value, Section):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value

