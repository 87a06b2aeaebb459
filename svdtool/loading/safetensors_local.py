"""Local safetensors: one file, a folder, or a sharded folder with ``model.safetensors.index.json``.

Each file's header is validated against the file size *before* it is memory-mapped: a file that is
shorter than its header claims would otherwise kill the process with SIGBUS when a page is touched.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svdtool.errors import SvdtoolError
from svdtool.loading.base import SAFETENSORS_DTYPES, Checkpoint, CheckpointMeta, TensorInfo
from svdtool.loading.checks import PICKLE_SUFFIXES, check_unique, pickle_refusal
from svdtool.results.manifest import SourceFile

if TYPE_CHECKING:
    import torch

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit


def parse_header(prefix: bytes, file_size: int, label: str) -> tuple[int, dict[str, Any]]:
    """Parse and validate a safetensors header from the file's first bytes.

    Returns (header length N, header dict). Raises SvdtoolError unless the tensors' byte ranges
    exactly cover the file: ``8 + N + max(end) == file_size``.
    """
    if file_size < 8 or len(prefix) < 8:
        raise SvdtoolError(f"{label} is not a safetensors file: only {file_size} bytes")
    (n,) = struct.unpack("<Q", prefix[:8])
    if n > MAX_HEADER or 8 + n > file_size:
        raise SvdtoolError(f"{label} is truncated or corrupt: its header claims {n} bytes, the file has {file_size}")
    if len(prefix) < 8 + n:
        raise ValueError("prefix too short")  # callers read enough; internal
    try:
        header = json.loads(prefix[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SvdtoolError(f"{label} is corrupt: its header is not valid JSON ({exc})") from None
    if not isinstance(header, dict):
        raise SvdtoolError(f"{label} is corrupt: its header is not a JSON object")
    end = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            begin, stop = entry["data_offsets"]
            shape = entry["shape"]
            ok = all(type(x) is int for x in (begin, stop, *shape)) and isinstance(entry["dtype"], str)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok or any(d < 0 for d in shape):
            raise SvdtoolError(f"{label} is corrupt: bad header entry for tensor {name!r}") from None
        if not 0 <= begin <= stop:
            raise SvdtoolError(f"{label} is corrupt: bad byte range for tensor {name!r}")
        end = max(end, stop)
    expected = 8 + n + end
    if expected != file_size:
        what = "truncated" if expected > file_size else "has trailing bytes"
        raise SvdtoolError(f"{label} is {what}: its header describes {expected} bytes but the file has {file_size}")
    return n, header


def read_header(path: Path) -> tuple[int, dict[str, Any]]:
    size = path.stat().st_size
    with path.open("rb") as fh:
        first = fh.read(8)
        if len(first) == 8:
            (n,) = struct.unpack("<Q", first)
            if n <= MAX_HEADER and 8 + n <= size:
                first += fh.read(n)
    return parse_header(first, size, str(path))


def header_tensors(header: dict[str, Any], file: str) -> list[TensorInfo]:
    """TensorInfos of one file's header, in file order."""
    items = [(k, v) for k, v in header.items() if k != "__metadata__"]
    items.sort(key=lambda kv: kv[1]["data_offsets"][0])
    return [
        TensorInfo(
            name=k,
            shape=tuple(v["shape"]),
            dtype=SAFETENSORS_DTYPES.get(v["dtype"], v["dtype"].lower()),
            file=file,
            nbytes=v["data_offsets"][1] - v["data_offsets"][0],
        )
        for k, v in items
    ]


def index_shards(index: Path, label: str) -> list[str]:
    """The shard file names a ``model.safetensors.index.json`` maps tensors to (sorted, unique)."""
    try:
        weight_map = json.loads(index.read_bytes())["weight_map"]
        ok = isinstance(weight_map, dict) and all(isinstance(v, str) for v in weight_map.values())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, IndexError):
        ok = False
    if not ok:
        raise SvdtoolError(f"{label} is not a valid safetensors index (no weight_map of tensor -> file)")
    shards = sorted(set(weight_map.values()))
    bad = next((s for s in shards if not s or Path(s).is_absolute() or ".." in Path(s).parts), None)
    if bad is not None:
        raise SvdtoolError(f"{label} is not a valid safetensors index: shard {bad!r} is outside the checkpoint")
    return shards


def find_shards(folder: Path) -> list[str]:
    """Shard file names of a folder checkpoint, from the index when there is one."""
    index = folder / INDEX_NAME
    if index.is_file():
        shards = index_shards(index, str(index))
        missing = [s for s in shards if not (folder / s).is_file()]
        if missing:
            raise SvdtoolError(
                f"{folder} is missing shards listed in {INDEX_NAME}: {', '.join(missing[:3])} (an interrupted "
                "download or a partial copy: fetch the missing files again, or re-save the checkpoint)"
            )
        return shards
    if (folder / SINGLE_NAME).is_file():
        return [SINGLE_NAME]
    found = sorted(p.name for p in folder.glob("*.safetensors") if not p.name.startswith("adapter_"))
    if not found:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES and p.is_file())
        if pickles:
            raise pickle_refusal(str(folder), pickles[0])
        raise SvdtoolError(
            f"{folder} holds no safetensors weights (looked for {SINGLE_NAME}, {INDEX_NAME} and *.safetensors)"
        )
    return found


def read_config(folder: Path) -> dict[str, object] | None:
    path = folder / "config.json"
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


class LocalSafetensors(Checkpoint):
    """Safetensors files on disk, read through a memory map, with one file open at a time."""

    def __init__(self, root: Path, files: list[str], meta: CheckpointMeta) -> None:
        self.root = root
        self._infos: list[TensorInfo] = []
        for f in files:
            _, header = read_header(root / f)
            self._infos.extend(header_tensors(header, f))
        check_unique(self._infos, str(root))
        meta.files = [SourceFile(path=f, size=(root / f).stat().st_size) for f in files]
        self.meta = meta
        self._open_file: str | None = None
        self._handle: Any = None

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def _file(self, info: TensorInfo) -> Any:
        from safetensors import SafetensorError, safe_open

        if self._open_file != info.file:
            self.close()
            try:
                self._handle = safe_open(str(self.root / info.file), framework="pt")
            except SafetensorError as exc:
                raise SvdtoolError(f"{self.root / info.file} cannot be read: {exc}") from None
            self._open_file = info.file
        return self._handle

    def read(self, info: TensorInfo) -> torch.Tensor:
        return self._file(info).get_tensor(info.name)

    def read_rows(self, info: TensorInfo, start: int, stop: int) -> torch.Tensor:
        """Only the bytes of those rows (a row-major tensor's rows are one contiguous range)."""
        return self._file(info).get_slice(info.name)[start:stop]

    def close(self) -> None:
        self._handle = None
        self._open_file = None


def open_local(path: Path, description: str) -> LocalSafetensors:
    """A folder or a single ``.safetensors`` file."""
    if path.is_dir():
        return LocalSafetensors(
            path, find_shards(path), CheckpointMeta(description, "folder", config=read_config(path))
        )
    return LocalSafetensors(
        path.parent, [path.name], CheckpointMeta(description, "file", config=read_config(path.parent))
    )
