"""The per-head reading of the claim: σ of q/k/v/o split per attention head (:mod:`svdtool.heads`).

It needs the weights themselves, so it reads the attention matrices a second time after the main pass
(from a local file that is the page cache; with ``--stream`` it re-fetches them: about a third of a
Llama-style model's bytes).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from svdtool import naming
from svdtool.heads import per_head_sigma
from svdtool.loading import Checkpoint, TensorInfo

if TYPE_CHECKING:
    import torch


def per_head_sigmas(ckpt: Checkpoint, infos: list[TensorInfo], device: torch.device) -> dict[str, np.ndarray]:
    """Tensor name → σ of all its heads, for every analysed weight the config splits per head."""
    out = {}
    for info in infos:
        split = naming.head_blocks(info.name, info.shape, ckpt.meta.config)
        if split is not None:
            out[info.name] = per_head_sigma(ckpt.read(info).to(device), *split)
    return out
