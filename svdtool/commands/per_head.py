"""The per-head reading of the claim: σ of q/k/v/o split per attention head (:mod:`svdtool.heads`).

It needs the weights themselves, so it takes each tensor from the main pass's one read: the pool's reader
thread hands every weight that passed the non-finite check to :meth:`PerHeadSigmas.take`, already on the
run's device, and each head-split weight gets its heads' σ computed there (batched, float64) before it goes
on to the workers. No byte is read or uploaded twice, also with ``--stream``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from svdtool import naming
from svdtool.heads import per_head_sigma
from svdtool.loading import TensorInfo

if TYPE_CHECKING:
    import torch


class PerHeadSigmas:
    """``sigmas``: tensor name → σ of all its heads, for every head-split weight taken."""

    def __init__(self, config: dict[str, object] | None) -> None:
        self.config = config
        self.sigmas: dict[str, np.ndarray] = {}

    def take(self, info: TensorInfo, w: torch.Tensor) -> None:
        """Record the heads' σ of ``w`` (finite, as the reader's check found it) when it is split per head."""
        split = naming.head_blocks(info.name, info.shape, self.config)
        if split is not None:
            self.sigmas[info.name] = per_head_sigma(w, *split)
