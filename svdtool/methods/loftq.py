"""LoftQ: LoRA-Fine-Tuning-aware Quantization (Li et al., ICLR 2024, arXiv 2310.08659), for a base that the
trainer loads in 4-bit NF4 (bitsandbytes ``load_in_4bit``).

Alternating minimisation of ‖W − (Q(R) + s·B·A)‖_F, starting from the quantised weight (Algorithm 1;
PEFT's ``loftq_init``): D₁ = Q(W); then T times, (B, A) = best rank r of W − D_t, split √(S/s), and, unless
last, D_{t+1} = Q(W − s·B·A). W (out, in); A (r, in); B (out, r); the residual R (out, in) is what the
trainer quantises at load, stored in the checkpoint's dtype so that Q(R) there is the D fitted here, code
for code and value for value. Q and the fits are described in :mod:`svdtool.methods.quantized`.

Differences from PEFT's ``loftq_init``: the √(S/s) split (PEFT's is right for α = r only, peft#1982);
the NF4 simulation follows the trainer's load (double quant, dtype) instead of fp32 without double quant;
float64 Gram ``eigh`` instead of a float32 full SVD. With α = r, fp32 weights and no double quant both
give the same D and s·B·A up to float32 rounding.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from svdtool.methods import register
from svdtool.methods.base import InitOptions, LoraInit, MethodSpec
from svdtool.methods.quantized import alternate, error_sigma

if TYPE_CHECKING:
    import torch


def loftq(w: torch.Tensor, opts: InitOptions, *, source_dtype: torch.dtype, **_: Any) -> LoraInit:
    """LoftQ init of one weight W (out, in) float64; the residual comes back in ``source_dtype``'s values."""
    return alternate(w, opts, source_dtype, fit_first=False)


SPEC = register(
    MethodSpec(
        name="loftq",
        fn=loftq,
        summary="NF4 base Q(R) plus a rank-r adapter fitted to W − Q(R), alternated (quantise first); "
        "A = √(S/s)·Vᵀ, B = U·√(S/s)",
        paper="Li et al. LoftQ: LoRA-Fine-Tuning-Aware Quantization for Large Language Models. ICLR 2024, "
        "arXiv 2310.08659",
        quantizes=True,
        rank_gain="energy",  # of the quantisation error W − Q(W) that the adapter fits
        energy_sigma=error_sigma,
    )
)
