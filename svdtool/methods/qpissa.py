"""QPiSSA: PiSSA with the residual quantised to 4-bit NF4 (Meng, Wang, Zhang; NeurIPS 2024, arXiv 2404.02948,
§ QPiSSA; the authors' ``utils/init_qpissa.py``). In no library.

PiSSA first, then alternation (the authors' ``--iter``): (B, A) = top r of W, split √(S/s); then T times,
R = W − s·B·A, D = Q(R) (NF4 as the trainer loads it) and, unless last, (B, A) = best rank r of W − D.
W (out, in); A (r, in); B (out, r); the residual R (out, in) is stored in the checkpoint's dtype, so that the
trainer's ``load_in_4bit`` turns it into exactly D. With T = 1 this is PiSSA with an NF4 base: R + s·B·A = W.
Details in :mod:`svdtool.methods.quantized`.

Differences from the authors' code: the √(S/s) split (theirs assumes α = r); D simulates the trainer's load
(their scripts fit fp32 without double quant, then train with double quant in bf16); float64 Gram ``eigh``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from svdtool.methods import register
from svdtool.methods.base import InitOptions, LoraInit, MethodSpec
from svdtool.methods.quantized import alternate

if TYPE_CHECKING:
    import torch


def qpissa(w: torch.Tensor, opts: InitOptions, *, source_dtype: torch.dtype, **_: Any) -> LoraInit:
    """QPiSSA init of one weight W (out, in) float64; the residual comes back in ``source_dtype``'s values."""
    return alternate(w, opts, source_dtype, fit_first=True)


SPEC = register(
    MethodSpec(
        name="qpissa",
        fn=qpissa,
        summary="PiSSA's top-r adapter with the residual NF4-quantised at load, alternated (fit first); "
        "A = √(S/s)·Vᵀ, B = U·√(S/s)",
        paper="Meng, Wang, Zhang. PiSSA: Principal Singular Values and Singular Vectors Adaptation. NeurIPS 2024, "
        "arXiv 2404.02948 (QPiSSA)",
        quantizes=True,
        rank_gain="energy",  # PiSSA's: the adapter starts as W's top r
    )
)
