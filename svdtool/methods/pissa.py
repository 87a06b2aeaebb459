"""PiSSA: Principal Singular values and Singular vectors Adaptation (Meng, Wang, Zhang; NeurIPS 2024, arXiv 2404.02948).

W (out, in) = U S Vᵀ. With the top r components and s = α/r (α/√r with rsLoRA):

    lora_A = diag(√(S_r/s)) V_rᵀ      (r, in)
    lora_B = U_r diag(√(S_r/s))       (out, r)
    W_res  = W − s·B·A                (out, in), from the stored float32 factors

so s·B·A = U_r S_r V_rᵀ for any α, and W_res + s·B·A = W. This is PEFT's ``init_lora_weights="pissa"``
(``LoraLayer.pissa_init``), computed once, exactly, and saved beside the residual.

Options in ``InitOptions.extra``:

* ``svd``: ``exact`` (default; :func:`svdtool.linalg.factorize.top_svd`, certified) or ``randomized``;
* ``algorithm``: the exact algorithm, ``auto`` | ``gram-cheb`` | ``svd64``;
* ``oversample``, ``niter``, ``seed``: randomized SVD settings (seed also seeds the exact block);
* ``compare_exact``: with ``randomized``, also compute the exact top r and record ``topr_error``,
  ‖s·B·A − U_r S_r V_rᵀ‖_F / ‖U_r S_r V_rᵀ‖_F (default True).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from svdtool.linalg import factorize
from svdtool.methods import register
from svdtool.methods.base import InitOptions, LoraInit, MethodSpec

if TYPE_CHECKING:
    import torch

#: Randomized-SVD defaults: l = r + OVERSAMPLE columns, NITER power iterations.
OVERSAMPLE = 48
NITER = 24


def triplet_meta(t: factorize.Triplets) -> dict[str, Any]:
    """What every SVD-based method records about its decomposition."""
    return {
        "algorithm": t.algorithm,
        "certified_residual": t.residual,
        "products": t.products,
        "seed": t.seed,
        "sigma": t.s.detach().cpu().tolist(),
    }


def sqrt_split(w: torch.Tensor, t: factorize.Triplets, opts: InitOptions) -> LoraInit:
    """PiSSA's split of triplets: A = √(S/s)·Vᵀ, B = U·√(S/s), W_res = W − s·B·A (MiLoRA shares it)."""
    import torch

    root = (t.s / opts.scaling).sqrt()  # (r,) float64
    lora_a = (root[:, None] * t.vh).to(torch.float32).contiguous()  # (r, in)
    lora_b = (t.u * root[None, :]).to(torch.float32).contiguous()  # (out, r)
    residual = factorize.subtract_adapter(w, lora_a, lora_b, opts.scaling)
    return LoraInit(lora_A=lora_a, lora_B=lora_b, residual=residual, meta=triplet_meta(t))


def exact_or_randomized(w: torch.Tensor, opts: InitOptions) -> tuple[factorize.Triplets, dict[str, Any]]:
    """The top-r triplets PiSSA asks for, and extra meta (``topr_error`` for randomized runs)."""
    extra = opts.extra
    seed = int(extra.get("seed", 0))
    svd = extra.get("svd", "exact")
    if svd == "exact":
        return factorize.top_svd(w, opts.rank, algorithm=extra.get("algorithm", "auto"), seed=seed), {}
    if svd != "randomized":
        raise ValueError(f"unknown svd {svd!r}: expected exact or randomized")
    oversample = int(extra.get("oversample", OVERSAMPLE))
    niter = int(extra.get("niter", NITER))
    approx = factorize.randomized_svd(w, opts.rank, oversample=oversample, niter=niter, seed=seed)
    meta: dict[str, Any] = {"oversample": oversample, "niter": niter}
    if extra.get("compare_exact", True):
        # Warm-started from the randomized subspace, the certified exact run costs a few products.
        exact = factorize.top_svd(w, opts.rank, seed=seed, start=approx)
        meta["topr_error"] = factorize.product_distance(approx, exact)
        meta["exact_algorithm"] = exact.algorithm
    return approx, meta


def pissa(w: torch.Tensor, opts: InitOptions, **_: Any) -> LoraInit:
    """PiSSA init of one weight W (out, in), float32 or float64."""
    triplets, meta = exact_or_randomized(w, opts)
    out = sqrt_split(w, triplets, opts)
    out.meta.update(meta)
    return out


SPEC = register(
    MethodSpec(
        name="pissa",
        fn=pissa,
        summary="top-r singular components in the adapter (A = √(S_r/s)·V_rᵀ, B = U_r·√(S_r/s)), the rest in the base",
        paper="Meng, Wang, Zhang. PiSSA: Principal Singular Values and Singular Vectors Adaptation. "
        "NeurIPS 2024, arXiv 2404.02948",
        rank_gain="energy",
    )
)
