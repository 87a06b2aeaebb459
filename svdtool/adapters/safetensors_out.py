"""Streaming safetensors output: headers first (every size is known up front), then tensors as they come.

A residual checkpoint has the source's tensor names, shapes and dtypes, so its shards can be planned
before anything is computed: every tensor's byte offset is known, and tensors are written as they
come, with ``pwrite`` from several threads, one tensor in memory at a time per thread. Files follow
the Hugging Face layout: ``model-00001-of-00003.safetensors`` … plus ``model.safetensors.index.json``
(``{"metadata": {"total_size": …}, "weight_map": {…}}``).
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svdtool.loading.base import SAFETENSORS_DTYPES

if TYPE_CHECKING:
    import torch

INDEX_NAME = "model.safetensors.index.json"
#: Default largest shard, as transformers' ``max_shard_size="5GB"``.
DEFAULT_SHARD_BYTES = 5 * 10**9

_CODES = {short: code for code, short in SAFETENSORS_DTYPES.items()}


def dtype_code(short: str) -> str:
    """svdtool's dtype name (``bf16``) -> the safetensors code (``BF16``)."""
    return _CODES.get(short, short.upper())


def torch_code(dtype: torch.dtype) -> str:
    import torch

    codes = {
        torch.bfloat16: "BF16",
        torch.float16: "F16",
        torch.float32: "F32",
        torch.float64: "F64",
        torch.int64: "I64",
        torch.int32: "I32",
        torch.int16: "I16",
        torch.int8: "I8",
        torch.uint8: "U8",
        torch.bool: "BOOL",
    }
    optional = (("float8_e4m3fn", "F8_E4M3"), ("float8_e5m2", "F8_E5M2"), ("uint16", "U16"), ("uint32", "U32"))
    for name, code in (*optional, ("uint64", "U64")):
        if hasattr(torch, name):
            codes[getattr(torch, name)] = code
    return codes.get(dtype, str(dtype))


@dataclass(frozen=True)
class Planned:
    name: str
    code: str  # safetensors dtype code
    shape: tuple[int, ...]
    nbytes: int


def plan_shards(entries: list[Planned], max_bytes: int) -> list[list[Planned]]:
    """Split entries, in order, into shards of at most ``max_bytes`` (a bigger tensor gets its own)."""
    shards: list[list[Planned]] = [[]]
    size = 0
    for e in entries:
        if shards[-1] and size + e.nbytes > max_bytes:
            shards.append([])
            size = 0
        shards[-1].append(e)
        size += e.nbytes
    return shards if shards[0] else []


def shard_names(n: int, stem: str = "model") -> list[str]:
    return [f"{stem}-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)]


def _header(entries: list[Planned], metadata: dict[str, str]) -> bytes:
    head: dict[str, object] = {"__metadata__": metadata}
    offset = 0
    for e in entries:
        head[e.name] = {"dtype": e.code, "shape": list(e.shape), "data_offsets": [offset, offset + e.nbytes]}
        offset += e.nbytes
    raw = json.dumps(head, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-byte aligned, as safetensors writes it
    return len(raw).to_bytes(8, "little") + raw


class ShardSet:
    """Shard files laid out up front (headers written, files sized); tensors are written at their planned
    offsets with ``os.pwrite``, in any order and from any thread."""

    def __init__(
        self, folder: Path, shards: list[list[Planned]], names: list[str], metadata: dict[str, str] | None = None
    ) -> None:
        self.names = names
        self._shards = shards
        self._fds: list[int] = []
        self._where: dict[str, tuple[int, int, Planned]] = {}
        self._written: set[str] = set()
        self._lock = threading.Lock()
        self._paths: dict[int, Path] = {}
        for shard, fname in zip(shards, names, strict=True):
            path = folder / fname
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            self._fds.append(fd)
            self._paths[fd] = path
            head = _header(shard, metadata or {"format": "pt"})
            offset = len(head)
            for e in shard:
                self._where[e.name] = (fd, offset, e)
                offset += e.nbytes
            with self._naming(fd):
                _pwrite_all(fd, memoryview(head), 0)
                os.ftruncate(fd, offset)  # the full size now; pwrites fill it in

    def write(self, name: str, tensor: torch.Tensor) -> None:
        """Write one planned tensor; its dtype, shape and size must match the plan. Thread-safe."""
        try:
            fd, offset, e = self._where[name]
        except KeyError:
            raise ValueError(f"tensor {name!r} is not in the plan") from None
        got = (torch_code(tensor.dtype), tuple(tensor.shape), tensor.numel() * tensor.element_size())
        if got != (e.code, e.shape, e.nbytes):
            raise ValueError(f"{name}: got {got}, planned {(e.code, e.shape, e.nbytes)}")
        if e.nbytes:
            with self._naming(fd):
                _pwrite_all(fd, tensor_bytes(tensor), offset)
        with self._lock:
            self._written.add(name)

    @contextmanager
    def _naming(self, fd: int) -> Iterator[None]:
        """An OSError of a call on ``fd`` (which names no file) re-raised with the file's path."""
        try:
            yield
        except OSError as exc:
            if exc.filename is not None:
                raise
            raise OSError(exc.errno, exc.strerror, str(self._paths[fd])) from None

    def close(self) -> None:
        """Close the files; raises when a planned tensor was never written."""
        for fd in self._fds:
            os.close(fd)
        self._fds = []
        missing = len(self._where) - len(self._written)
        if missing:
            raise ValueError(f"{missing} planned tensors were never written")

    def index(self) -> dict[str, object]:
        """The ``model.safetensors.index.json`` content for the shards."""
        return shard_index(self._shards, self.names)


def shard_index(shards: list[list[Planned]], names: list[str]) -> dict[str, object]:
    """The ``model.safetensors.index.json`` content for planned shards (known before any is written)."""
    total = sum(e.nbytes for shard in shards for e in shard)
    weight_map = {e.name: names[i] for i, shard in enumerate(shards) for e in shard}
    return {"metadata": {"total_size": total}, "weight_map": weight_map}


def tensor_bytes(tensor: torch.Tensor) -> memoryview:
    """The raw bytes of a CPU tensor (a view, no copy when it is contiguous)."""
    flat = tensor.detach().reshape(-1)
    if not flat.is_contiguous():
        flat = flat.contiguous()
    array: Any = flat.view(_byte_dtype()).numpy()
    return memoryview(array).cast("B")


def _pwrite_all(fd: int, data: memoryview, offset: int) -> None:
    while data.nbytes:
        n = os.pwrite(fd, data, offset)
        data, offset = data[n:], offset + n


def _byte_dtype() -> torch.dtype:
    import torch

    return torch.uint8
