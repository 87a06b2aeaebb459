"""EVA: Explained Variance Adaptation (Paischer et al., arXiv 2410.07170; PEFT ``init_lora_weights="eva"``).

Inputs: the centred covariance C (in, in) of the layer's inputs over the calibration tokens that count
(attention mask set and, as PEFT's ``use_label_mask``, label ≠ −100), from :mod:`svdtool.statistics`.

    C = Q Λ Qᵀ (float64; the top k pairs certified, :func:`svdtool.linalg.factorize.top_eigh`), λ₁ ≥ λ₂ ≥ …;
    component i = qᵢᵀ with PEFT's sign rule (``svd_flip``: the entry of largest magnitude is positive);
    explained-variance ratio ρᵢ = λᵢ / trace(C)
    lora_A = the first k_l components (k_l, in), orthonormal rows;  lora_B = 0 (out, k_l);  W untouched

The per-layer rank k_l comes from PEFT's global redistribution (``eva.py::_get_rank_distribution``),
:func:`allocate`: every target contributes its top round(r·ρ) ratios (layers sharing one input each
contribute copies of the same ratios); the Σ r largest of all of them are kept and k_l is the number
that belong to layer l; within a shared-input group the hooked (first) layer takes the largest count.
With ``adjust_scaling_factors`` α_l = α·k_l/r (α·√(k_l/r) under rsLoRA), so s stays the same; k_l = 0
drops the layer.

PEFT estimates the components with an incremental, randomized PCA (``svd_lowrank``, seed 42) that stops
once they stop moving (cosine ≥ τ between batches), so its result depends on batch order and τ and only
approximates these, the exact eigenvectors of the same covariance (see docs/init.md for measured angles).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from svdtool.errors import SvdtoolError
from svdtool.linalg import factorize
from svdtool.methods import register
from svdtool.methods.base import InitOptions, LoraInit, MethodSpec

if TYPE_CHECKING:
    import torch

RHO = 2.0
#: PEFT caps very large ρ (``eva.py``: above 1000, at max_dim // r); here k is capped at the input width.
RHO_THRESHOLD = 1000.0


@dataclass
class Components:
    """Top principal components of one input: rows of ``vectors`` (k, in) float64, and their ratios (k,)."""

    vectors: torch.Tensor
    ratios: torch.Tensor
    eigenvalues: torch.Tensor
    tokens: int
    rank: int | None = None  # k_l after allocation (None: not allocated yet)


def flip_signs(v: torch.Tensor) -> torch.Tensor:
    """PEFT's ``svd_flip(u_based_decision=False)`` on rows: each row's largest-|.| entry (first on ties) positive."""
    import torch

    idx = torch.argmax(v.abs(), dim=1)
    signs = torch.sign(v[torch.arange(v.shape[0], device=v.device), idx])
    signs[signs == 0] = 1
    return v * signs[:, None]


def principal_components(cov: torch.Tensor, k: int, tokens: int) -> Components:
    """The top k eigenvectors of the centred covariance C (in, in) in float64, PEFT's signs: certified subspace
    iteration (residual ≤ 1e-11·λ₁) or a full ``eigh`` (:func:`svdtool.linalg.factorize.top_eigh`)."""
    import torch

    c = cov.to(torch.float64)
    c = (c + c.T) / 2
    k = min(k, c.shape[0])
    trace = torch.diagonal(c).sum()
    if not float(trace.item()) > 0:
        raise SvdtoolError("EVA: an input has zero variance over the calibration tokens (use more --calib data)")
    top = factorize.top_eigh(c, k)
    vectors = flip_signs(top.vectors.T.contiguous())
    return Components(vectors, top.values / trace, top.values.clone(), tokens)


def max_components(rank: int, rho: float, width: int) -> int:
    """k = round(r·ρ) (Python's round, as PEFT), at most the input width."""
    return max(1, min(round(rank * rho), width))


def allocate(
    ratios: dict[str, torch.Tensor], budgets: dict[str, int], groups: list[list[str]], rho: float
) -> dict[str, int]:
    """PEFT's rank redistribution. ``ratios``: name -> its input's ratios (descending, at least round(r·ρ) long,
    or all there are); ``budgets``: name -> r_l; ``groups``: names sharing one input, hooked layer first.

    Returns name -> k_l with Σ k_l = Σ r_l (fewer only if there are fewer ratios in all). Ties are broken
    by position (a stable sort over PEFT's key order), where PEFT's ``argsort`` leaves them unspecified.
    """
    import torch

    if rho < 1:
        raise SvdtoolError(f"--eva-rho {rho}: must be at least 1")
    hook_of = {n: g[0] for g in groups for n in g}
    kmax = {n: max_components(budgets[n], rho, len(ratios[n])) for n in budgets}
    for g in groups:  # equal inputs get the same number of candidates
        top = max(kmax[n] for n in g)
        for n in g:
            kmax[n] = min(top, len(ratios[n]))
    order = [n for n in budgets if hook_of.get(n, n) == n] + [n for n in budgets if hook_of.get(n, n) != n]
    keys = [n for n in order for _ in range(kmax[n])]
    values = torch.cat([ratios[n][: kmax[n]].to(torch.float64) for n in order])
    idx = torch.sort(values, descending=True, stable=True).indices
    budget = sum(budgets.values())
    counts = Counter(keys[int(i)] for i in idx[:budget])
    ranks = {n: counts.get(n, 0) for n in order}
    for g in groups:
        for n in g[1:]:  # the hooked layer holds the largest count of its group (PEFT swaps)
            if ranks[g[0]] < ranks[n]:
                ranks[g[0]], ranks[n] = ranks[n], ranks[g[0]]
    return {n: ranks[n] for n in budgets}


def eva(w: torch.Tensor, opts: InitOptions, *, statistics: Any = None, **_: Any) -> LoraInit:
    """EVA init of one weight W (out, in): A = the allocated top components of its input, B = 0, W untouched."""
    import torch

    if not isinstance(statistics, Components) or statistics.rank is None:
        raise SvdtoolError("EVA needs the allocated principal components of every target (pass --calib)")
    k = statistics.rank
    a = statistics.vectors[:k].to(torch.float32).contiguous()  # (k, in)
    b = torch.zeros(w.shape[0], k, dtype=torch.float32, device=w.device)  # (out, k)
    meta = {
        "algorithm": "eigh64",
        "sigma": statistics.eigenvalues[:k].tolist(),  # the covariance's eigenvalues the adapter spans
        "rank": k,
        "explained_variance": float(statistics.ratios[:k].sum().item()),
        "tokens": statistics.tokens,
    }
    return LoraInit(lora_A=a.to(w.device), lora_B=b, residual=w, meta=meta)


SPEC = register(
    MethodSpec(
        name="eva",
        fn=eva,
        summary="A = top principal components of the layer's calibration inputs (exact float64 eigh of the centred "
        "covariance), B = 0, ranks redistributed by explained variance; the base stays untouched",
        paper="Paischer et al. One Initialization to Rule them All: Fine-tuning via Explained Variance Adaptation. "
        "arXiv 2410.07170",
        statistic="centred",
        keeps_base=True,  # B = 0: the adapter goes on the original model
        rank_gain="eva",
    )
)
