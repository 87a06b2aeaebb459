"""OLoRA: Orthonormal Low-Rank Adaptation (Büyükakyüz, arXiv 2406.01775; PEFT ``init_lora_weights="olora"``).

Thin QR of the weight W (out, in) = Q R (Householder, no pivoting). With rank r and s = α/r (α/√r with rsLoRA):

    lora_B = Q_r = Q[:, :r]             (out, r), orthonormal columns
    lora_A = R_r = R[:r] = Q_rᵀ W       (r, in)
    W_res  = W − s·B·A = W − s·Q_r Q_rᵀ W

PEFT's semantics are kept: the factors are **not** divided by s, so the adapter holds s times the projection of
W onto span(Q_r) (which is the span of W's first r input columns, not a principal subspace). Householder QR
builds Q[:, :r] from the first r columns alone, so only W[:, :r] is factorised: Q_r, R[:r, :r] and their signs
are those of PEFT's full ``torch.linalg.qr`` (LAPACK geqrf), and R_r = Q_rᵀ W follows with one product. The QR
runs in float64 (PEFT: float32), so B and A equal PEFT's to float32 rounding.

GPT-2 ``Conv1D`` (stored (in, out)) is decomposed as its transpose, which PEFT's olora does not do.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from svdtool.linalg import factorize
from svdtool.methods import register
from svdtool.methods.base import InitOptions, LoraInit, MethodSpec

if TYPE_CHECKING:
    import torch


def olora(w: torch.Tensor, opts: InitOptions, **_: Any) -> LoraInit:
    """OLoRA init of one weight W (out, in), float32 or float64."""
    import torch

    w64 = w.detach().to(torch.float64)
    q, _ = torch.linalg.qr(w64[:, : opts.rank])  # (out, r): the first r columns of W's full Q
    lora_b = q.to(torch.float32).contiguous()  # (out, r)
    lora_a = (q.T @ w64).to(torch.float32).contiguous()  # (r, in) = R[:r]
    residual = factorize.subtract_adapter(w, lora_a, lora_b, opts.scaling)
    return LoraInit(lora_A=lora_a, lora_B=lora_b, residual=residual, meta={"algorithm": "qr64"})


SPEC = register(
    MethodSpec(
        name="olora",
        fn=olora,
        summary="B = Q_r, A = R_r from the QR of W (PEFT's olora: no division by s); W_res = W − s·Q_r Q_rᵀ W",
        paper="Büyükakyüz. OLoRA: Orthonormal Low-Rank Adaptation of Large Language Models. arXiv 2406.01775",
    )
)
