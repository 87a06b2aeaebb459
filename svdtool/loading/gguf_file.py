"""GGUF files (llama.cpp), dequantized tensor by tensor with the ``gguf`` package.

Tensor names stay GGUF's own (``blk.0.attn_q.weight``); ``svdtool.naming`` maps them to module
types. llama.cpp permutes the rows of q/k weights, which leaves singular values unchanged.

Opening parses only the header (:mod:`svdtool.loading.gguf_header`, over a memory map); a tensor's
bytes are touched, and dequantized, only when it is read.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from svdtool.errors import SvdtoolError
from svdtool.loading.base import GGUF_PREFIX, Checkpoint, CheckpointMeta, TensorInfo
from svdtool.loading.gguf_header import GGUFHeader, GGUFTensor, map_file, read_header
from svdtool.results.manifest import SourceFile

if TYPE_CHECKING:
    import torch

_FLOAT_NAMES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F64": "fp64"}
#: GGUF's integer tensor types: listed by their dtype (spectrum skips them), never dequantized.
_INT_NAMES = {"I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64"}


def _check_types(tensors: list[GGUFTensor], path: Path, gguf: Any) -> None:
    """Refuse, at open, a float tensor type that this gguf package cannot dequantize."""
    from gguf import quants

    readable = {"F32", "F16", "F64", *_INT_NAMES, *(t.name for t in getattr(quants, "_type_traits", {}))}
    for t in tensors:
        type_name = gguf.GGMLQuantizationType(t.ggml_type).name
        if type_name not in readable:
            version = getattr(gguf, "__version__", "") or _version("gguf")
            raise SvdtoolError(
                f"{path}: tensor {t.name} is stored as {type_name}, which the gguf package {version} "
                "cannot dequantize: upgrade it (pip install -U gguf), or convert the file to F16 or Q8_0 with "
                "llama.cpp's llama-quantize --allow-requantize"
            )


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


#: Types copied out of the map as they are (integers stay integers: spectrum lists and skips them).
_VIEWS = {"F32": "<f4", "F64": "<f8", "I8": "<i1", "I16": "<i2", "I32": "<i4", "I64": "<i8"}


class GGUFCheckpoint(Checkpoint):
    def __init__(self, path: Path, description: str) -> None:
        try:
            import gguf
        except ImportError:
            raise SvdtoolError("reading .gguf files needs the gguf package: pip install gguf") from None
        try:
            self._map = map_file(path)
        except (OSError, ValueError) as exc:  # ValueError: mmap of an empty file
            raise SvdtoolError(f"{path} is not a readable GGUF file: {exc}") from None
        try:
            self._header: GGUFHeader = read_header(self._map)
            _check_types(self._header.tensors, path, gguf)
        except SvdtoolError:
            self._map.close()
            raise
        except Exception as exc:  # GGUFFormatError, or anything else a damaged header leads to
            self._map.close()
            raise SvdtoolError(f"{path} is not a readable GGUF file: {exc}") from None
        self._by_name = {t.name: t for t in self._header.tensors}
        arch = self._header.metadata.get("general.architecture")
        config: dict[str, object] = {"model_type": str(arch)} if isinstance(arch, str) else {}
        self.meta = CheckpointMeta(
            description, "gguf", files=[SourceFile(path=path.name, size=path.stat().st_size)], config=config
        )
        self._file = path.name
        self._gguf = gguf

    def tensors(self) -> list[TensorInfo]:
        out = []
        for t in self._header.tensors:
            qtype = self._gguf.GGMLQuantizationType(t.ggml_type).name
            # GGUF lists dimensions innermost first; PyTorch order is the reverse.
            shape = tuple(reversed(t.dims))
            out.append(
                TensorInfo(
                    t.name,
                    shape,
                    _FLOAT_NAMES.get(qtype) or _INT_NAMES.get(qtype) or GGUF_PREFIX + qtype.lower(),
                    self._file,
                    t.nbytes,
                )
            )
        return out

    def read(self, info: TensorInfo) -> torch.Tensor:
        import torch

        try:
            values = self._decode(info)
        except (ValueError, TypeError, NotImplementedError, RuntimeError) as exc:
            problem = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
        else:
            return torch.from_numpy(values).reshape(info.shape)
        # Raised here, outside the handler, so that no traceback keeps a view of the map alive (close() needs none).
        raise SvdtoolError(f"{self._file}: tensor {info.name} cannot be decoded ({problem}): the file is damaged")

    def _decode(self, info: TensorInfo) -> Any:
        """The tensor's values as a new numpy array (never a view of the map), flat or (rows, columns)."""
        import numpy as np
        from gguf import quants
        from gguf.quants import quant_shape_to_byte_shape

        t = self._by_name[info.name]
        qtype = self._gguf.GGMLQuantizationType(t.ggml_type)
        raw = np.frombuffer(self._map, dtype=np.uint8, count=t.nbytes, offset=t.offset)  # a view of the map
        if qtype.name in _VIEWS:  # copy out of the read-only map
            return raw.view(_VIEWS[qtype.name]).copy()
        if qtype.name == "F16":
            return raw.view(np.float16).astype(np.float32)
        # quantized (and BF16): gguf's dequantize of (rows, bytes per row) gives a new float32 array
        return quants.dequantize(raw.reshape(quant_shape_to_byte_shape(info.shape, qtype)), qtype)

    def close(self) -> None:
        self._map.close()
