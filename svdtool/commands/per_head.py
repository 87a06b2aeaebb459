"""The per-head reading of the claim: σ of q/k/v/o split per attention head (:mod:`svdtool.heads`).

It needs the weights themselves, so it taps the one read of each tensor that the main pass does:
:class:`PerHeadTap` wraps the checkpoint, and each head-split weight read through it also gets its heads'
σ computed (batched, float64, on the run's device) before it goes on to the workers. No byte is read twice,
also with ``--stream``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from svdtool import naming
from svdtool.heads import per_head_sigma
from svdtool.loading import Checkpoint, TensorInfo

if TYPE_CHECKING:
    import torch


class PerHeadTap(Checkpoint):
    """``inner`` as it is, recording in ``sigmas`` (tensor name → σ of all its heads) every head-split read."""

    def __init__(self, inner: Checkpoint, device: torch.device) -> None:
        self.inner = inner
        self.meta = inner.meta
        self.device = device
        self.sigmas: dict[str, np.ndarray] = {}

    def tensors(self) -> list[TensorInfo]:
        return self.inner.tensors()

    def read(self, info: TensorInfo) -> torch.Tensor:
        w = self.inner.read(info)
        split = naming.head_blocks(info.name, info.shape, self.meta.config)
        if split is None:
            return w
        w = w.to(self.device)  # the pool's upload of this tensor is then a no-op: one copy, not two
        # A weight with NaN/±Inf is skipped by the run (its reader-side check); its heads are not decomposed.
        if bool(w.isfinite().all()):
            self.sigmas[info.name] = per_head_sigma(w, *split)
        return w

    def close(self) -> None:
        self.inner.close()
