"""JSON round trip for the result dataclasses.

Results are plain dataclasses. ``to_dict`` turns one into JSON-ready data and ``from_dict``
rebuilds it from the field type hints, so ``from_dict(T, to_dict(x)) == x``.
Non-finite floats (an infinite condition number) are written as the strings ``"inf"``,
``"-inf"`` and ``"nan"`` so that the files stay strict JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union

T = TypeVar("T")

_NONFINITE = {"inf": math.inf, "-inf": -math.inf, "nan": math.nan}


def _encode(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _encode(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, dict):
        return {str(k): _encode(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_encode(v) for v in value]
    return value


def to_dict(obj: Any) -> dict[str, Any]:
    """Turn a result dataclass into JSON-ready data."""
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"expected a dataclass instance, got {type(obj).__name__}")
    out = _encode(obj)
    assert isinstance(out, dict)
    return out


def _decode(tp: Any, value: Any) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _decode(arg, value)
            except (TypeError, ValueError, KeyError):
                continue
        raise ValueError(f"cannot decode {value!r} as {tp}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return from_dict(tp, value)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return [_decode(item, v) for v in value]
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_decode(args[0], v) for v in value)
        return tuple(_decode(a, v) for a, v in zip(args, value, strict=True))
    if origin is dict:
        kt, vt = typing.get_args(tp) or (str, Any)
        return {_decode(kt, k): _decode(vt, v) for k, v in value.items()}
    if tp is float:
        if isinstance(value, str):
            if value not in _NONFINITE:
                raise ValueError(f"not a float: {value!r}")
            return _NONFINITE[value]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise TypeError(f"not a float: {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"not an int: {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise TypeError(f"not a str: {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise TypeError(f"not a bool: {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a result dataclass from ``to_dict`` output. Unknown keys are ignored."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            kwargs[f.name] = _decode(hints[f.name], data[f.name])
    return cls(**kwargs)


def dumps(obj: Any) -> str:
    """Strict JSON text of a result dataclass."""
    return json.dumps(to_dict(obj), indent=2, allow_nan=False) + "\n"


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place.

    An ``OSError`` of the temporary file is re-raised naming ``path``, the file the caller asked for.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp: str | None = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        # mkstemp creates 0600; give the file the mode a plain open() would (0666 minus the umask).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_json(obj: Any, path: Path) -> None:
    """Write a result dataclass as JSON, atomically."""
    atomic_write_bytes(path, dumps(obj).encode())


def load_json(cls: type[T], path: Path) -> T:
    """Read a result dataclass written by ``save_json``."""
    return from_dict(cls, json.loads(Path(path).read_text()))
