"""GGUF files (llama.cpp), dequantized tensor by tensor with the ``gguf`` package.

Tensor names stay GGUF's own (``blk.0.attn_q.weight``); ``svdtool.naming`` maps them to module
types. llama.cpp permutes the rows of q/k weights, which leaves singular values unchanged.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from svdtool.errors import SvdtoolError
from svdtool.loading.base import GGUF_PREFIX, Checkpoint, CheckpointMeta, TensorInfo
from svdtool.results.manifest import SourceFile

if TYPE_CHECKING:
    import torch

_FLOAT_NAMES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F64": "fp64"}
#: GGUF's integer tensor types: listed by their dtype (spectrum skips them), never dequantized.
_INT_NAMES = {"I8": "int8", "I16": "int16", "I32": "int32", "I64": "int64"}


def _check_types(tensors: Any, path: Path, gguf: Any) -> None:
    """Refuse, at open, a float tensor type that this gguf package cannot dequantize."""
    from gguf import quants

    readable = {"F32", "F16", *_INT_NAMES, *(t.name for t in getattr(quants, "_type_traits", {}))}
    for t in tensors:
        if t.tensor_type.name not in readable:
            version = getattr(gguf, "__version__", "") or _version("gguf")
            raise SvdtoolError(
                f"{path}: tensor {t.name} is stored as {t.tensor_type.name}, which the gguf package {version} "
                "cannot dequantize: upgrade it (pip install -U gguf), or convert the file to F16 or Q8_0 with "
                "llama.cpp's llama-quantize --allow-requantize"
            )


def _version(package: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return ""


class GGUFCheckpoint(Checkpoint):
    def __init__(self, path: Path, description: str) -> None:
        try:
            import gguf
        except ImportError:
            raise SvdtoolError("reading .gguf files needs the gguf package: pip install gguf") from None
        try:
            self._reader: Any = gguf.GGUFReader(str(path))
        except Exception as exc:  # the gguf package raises bare ValueError/struct errors on bad files
            raise SvdtoolError(f"{path} is not a readable GGUF file: {exc}") from None
        try:
            self._by_name = {t.name: t for t in self._reader.tensors}
            _check_types(self._reader.tensors, path, gguf)
            arch = self._reader.fields.get("general.architecture")
            config: dict[str, object] = {"model_type": str(arch.contents())} if arch is not None else {}
        except SvdtoolError:
            raise
        except Exception as exc:  # a header the gguf package parsed into nonsense
            raise SvdtoolError(f"{path} is not a readable GGUF file: {exc}") from None
        self.meta = CheckpointMeta(
            description, "gguf", files=[SourceFile(path=path.name, size=path.stat().st_size)], config=config
        )
        self._file = path.name

    def tensors(self) -> list[TensorInfo]:
        out = []
        for t in self._reader.tensors:
            qtype = t.tensor_type.name
            # GGUF lists dimensions innermost first; PyTorch order is the reverse.
            shape = tuple(int(d) for d in reversed(t.shape.tolist()))
            out.append(
                TensorInfo(
                    t.name,
                    shape,
                    _FLOAT_NAMES.get(qtype) or _INT_NAMES.get(qtype) or GGUF_PREFIX + qtype.lower(),
                    self._file,
                    int(t.n_bytes),
                )
            )
        return out

    def read(self, info: TensorInfo) -> torch.Tensor:
        import torch
        from gguf import quants

        t = self._by_name[info.name]
        array = quants.dequantize(t.data, t.tensor_type)  # float32 (or the float dtype), shape info.shape
        return torch.from_numpy(array.copy()).reshape(info.shape)

    def close(self) -> None:
        pass
