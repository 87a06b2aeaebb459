"""What every checkpoint reader offers: a header-only listing, and one tensor read at a time."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from svdtool.results.manifest import SourceFile

if TYPE_CHECKING:
    import torch

#: safetensors dtype codes -> the short names svdtool reports.
SAFETENSORS_DTYPES = {
    "BF16": "bf16",
    "F16": "fp16",
    "F32": "fp32",
    "F64": "fp64",
    "F8_E4M3": "fp8_e4m3",
    "F8_E5M2": "fp8_e5m2",
    "I8": "int8",
    "U8": "uint8",
    "I16": "int16",
    "I32": "int32",
    "I64": "int64",
    "BOOL": "bool",
}
#: Prefix of GGUF quantized types (``gguf_q4_1``); the GGUF reader dequantizes them to fp32.
GGUF_PREFIX = "gguf_"
#: Dtypes whose matrices are weights we can analyse (quantized/integer tensors are not).
FLOAT_DTYPES = frozenset({"bf16", "fp16", "fp32", "fp64"})


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as listed in a checkpoint's header, before any data is read."""

    name: str
    shape: tuple[int, ...]
    dtype: str  # bf16 | fp16 | fp32 | fp64 | a GGUF type such as Q4_1 | …
    file: str  # the shard that holds it, relative to the checkpoint root
    nbytes: int  # bytes on disk (or over the network)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass
class CheckpointMeta:
    """Provenance of a checkpoint, for the run manifest."""

    description: str  # what the user asked for: a repo id, a path
    kind: str  # hub | hub-stream | folder | file | gguf
    revision: str | None = None  # the revision the user asked for
    sha: str | None = None  # the commit it resolved to
    files: list[SourceFile] = field(default_factory=list)
    config: dict[str, object] | None = None  # config.json, when there is one

    @property
    def model_type(self) -> str | None:
        value = (self.config or {}).get("model_type")
        return value if isinstance(value, str) else None


class Checkpoint(ABC):
    """A set of named tensors read lazily, one at a time."""

    meta: CheckpointMeta

    @abstractmethod
    def tensors(self) -> list[TensorInfo]:
        """Every tensor, from headers only, in an order that reads each file sequentially."""

    @abstractmethod
    def read(self, info: TensorInfo) -> torch.Tensor:
        """One tensor on the CPU in its source dtype (GGUF tensors come dequantized to fp32).

        The result may be a zero-copy view of a memory map: never write into it.
        """

    def read_rows(self, info: TensorInfo, start: int, stop: int) -> torch.Tensor:
        """Rows ``start:stop`` of a tensor (dim 0), on the CPU in its source dtype: one rank's FSDP shard.

        Readers that can seek read only those rows; the default reads the tensor and slices it.
        """
        return self.read(info)[start:stop]

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release open files or connections."""

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
