"""Tensors that are not in a checkpoint file, offered to the local pool as one (``coverage``'s gradients).

The pool (:func:`svdtool.engine.pool.compute_all`) reads one tensor at a time from a
:class:`~svdtool.loading.Checkpoint`. Gradients are not in a model file: they sit in memory, in float32,
usually on the device already, or in a ``--grad-cache`` file that reads each one on lookup.
:class:`InMemory` hands the pool each tensor as the mapping gives it: no copy for a tensor in memory (the
reader's upload to the device is a no-op for one that lives there), one read for a cached one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from math import prod
from typing import TYPE_CHECKING

from svdtool.loading import Checkpoint, CheckpointMeta, TensorInfo

if TYPE_CHECKING:
    import torch

#: Where a mapped tensor comes from, in its :class:`TensorInfo` (there is no file).
MEMORY = "<memory>"
_BYTES = {"fp32": 4, "fp64": 8, "bf16": 2, "fp16": 2}


class InMemory(Checkpoint):
    """``tensors[name]`` for each name of ``shapes`` (in that order), as a read-only checkpoint.

    The headers come from ``shapes`` and ``dtype`` alone, so listing them never looks a tensor up.
    """

    def __init__(
        self,
        tensors: Mapping[str, torch.Tensor],
        shapes: Mapping[str, Sequence[int]],
        dtype: str = "fp32",
        meta: CheckpointMeta | None = None,
    ) -> None:
        self._tensors = tensors
        self._infos = [
            TensorInfo(name, tuple(shape), dtype, MEMORY, prod(shape) * _BYTES.get(dtype, 4))
            for name, shape in shapes.items()
        ]
        self.meta = meta or CheckpointMeta(description="tensors in memory", kind="memory")

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def read(self, info: TensorInfo) -> torch.Tensor:
        """The tensor as the mapping gives it, where it lives (never written into: the pool only reads)."""
        return self._tensors[info.name]
