"""MiLoRA: Minor singular component LoRA (Wang et al., NAACL 2025, arXiv 2406.09044; ``sufenlp/MiLoRA``).

PiSSA's formulas applied to the r *smallest* components of the economy SVD W = U S Vᵀ (k = min(out, in)
values): with U_m = U[:, k−r:], S_m = S[k−r:], V_m = V[:, k−r:] and s = α/r (α/√r with rsLoRA),

    lora_A = diag(√(S_m/s)) V_mᵀ      (r, in)
    lora_B = U_m diag(√(S_m/s))       (out, r)
    W_res  = W − s·B·A                (out, in)

The principal part stays in the frozen base and training starts in the minor subspace. Minor components
need an exact decomposition: a direct float64 SVD (``svd64``); randomized or Krylov methods cannot find
them, so ``svd: randomized`` is refused. The reference code subtracts in place in fp16 and loses part of
the tiny delta; here the residual is computed in float64 and rounded once (its error is recorded).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from svdtool.linalg import factorize
from svdtool.methods import register
from svdtool.methods.base import InitOptions, LoraInit, MethodSpec
from svdtool.methods.pissa import sqrt_split

if TYPE_CHECKING:
    import torch


def milora(w: torch.Tensor, opts: InitOptions, **_: Any) -> LoraInit:
    """MiLoRA init of one weight W (out, in), float32 or float64."""
    if opts.extra.get("svd", "exact") != "exact":
        raise ValueError("milora needs an exact SVD: a randomized SVD cannot find the smallest components")
    return sqrt_split(w, factorize.bottom_svd(w, opts.rank), opts)


SPEC = register(
    MethodSpec(
        name="milora",
        fn=milora,
        summary="bottom-r (minor) singular components in the adapter, PiSSA's split; the principal part stays frozen",
        paper="Wang et al. MiLoRA: Harnessing Minor Singular Components for Parameter-Efficient LLM Finetuning. "
        "NAACL 2025, arXiv 2406.09044",
    )
)
