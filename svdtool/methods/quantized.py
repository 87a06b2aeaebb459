"""What LoftQ and QPiSSA share: the trainer's NF4 load settings, the alternation between NF4 quantisation
of the residual and a rank-r fit of what quantisation lost, and the errors both report. Pure math.

Notation: W (out, in) float64; s = α/r (α/√r with rsLoRA); Q(X) = the dequantised NF4 of X *as stored*
(X rounded once to the residual's dtype, which the trainer loads and quantises; :mod:`svdtool.quant.nf4`,
bit-exact with bitsandbytes). Each rank-r fit takes the top r triplets of its target from a float64
Gram ``eigh`` (:func:`svdtool.linalg.factorize.gram_eigh`: a quantisation error has a flat spectrum) and splits
them as PiSSA does, A = √(S/s)·Vᵀ, B = U·√(S/s), so s·B·A = U S Vᵀ for any α (PEFT's ``loftq_init``
ignores s: only α = r is right there, peft#1982).

* ``fit → quantise`` (QPiSSA): (B, A) ← fit(W); then T times: R ← W − s·B·A, D ← Q(R), and, unless last,
  (B, A) ← fit(W − D). The adapter is the one R was built from.
* ``quantise → fit`` (LoftQ): R ← W, D ← Q(R); then T times: (B, A) ← fit(W − D) and, unless last,
  R ← W − s·B·A, D ← Q(R). The adapter is fitted to the final D.

The residual written to the checkpoint is R in its storage dtype: the trainer's ``load_in_4bit`` turns it
into exactly D. The per-layer figure of merit is ‖W − (D + s·B·A)‖_F / ‖W − Q(W)‖_F (below 1: better
than plain NF4 of the original weight, loaded the same way).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from svdtool.linalg import factorize
from svdtool.methods.base import InitOptions, LoraInit
from svdtool.methods.pissa import sqrt_split, triplet_meta
from svdtool.quant import nf4

if TYPE_CHECKING:
    import torch

#: Alternations by default: the issue's 5 (PEFT's ``LoftQConfig.loftq_iter`` defaults to 1; the PiSSA
#: authors' QPiSSA scripts run ``--iter 5``).
DEFAULT_ITERS = 5
QUANT_TYPES = ("nf4",)


@dataclass(frozen=True)
class QuantSettings:
    quant: str  # nf4
    iters: int
    config: nf4.NF4Config


def settings(extra: dict[str, Any]) -> QuantSettings:
    quant = str(extra.get("quant") or "nf4")
    if quant not in QUANT_TYPES:
        raise ValueError(f"quantisation {quant!r} is not simulated: only nf4 is")
    iters = int(extra.get("quant_iters", DEFAULT_ITERS))
    if iters < 1:
        raise ValueError(f"quant_iters {iters}: at least 1 alternation")
    config = nf4.NF4Config(
        double_quant=bool(extra.get("double_quant", False)), backend=str(extra.get("quant_backend", "cuda"))
    )
    return QuantSettings(quant, iters, config)


def _quantized(x64: torch.Tensor, dtype: torch.dtype, config: nf4.NF4Config) -> tuple[torch.Tensor, torch.Tensor]:
    """(R as stored, then widened to float64; Q(R) in float64): what the trainer's 4-bit load makes of R."""
    import torch

    stored = x64.to(dtype)
    return stored.to(torch.float64), nf4.fake_quantize(stored, config).to(torch.float64)


def alternate(w: torch.Tensor, opts: InitOptions, source_dtype: torch.dtype, *, fit_first: bool) -> LoraInit:
    """QPiSSA (``fit_first``) or LoftQ on one weight W (out, in) float64; see the module docstring."""
    import torch

    q = settings(opts.extra)
    s, r = opts.scaling, opts.rank

    def fit(target: torch.Tensor) -> tuple[LoraInit, factorize.Triplets]:
        t = factorize.gram_eigh(target, r)
        return sqrt_split(w, t, opts), t

    if fit_first:
        out, trip = fit(w)
        for i in range(q.iters):
            stored, deq = _quantized(out.residual, source_dtype, q.config)
            if i + 1 < q.iters:
                out, trip = fit(w - deq)
    else:
        stored, deq = _quantized(w, source_dtype, q.config)
        for i in range(q.iters):
            out, trip = fit(w - deq)
            if i + 1 < q.iters:
                stored, deq = _quantized(out.residual, source_dtype, q.config)
    a64, b64 = out.lora_A.to(torch.float64), out.lora_B.to(torch.float64)
    error = float(torch.addmm(deq, b64, a64, alpha=s).sub_(w).norm())
    _, plain = _quantized(w, source_dtype, q.config)
    plain_error = float((w - plain).norm())
    w_norm = float(w.norm()) or 1.0
    meta = triplet_meta(trip)
    meta.update(
        quant=q.quant,
        double_quant=q.config.double_quant,
        quant_iters=q.iters,
        quant_backend=q.config.backend,
        quant_error=error / w_norm,  # ‖W − (D + s·B·A)‖ / ‖W‖
        nf4_error=plain_error / w_norm,  # ‖W − Q(W)‖ / ‖W‖
        quant_ratio=error / plain_error if plain_error > 0 else 0.0,
    )
    return LoraInit(lora_A=out.lora_A, lora_B=out.lora_B, residual=stored, meta=meta)


def error_sigma(w: torch.Tensor, source_dtype: torch.dtype, extra: dict[str, Any], k: int) -> torch.Tensor:
    """The k largest σ of W − Q(W) (W (out, in) float64, Q the trainer's load of W as stored): what LoftQ's first fit
    approximates, so its rank allocation's gains (float64 Gram ``eigh``: the spectrum is flat)."""
    _, deq = _quantized(w, source_dtype, settings(extra).config)
    return factorize.gram_eigh(w - deq, k).s


def config_of(record: dict[str, Any]) -> nf4.NF4Config:
    """The NF4 simulation an init's ``quantization`` record (``svdtool.json``) asks for."""
    return nf4.NF4Config(double_quant=bool(record["double_quant"]), backend=str(record.get("backend", "cuda")))


def load_errors(
    w: torch.Tensor, stored: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, s: float, config: nf4.NF4Config
) -> tuple[float, float]:
    """(‖W − (Q(W_res) + s·B·A)‖/‖W‖, ‖W − Q(W)‖/‖W‖): W (out, in) as stored in any dtype, W_res (out, in) as
    stored (its dtype is the load dtype; W is cast to it once for Q(W)), A (r, in), B (out, r)."""
    import torch

    w64 = w.to(torch.float64)
    deq = nf4.fake_quantize(stored.contiguous(), config).to(torch.float64)
    plain = nf4.fake_quantize(w.to(stored.dtype).contiguous(), config).to(torch.float64)
    norm = float(w64.norm()) or 1.0
    err = float(torch.addmm(deq, lora_b.to(torch.float64), lora_a.to(torch.float64), alpha=s).sub_(w64).norm())
    return err / norm, float((w64 - plain).norm()) / norm
