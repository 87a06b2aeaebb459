"""MiCA: Minor Component Adaptation (arXiv 2604.01694; PEFT ≥ 0.20 ``init_lora_weights="mica"``).

Economy SVD W (out, in) = U S Vᵀ with k = min(out, in) values; rank r:

    lora_B = U[:, k−r:]      (out, r), the left singular vectors of the r smallest σ, FROZEN in training
    lora_A = 0               (r, in), trainable
    W unchanged              (s·B·A = 0 at init, so the base is not touched)

Only A trains, so every update s·B·ΔA lies in the minor left singular subspace of W. The minor vectors need an
exact decomposition: a direct float64 SVD (PEFT: float32 ``torch.linalg.svd``). Minor singular values are often
clustered, so U[:, k−r:] depends on the implementation: it is computed once and stored, never recomputed.

The adapter config says ``init_lora_weights: "mica"``: PEFT ≥ 0.20 then wraps each layer in its MiCA variant,
which keeps lora_B frozen; loading with ``low_cpu_mem_usage=True`` skips PEFT's own SVD (the saved B is loaded).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from svdtool.linalg import factorize
from svdtool.methods import register
from svdtool.methods.base import InitOptions, LoraInit, MethodSpec

if TYPE_CHECKING:
    import torch


def mica(w: torch.Tensor, opts: InitOptions, **_: Any) -> LoraInit:
    """MiCA init of one weight W (out, in): B = bottom-r left singular vectors, A = 0, W unchanged."""
    import torch

    t = factorize.bottom_svd(w, opts.rank)  # descending among the r smallest, as U[:, -r:]
    lora_b = t.u.to(torch.float32).contiguous()  # (out, r)
    lora_a = torch.zeros(opts.rank, w.shape[1], dtype=torch.float32, device=w.device)  # (r, in)
    meta = {"algorithm": t.algorithm, "certified_residual": t.residual, "sigma": t.s.detach().cpu().tolist()}
    return LoraInit(lora_A=lora_a, lora_B=lora_b, residual=w, meta=meta)


SPEC = register(
    MethodSpec(
        name="mica",
        fn=mica,
        summary="B = the r minor left singular vectors of W (frozen), A = 0 (trained); the base is untouched",
        paper="Minor Component Adaptation (MiCA), arXiv 2604.01694; PEFT ≥ 0.20 init_lora_weights='mica'",
        frozen=("lora_B",),
        keeps_base=True,
        init_lora_weights="mica",
    )
)
