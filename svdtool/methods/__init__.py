"""Registry of init methods by name. A new method is one module plus one ``register`` call here."""

from __future__ import annotations

from svdtool.errors import SvdtoolError
from svdtool.methods.base import InitFn, InitOptions, LoraInit, MethodSpec

__all__ = ["METHODS", "InitFn", "InitOptions", "LoraInit", "MethodSpec", "get_method", "register"]

METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    if spec.name in METHODS:
        raise ValueError(f"init method {spec.name!r} registered twice")
    METHODS[spec.name] = spec
    return spec


def get_method(name: str) -> MethodSpec:
    _load_builtin()
    try:
        return METHODS[name]
    except KeyError:
        raise SvdtoolError(f"unknown init method {name!r}; choose from {', '.join(sorted(METHODS))}") from None


def _load_builtin() -> None:
    """Import the built-in method modules once; each registers itself on import."""
    import importlib

    for module in _BUILTIN:
        importlib.import_module(f"svdtool.methods.{module}")


# Built-in method modules (each calls ``register`` at import). Add new ones here.
_BUILTIN: list[str] = [
    "pissa",
    "milora",
    "svd_lora_fa",
    "lora_ga",
    "olora",
    "mica",
    "orthogonal",
    "lora_one",
    "loftq",
    "qpissa",
    "corda",
    "eva",
]
