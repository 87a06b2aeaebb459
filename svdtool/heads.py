"""Singular values of a weight split per attention head, as a Keras/JAX checkpoint stores it. Pure math.

HF stores q/k/v as one (heads·head_dim, hidden) matrix and o as (hidden, heads·head_dim); KerasHub stores
q/k/v kernels as (heads, hidden, head_dim) and o as (heads, head_dim, hidden), and ``np.linalg.svd`` of such a
3-D array is one SVD per head. This module reproduces that: head h of q/k/v is rows h·d … (h+1)·d − 1, of o
columns h·d … (h+1)·d − 1 (d = head_dim), each giving min(d, hidden) singular values.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch


def per_head_sigma(weight: torch.Tensor, heads: int, head_dim: int, axis: int) -> np.ndarray:
    """All heads' singular values of ``weight`` (out, in), float64, concatenated and sorted descending.

    ``axis`` 0 splits the rows (q/k/v), 1 the columns (o). The SVDs run batched in float64 on the
    weight's device.
    """
    import torch

    w = weight.detach().to(torch.float64)
    if axis == 0:
        blocks = w.reshape(heads, head_dim, w.shape[1])  # (heads, d, in)
    else:
        blocks = w.reshape(w.shape[0], heads, head_dim).permute(1, 0, 2)  # (heads, out, d)
    sigma = torch.linalg.svdvals(blocks).flatten().cpu().numpy()
    return np.sort(sigma)[::-1].copy()
