"""LoRA-One: one-step full gradient (Zhang, Liu, Chen; ICML 2025, arXiv 2502.01235; ``YuanheZ/LoRA-One``).

Inputs: the weight W (out, in) and the gradient G (out, in) of the loss on calibration data, estimated exactly as
for LoRA-GA (:mod:`svdtool.gradients`). With −G = U S Vᵀ (top r, σ₁ the largest) and γ (default 128):

    lora_B = U_r diag(√S_r) / √(σ₁ γ)       (out, r)
    lora_A = diag(√S_r) V_rᵀ / √(σ₁ γ)      (r, in)
    s·B·A  = (s / (σ₁ γ)) · U_r S_r V_rᵀ    the best rank-r step along −G, normalised by its spectral norm

Unlike LoRA-GA there is **no residual**: the base stays the original W and the starting model is W + s·B·A, one
preconditioned gradient-descent step (the reference comments out the offset on purpose). The top r triplets are
exact (:func:`svdtool.linalg.factorize.top_svd`, certified; the reference uses ``svd_lowrank``); with ``--gradient
sketch`` they come from the sketch. ``reducer`` keeps only those r triplets of each G during estimation.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from svdtool.errors import SvdtoolError
from svdtool.linalg import factorize
from svdtool.linalg.sketch import LowRankGradient
from svdtool.methods import register
from svdtool.methods.base import InitOptions, LoraInit, MethodSpec

if TYPE_CHECKING:
    import torch

GAMMA = 128.0


def top_triplets(gradient: torch.Tensor | LowRankGradient, r: int, seed: int) -> LowRankGradient:
    """G's top r singular triplets (float64 when computed here): exact, or the first r of given factors."""
    if isinstance(gradient, LowRankGradient):
        if gradient.rank < r:
            raise SvdtoolError(f"the gradient factors hold {gradient.rank} singular triplets; rank {r} needs {r}")
        return LowRankGradient(gradient.U[:, :r], gradient.S[:r], gradient.Vh[:r], gradient.source)
    t = factorize.top_svd(gradient, r, seed=seed)
    return LowRankGradient(t.u, t.s, t.vh, t.algorithm)


def reducer(r: int, extra: dict[str, Any]) -> Callable[[str, torch.Tensor], LowRankGradient]:
    """``reduce(name, G)``: the top-r triplets :func:`lora_one` uses, computed while G is on the device."""
    seed = int(extra.get("seed", 0))
    return lambda name, g: top_triplets(g, r, seed)


def lora_one(w: torch.Tensor, opts: InitOptions, *, gradient: Any = None, name: str = "", **_: Any) -> LoraInit:
    """LoRA-One init of one weight W (out, in) from its gradient G (out, in) or G's top factors; W is unchanged."""
    import torch

    if gradient is None:
        raise SvdtoolError("LoRA-One needs the gradient of every target (pass --calib or --grad-cache)")
    gamma = float(opts.extra.get("gamma", GAMMA))
    if not gamma > 0:
        raise SvdtoolError(f"--gamma {gamma}: must be positive")
    if tuple(gradient.shape) != tuple(w.shape):
        raise SvdtoolError(f"gradient shape {list(gradient.shape)} does not match the weight's {list(w.shape)}")
    t = top_triplets(gradient.to(w.device), opts.rank, int(opts.extra.get("seed", 0)))
    s = t.S.to(torch.float64)
    sigma1 = float(s[0].item())
    if not sigma1 > 0:
        raise SvdtoolError(f"the gradient of {name or 'a target'} is zero: LoRA-One has no direction to start from")
    root = (s / (sigma1 * gamma)).sqrt()  # (r,)
    lora_b = (-t.U.to(torch.float64) * root[None, :]).to(torch.float32).contiguous()  # (out, r): U of −G is −U of G
    lora_a = (root[:, None] * t.Vh.to(torch.float64)).to(torch.float32).contiguous()  # (r, in)
    meta = {"algorithm": t.source, "sigma": s.cpu().tolist(), "gamma": gamma}
    return LoraInit(lora_A=lora_a, lora_B=lora_b, residual=w, meta=meta)


SPEC = register(
    MethodSpec(
        name="lora-one",
        fn=lora_one,
        summary="B = U_r√S_r/√(σ₁γ), A = √S_r·V_rᵀ/√(σ₁γ) from the SVD of −G: one gradient step, on the "
        "original base (no residual)",
        paper="Zhang, Liu, Chen. One-step full gradient suffices for low-rank fine-tuning, provably and "
        "efficiently. ICML 2025, arXiv 2502.01235",
        needs_gradient=True,
        keeps_base=True,
        changes_output=True,
        reducer=reducer,
        rank_gain="coverage",
    )
)
