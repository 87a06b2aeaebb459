"""SVD-initialised LoRA-FA: LoRA with a frozen A (LoRA-FA, Zhang et al., arXiv 2308.03303) whose A holds the
principal input directions of W, weighted by their singular values.

W (out, in) = U S Vᵀ, top r components, s = α/r (α/√r with rsLoRA):

    lora_A = diag(S_r) V_rᵀ           (r, in)   FROZEN during training
    lora_B = U_r / s                  (out, r)  trainable
    W_res  = W − s·B·A                (out, in)

so s·B·A = U_r S_r V_rᵀ and the starting model equals the original. Only B trains, so every update
ΔW = s·ΔB·A lies in the row space of A, the top-r right singular subspace of W.

The adapter loads as an ordinary PEFT LoRA (no config field can say "A is frozen"): the trainer must
freeze A, either with ``requires_grad_(False)`` on every ``lora_A`` parameter or with
``peft.optimizers.create_lorafa_optimizer``. The ``shredder67/svd-lorafa`` seed froze (U_r Σ_r)ᵀ with no
residual and only worked on square layers (``methods.md`` §4); this is the corrected form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from svdtool.linalg import factorize
from svdtool.methods import register
from svdtool.methods.base import InitOptions, LoraInit, MethodSpec
from svdtool.methods.pissa import triplet_meta

if TYPE_CHECKING:
    import torch


def svd_lora_fa(w: torch.Tensor, opts: InitOptions, **_: Any) -> LoraInit:
    """SVD-LoRA-FA init of one weight W (out, in), float32 or float64."""
    import torch

    extra = opts.extra
    if extra.get("svd", "exact") != "exact":
        raise ValueError("svd-lora-fa uses the exact SVD; --svd randomized applies to pissa only")
    t = factorize.top_svd(w, opts.rank, algorithm=extra.get("algorithm", "auto"), seed=int(extra.get("seed", 0)))
    lora_a = (t.s[:, None] * t.vh).to(torch.float32).contiguous()  # (r, in)
    lora_b = (t.u / opts.scaling).to(torch.float32).contiguous()  # (out, r)
    residual = factorize.subtract_adapter(w, lora_a, lora_b, opts.scaling)
    return LoraInit(lora_A=lora_a, lora_B=lora_b, residual=residual, meta=triplet_meta(t))


SPEC = register(
    MethodSpec(
        name="svd-lora-fa",
        fn=svd_lora_fa,
        summary="LoRA-FA with A = diag(S_r)·V_rᵀ frozen and B = U_r/s trained; the rest of W in the base",
        paper="Zhang et al. LoRA-FA: Memory-efficient Low-rank Adaptation for Large Language Models Fine-tuning. "
        "arXiv 2308.03303 (A frozen); SVD init as in shredder67/svd-lorafa, corrected",
        frozen=("lora_A",),
        rank_gain="energy",
    )
)
