"""WeightWatcher 0.7.7's per-layer metrics, from exact σ. Pure math: no I/O.

Names and definitions are WeightWatcher's (``analyze()`` with its defaults), on the eigenvalues
λᵢ = σᵢ² of the raw weight (WW does not rescale dense layers), N = max(n, m):

* ``alpha``, ``xmin``, ``D``, ``num_pl_spikes``: the power-law fit of :mod:`svdtool.powerlaw`;
* ``log_norm`` = log10 Σλ; ``log_spectral_norm`` = log10 λ_max (of σ₁², not σ₁);
* ``alpha_weighted`` = α · log10 λ_max; ``log_alpha_norm`` = log10 Σ λᵢ^α (over all λ);
* ``entropy``: pᵢ = λᵢ/Σλ + 1e-10, −Σ pᵢ ln pᵢ / ln(rank + 1e-10), WW's normalised matrix entropy
  (not the Roy–Vetterli effective rank of :mod:`svdtool.spectrum`);
* ``rank_loss`` = k − #{σ > σ₁·N·eps64} (WW casts every weight to float64, so eps is float64's);
* ``warning``: "over-trained" when α < 2, "under-trained" when α > 6, else "".

Where the fit fails (fewer than two λ above 1e-5) WW writes α = −1 and, by a quirk, the warning
"over-trained"; here α and the α-based columns are nan, ``status`` says "failed" and there is no warning.
WW also skips matrices with M < 8, M > 15000 or N > 50000; svdtool reports them all.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from svdtool.powerlaw import fit_power_law
from svdtool.results.spectrum import WWMetrics

OVER_TRAINED = 2.0  # α below this: WW's "over-trained"
UNDER_TRAINED = 6.0  # α above this: WW's "under-trained"
_ENTROPY_EPS = 1e-10  # WW's EPSILON (float64 runs)


def matrix_entropy(sigma: np.ndarray, n_max: int) -> float:
    """WW's ``matrix_entropy``: the σ²-distribution's entropy over ln(numerical rank), in [0, 1]."""
    if not len(sigma) or sigma[0] <= 0:
        return math.nan
    rank = np.count_nonzero(sigma > sigma.max() * n_max * np.finfo(np.float64).eps) + _ENTROPY_EPS
    lam = np.square(sigma)
    p = lam / lam.sum() + _ENTROPY_EPS
    return float(-(p * np.log(p)).sum() / np.log(rank))


def warning_for(alpha: float) -> str:
    if alpha < OVER_TRAINED:
        return "over-trained"
    return "under-trained" if alpha > UNDER_TRAINED else ""


def ww_metrics(sigma: np.ndarray, shape: Sequence[int], device: str = "cpu") -> WWMetrics:
    """WeightWatcher's columns for one matrix from its σ (float64, descending); the fit runs on ``device``."""
    import torch

    n_max = max(shape)
    lam = np.square(sigma)
    fit = fit_power_law(torch.from_numpy(lam).to(device))
    lam_max = float(lam.max()) if len(lam) else 0.0
    with np.errstate(divide="ignore"):
        log_norm = float(np.log10(lam.sum()))
        log_spectral_norm = float(np.log10(lam_max))
        log_alpha_norm = float(np.log10(np.power(lam, fit.alpha).sum())) if fit.status == "success" else math.nan
    rank = int(np.count_nonzero(sigma > (sigma.max() if len(sigma) else 0.0) * n_max * np.finfo(np.float64).eps))
    return WWMetrics(
        alpha=fit.alpha,
        xmin=fit.xmin,
        D=fit.D,
        num_pl_spikes=fit.num_pl_spikes,
        alpha_weighted=fit.alpha * log_spectral_norm,
        log_alpha_norm=log_alpha_norm,
        log_norm=log_norm,
        log_spectral_norm=log_spectral_norm,
        entropy=matrix_entropy(sigma, n_max),
        rank_loss=len(sigma) - rank,
        warning=warning_for(fit.alpha) if fit.status == "success" else "",
        status=fit.status,
    )
