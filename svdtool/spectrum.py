"""Per-matrix spectrum metrics, group summaries and the claim check. Pure math: no I/O.

σ is always a float64 array of all singular values in descending order.
Definitions (k = min(n, m)):

* energy of the top r: E(r) = Σ_{i≤r} σᵢ² / Σσᵢ² ("rank coverage"); 1 − E(r) is the squared
  relative Frobenius error of the best rank-r approximation (Eckart–Young);
* rank for energy τ: min{r : E(r) ≥ τ};
* stable rank ‖W‖_F²/σ₁²; nuclear norm Σσ; Frobenius norm √Σσ²;
* effective rank (Roy & Vetterli 2007): exp(−Σ pᵢ ln pᵢ) with pᵢ = σᵢ/Σσ;
* numerical rank #{σ > σ₁·max(n, m)·eps}, eps of float32 (float64 for float64 sources); the
  condition number σ₁/σ_k is inf when the matrix is numerically rank-deficient;
* WeightWatcher's columns (:mod:`svdtool.heavy_tail`), the MP bulk (:mod:`svdtool.mp`) and the SNR
  scores (:mod:`svdtool.snr`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

import numpy as np

from svdtool.heavy_tail import ww_metrics
from svdtool.mp import mp_bulk
from svdtool.results.spectrum import ClaimCheck, ClaimFraction, GroupSummary, MatrixSpectrum
from svdtool.snr import snr_mp, spectrum_snr

ENERGY_LEVELS = (0.5, 0.9, 0.99)
#: "per-head (Keras)": raw σ, with q/k/v/o split per attention head (svdtool.heads); other matrices as they are.
PER_HEAD = "per-head (Keras)"
NORMALISATIONS = ("raw", "sigma/sigma1", "sigma/sqrt(max(n,m))", PER_HEAD)


def energy_curve(sigma: np.ndarray) -> np.ndarray:
    """E(r) for r = 1..k."""
    sq = np.square(sigma)
    total = sq.sum()
    if total == 0:
        return np.ones_like(sigma)
    return np.cumsum(sq) / total


def rank_for_energy(curve: np.ndarray, level: float) -> int:
    # A tiny tolerance so that E(k) = 1 − 1e-16 still reaches level 1.0 without rounding surprises.
    return min(len(curve), int(np.searchsorted(curve, level - 1e-12)) + 1)


def effective_rank(sigma: np.ndarray) -> float:
    total = sigma.sum()
    if total == 0:
        return 0.0
    p = sigma[sigma > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def normalised(sigma: np.ndarray, shape: Sequence[int], normalisation: str) -> np.ndarray:
    if normalisation == "raw":
        return sigma
    if normalisation == "sigma/sigma1":
        return sigma / sigma[0] if len(sigma) and sigma[0] > 0 else sigma
    if normalisation == "sigma/sqrt(max(n,m))":
        return sigma / np.sqrt(max(shape))
    raise ValueError(f"unknown normalisation {normalisation!r}")


def in_range(values: np.ndarray, lo: float, hi: float) -> int:
    return int(np.count_nonzero((values >= lo) & (values <= hi)))


def matrix_spectrum(
    sigma: np.ndarray,
    *,
    name: str,
    module_type: str,
    layer: int | None,
    shape: Sequence[int],
    dtype: str,
    method: str,
    ranks: Sequence[int],
    lo: float,
    hi: float,
    seconds: float = 0.0,
    device: str = "cpu",
    power_law: bool = True,
) -> MatrixSpectrum:
    """All per-matrix metrics from the singular values; the power-law fit runs on ``device``.

    ``power_law=False`` leaves out WeightWatcher's columns (``ww``), the one O(k²) metric.
    """
    k = len(sigma)
    s1 = float(sigma[0]) if k else 0.0
    sk = float(sigma[-1]) if k else 0.0
    eps = np.finfo(np.float64 if dtype == "fp64" else np.float32).eps
    tol = s1 * max(shape) * eps
    numerical_rank = int(np.count_nonzero(sigma > tol))
    curve = energy_curve(sigma)
    frob2 = float(np.square(sigma).sum())
    hits = in_range(sigma, lo, hi)
    bulk = mp_bulk(sigma, shape)
    return MatrixSpectrum(
        name=name,
        module_type=module_type,
        layer=layer,
        shape=[int(d) for d in shape],
        dtype=dtype,
        method=method,
        count=k,
        sigma_max=s1,
        sigma_min=sk,
        frobenius=float(np.sqrt(frob2)),
        nuclear=float(sigma.sum()),
        stable_rank=frob2 / s1**2 if s1 > 0 else 0.0,
        effective_rank=effective_rank(sigma),
        condition_number=s1 / sk if numerical_rank == k and sk > 0 else float("inf"),
        numerical_rank=numerical_rank,
        energy_at_rank={str(r): float(curve[min(r, k) - 1]) if k else 1.0 for r in ranks},
        rank_for_energy={str(level): rank_for_energy(curve, level) for level in ENERGY_LEVELS},
        in_range=hits,
        in_range_fraction=hits / k if k else 0.0,
        seconds=seconds,
        ww=ww_metrics(sigma, shape, device) if power_law else None,
        mp=bulk,
        snr=spectrum_snr(sigma, shape),
        snr_mp=snr_mp(sigma, bulk.edge),
    )


T = TypeVar("T")

#: Metrics averaged per group: WW's get_summary columns (less stable_rank, averaged above), then ours.
ANALYTICS_MEANS: dict[str, Callable[[MatrixSpectrum], float | None]] = {
    "alpha": lambda m: m.ww.alpha if m.ww else None,
    "alpha_weighted": lambda m: m.ww.alpha_weighted if m.ww else None,
    "log_alpha_norm": lambda m: m.ww.log_alpha_norm if m.ww else None,
    "log_norm": lambda m: m.ww.log_norm if m.ww else None,
    "log_spectral_norm": lambda m: m.ww.log_spectral_norm if m.ww else None,
    "mp_softrank": lambda m: m.mp.softrank if m.mp else None,
    "snr": lambda m: m.snr,
    "snr_mp": lambda m: m.snr_mp,
}


def analytics_mean(matrices: Sequence[MatrixSpectrum]) -> dict[str, float]:
    """Means of :data:`ANALYTICS_MEANS` over the matrices where each is finite (absent when none is)."""
    out = {}
    for key, get in ANALYTICS_MEANS.items():
        values = [v for v in map(get, matrices) if v is not None and np.isfinite(v)]
        if values:
            out[key] = float(np.mean(values))
    return out


def group_by(
    items: Iterable[T], key: str, order: Callable[[str], Any] | None = None, missing: str | None = None
) -> list[tuple[str, list[T]]]:
    """Items bucketed by the attribute ``key`` (as a string), buckets sorted by ``order``.

    The default order puts numeric keys (layers) first, numerically, then the others by name. Items whose
    attribute is None go to the bucket named ``missing``, or are left out when it is None.
    """
    groups: dict[str, list[T]] = {}
    for m in items:
        value = getattr(m, key)
        name = str(value) if value is not None else missing
        if name is not None:
            groups.setdefault(name, []).append(m)
    default: Callable[[str], Any] = lambda g: (0, int(g), "") if g.isdigit() else (1, 0, g)  # noqa: E731
    return [(g, groups[g]) for g in sorted(groups, key=order or default)]


def summarize(
    matrices: Iterable[MatrixSpectrum],
    key: str,
    ranks: Sequence[int],
    order: Callable[[str], Any] | None = None,
) -> list[GroupSummary]:
    """Group summaries by ``key``: "module_type" or "layer" (matrices outside layers are left out).

    Groups come in ``order`` (a sort key on the group name); by default layers numerically, others by name.
    """
    out = []
    for g, ms in group_by(matrices, key, order):
        n = len(ms)
        values = sum(m.count for m in ms)
        out.append(
            GroupSummary(
                key=g,
                matrices=n,
                singular_values=values,
                sigma_max_mean=sum(m.sigma_max for m in ms) / n,
                stable_rank_mean=sum(m.stable_rank for m in ms) / n,
                effective_rank_mean=sum(m.effective_rank for m in ms) / n,
                energy_at_rank_mean={str(r): sum(m.energy_at_rank[str(r)] for m in ms) / n for r in ranks},
                in_range_fraction=sum(m.in_range for m in ms) / values if values else 0.0,
                analytics_mean=analytics_mean(ms),
            )
        )
    return out


def claim_check(
    spectra: Sequence[tuple[MatrixSpectrum, np.ndarray]],
    *,
    lo: float,
    hi: float,
    claimed: float = 0.99,
    is_embedding: frozenset[str],
    per_head: dict[str, np.ndarray] | None = None,
) -> ClaimCheck:
    """The fraction of all σ in [lo, hi], pooled over matrices, against ``claimed``.

    ``per_head`` (tensor name → σ of its heads) gives the per-head row; without it that row is left out.
    """
    fractions = []
    for norm in NORMALISATIONS:
        if norm == PER_HEAD and not per_head:
            continue
        hit_w = tot_w = hit_wo = tot_wo = 0
        per_w: list[float] = []
        per_wo: list[float] = []
        for m, sigma in spectra:
            values = (per_head or {}).get(m.name, sigma) if norm == PER_HEAD else normalised(sigma, m.shape, norm)
            hits, total = in_range(values, lo, hi), len(values)
            hit_w, tot_w = hit_w + hits, tot_w + total
            per_w.append(hits / total if total else 0.0)
            if m.module_type not in is_embedding:
                hit_wo, tot_wo = hit_wo + hits, tot_wo + total
                per_wo.append(hits / total if total else 0.0)
        fractions.append(
            ClaimFraction(
                normalisation=norm,
                with_embeddings=hit_w / tot_w if tot_w else 0.0,
                without_embeddings=hit_wo / tot_wo if tot_wo else 0.0,
                count_with=tot_w,
                count_without=tot_wo,
                per_matrix_mean_with=float(np.mean(per_w)) if per_w else 0.0,
                per_matrix_mean_without=float(np.mean(per_wo)) if per_wo else 0.0,
            )
        )
    by_type: dict[str, list[int]] = {}
    for m, _ in spectra:
        acc = by_type.setdefault(m.module_type, [0, 0])
        acc[0] += m.in_range
        acc[1] += m.count
    raw = fractions[0]
    holds_w = raw.with_embeddings >= claimed
    holds_wo = raw.without_embeddings >= claimed
    embeddings = [m.name for m, _ in spectra if m.module_type in is_embedding]
    verdict = (
        f"{raw.with_embeddings:.2%} of {raw.count_with:,} singular values lie in [{lo:g}, {hi:g}] "
        f"({raw.without_embeddings:.2%} of {raw.count_without:,} without embeddings); "
        f"the claim of {claimed:.0%} {'holds' if holds_w else 'does NOT hold'}"
        + ("" if holds_w == holds_wo else f" ({'holds' if holds_wo else 'does NOT hold'} without embeddings)")
    )
    return ClaimCheck(
        lo=lo,
        hi=hi,
        claimed=claimed,
        fractions=fractions,
        by_module_type={k: v[0] / v[1] if v[1] else 0.0 for k, v in sorted(by_type.items())},
        counted=[m.name for m, _ in spectra],
        embeddings=embeddings,
        holds_with_embeddings=holds_w,
        holds_without_embeddings=holds_wo,
        verdict=verdict,
    )
