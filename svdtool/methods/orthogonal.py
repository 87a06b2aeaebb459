"""Orthogonal LoRA init (PEFT ``init_lora_weights="orthogonal"``, PRs #2389/#2498): A and B non-zero, B·A = 0.

Rank r (even). Q = qr(X) of a Gaussian X (r, r); with Q_odd = Q[0::2] and Q_even = Q[1::2] (r/2, r each) and
Gaussian G_A (in, r/2), G_B (r/2, out):

    lora_A = (G_A Q_odd)ᵀ / 10        (r, in)
    lora_B = G_Bᵀ Q_even / 10         (out, r)
    B·A    = G_Bᵀ (Q_even Q_oddᵀ) G_Aᵀ / 100 = 0     (distinct rows of an orthogonal Q)

so W is left untouched. PEFT draws from the global RNG, unseeded and after the layer constructors; here each
layer draws from its own generator, seeded with (``--seed``, tensor name), and computes in float64 before one
rounding to float32. The rounding leaves ‖s·B·A‖/‖W‖ at the float32 floor (about 1e-8), recorded per layer as
the reconstruction error.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, Any

from svdtool.errors import SvdtoolError
from svdtool.methods import register
from svdtool.methods.base import InitOptions, LoraInit, MethodSpec

if TYPE_CHECKING:
    import torch


def layer_seed(seed: int, name: str) -> int:
    """A 63-bit seed from (seed, tensor name): layers of equal shape get independent draws."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


def check(opts: InitOptions) -> None:
    """PEFT's rule: the rank splits into two orthogonal halves, so it must be even."""
    if opts.rank % 2:
        raise SvdtoolError(f"--rank {opts.rank}: orthogonal init needs an even rank (A and B take r/2 rows of Q each)")


def orthogonal(w: torch.Tensor, opts: InitOptions, *, name: str = "", **_: Any) -> LoraInit:
    """Orthogonal init of one weight W (out, in); W is returned unchanged."""
    import torch

    check(opts)
    r, (out_f, in_f) = opts.rank, w.shape
    seed = layer_seed(int(opts.extra.get("seed", 0)), name)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    f64 = torch.float64
    q, _ = torch.linalg.qr(torch.randn(r, r, generator=gen, dtype=f64))
    q_odd, q_even = q[0::2], q[1::2]  # (r/2, r) each, mutually orthogonal rows
    lora_a = (torch.randn(in_f, r // 2, generator=gen, dtype=f64) @ q_odd).T / 10.0  # (r, in)
    lora_b = torch.randn(r // 2, out_f, generator=gen, dtype=f64).T @ q_even / 10.0  # (out, r)
    a32 = lora_a.to(device=w.device, dtype=torch.float32).contiguous()
    b32 = lora_b.to(device=w.device, dtype=torch.float32).contiguous()
    return LoraInit(lora_A=a32, lora_B=b32, residual=w, meta={"algorithm": "orthogonal", "seed": seed})


SPEC = register(
    MethodSpec(
        name="orthogonal",
        fn=orthogonal,
        summary="seeded A, B from two orthogonal halves of a random r×r rotation, so B·A = 0; the base is untouched",
        paper="PEFT init_lora_weights='orthogonal' (huggingface/peft PRs #2389, #2498)",
        keeps_base=True,
        check=check,
    )
)
