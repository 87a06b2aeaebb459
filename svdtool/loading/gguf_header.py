"""A GGUF header reader that parses only what svdtool uses, over a memory map.

``gguf.GGUFReader`` turns every metadata value into numpy views, one per string: a 262144-token
vocabulary (tokens, scores, types, merges) cost 30.7 s of a 52.7 s run and 35 s for SmolLM2's 49152
tokens on the 2-core CPU. Here metadata arrays are skipped by walking their lengths, only scalar and
string values are decoded, and tensor data stays in the memory map until a tensor is read.

Format (GGUF v2/v3, little-endian): magic ``GGUF``, u32 version, u64 tensor count, u64 KV count; KV pairs
(string key, u32 type, value); tensor infos (string name, u32 n_dims, u64 dims innermost first, u32 ggml
type, u64 offset); then the data section at the next multiple of ``general.alignment`` (32 by default).
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

#: GGUF value types → struct format of one scalar (8 = string, 9 = array are handled apart).
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
DEFAULT_ALIGNMENT = 32


class GGUFFormatError(ValueError):
    """The bytes are not a GGUF file this reader understands."""


@dataclass(frozen=True)
class GGUFTensor:
    name: str
    dims: tuple[int, ...]  # GGUF order: innermost first
    ggml_type: int  # a gguf.GGMLQuantizationType value
    offset: int  # absolute byte offset in the file
    nbytes: int


@dataclass
class GGUFHeader:
    version: int
    metadata: dict[str, object]  # scalar and string values; arrays are recorded by their length only
    tensors: list[GGUFTensor]
    data_start: int


class _Cursor:
    def __init__(self, buf: mmap.mmap) -> None:
        self.buf = buf
        self.pos = 0

    def unpack(self, fmt: str) -> object:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise GGUFFormatError(f"truncated at byte {self.pos}")
        (value,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return value

    def string(self) -> str:
        n = int(self.unpack("<Q"))  # type: ignore[call-overload]
        if self.pos + n > len(self.buf):
            raise GGUFFormatError(f"string of {n} bytes runs past the end of the file")
        text = bytes(self.buf[self.pos : self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return text

    def skip_strings(self, count: int) -> None:
        buf, pos, end = self.buf, self.pos, len(self.buf)
        for _ in range(count):  # only the lengths are read: no str or numpy object per string
            if pos + 8 > end:
                raise GGUFFormatError("string array runs past the end of the file")
            pos += 8 + struct.unpack_from("<Q", buf, pos)[0]
        self.pos = pos

    def value(self, vtype: int) -> object:
        if vtype in _SCALAR:
            return self.unpack(_SCALAR[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            item, count = int(self.unpack("<I")), int(self.unpack("<Q"))  # type: ignore[call-overload]
            if item == _STRING:
                self.skip_strings(count)
            elif item in _SCALAR:
                self.pos += struct.calcsize(_SCALAR[item]) * count
            else:  # nested arrays: rare; walk them
                for _ in range(count):
                    self.value(item)
            return f"<array of {count}>"
        raise GGUFFormatError(f"unknown metadata value type {vtype}")


#: Bound on a dimension and on a tensor's element count (int64, as numpy and torch index).
MAX_ELEMENTS = 1 << 62


def read_header(buf: mmap.mmap) -> GGUFHeader:
    """Parse the header of a mapped GGUF file."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    cur = _Cursor(buf)
    if bytes(buf[:4]) != b"GGUF":
        raise GGUFFormatError("no GGUF magic")
    cur.pos = 4
    version = int(cur.unpack("<I"))  # type: ignore[call-overload]
    if version not in (2, 3):
        raise GGUFFormatError(f"GGUF version {version} (big-endian or unknown) is not supported")
    n_tensors, n_kv = int(cur.unpack("<Q")), int(cur.unpack("<Q"))  # type: ignore[call-overload]
    metadata: dict[str, object] = {}
    for _ in range(n_kv):
        key = cur.string()
        metadata[key] = cur.value(int(cur.unpack("<I")))  # type: ignore[call-overload]
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = int(cur.unpack("<I"))  # type: ignore[call-overload]
        dims = tuple(int(cur.unpack("<Q")) for _ in range(n_dims))  # type: ignore[call-overload]
        infos.append((name, dims, int(cur.unpack("<I")), int(cur.unpack("<Q"))))  # type: ignore[call-overload]
    alignment = metadata.get("general.alignment", DEFAULT_ALIGNMENT)
    align = alignment if isinstance(alignment, int) and alignment > 0 else DEFAULT_ALIGNMENT
    data_start = -(-cur.pos // align) * align
    tensors = []
    for name, dims, ggml_type, offset in infos:
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise GGUFFormatError(f"tensor {name} has unknown ggml type {ggml_type}") from None
        numel = 1
        for d in dims:
            numel *= d
        # Shapes that no tensor library can hold (a dimension or element count past int64), or a quantized
        # row that is not whole blocks, are damage; so is a zero-sized dimension beside a huge one.
        if any(d >= MAX_ELEMENTS for d in dims) or numel >= MAX_ELEMENTS:
            raise GGUFFormatError(f"tensor {name} has an impossible shape {list(dims)}")
        if dims and dims[0] % block:
            raise GGUFFormatError(f"tensor {name}: {dims[0]} values per row is not a whole number of {block}-blocks")
        nbytes = numel // block * type_size
        if data_start + offset + nbytes > len(buf):
            raise GGUFFormatError(f"tensor {name} runs past the end of the file")
        tensors.append(GGUFTensor(name, dims, ggml_type, data_start + offset, nbytes))
    return GGUFHeader(version, metadata, tensors, data_start)


def map_file(path: Path) -> mmap.mmap:
    with open(path, "rb") as f:
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
