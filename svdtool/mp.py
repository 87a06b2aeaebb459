"""The Marchenko–Pastur bulk of a weight's spectrum: edge, spikes above it, soft rank. Pure math: no I/O.

Model: W (n × m, N = max(n, m), M = min(n, m), β = M/N) is noise with iid entries of standard deviation
σ_e plus a few strong directions. The noise part's singular values fill [σ_e(√N − √M), σ_e(√N + √M)],
so the **bulk edge** is σ_e(√N + √M) and the σ above it are **spikes**.

σ_e is estimated from the **median singular value** (Gavish & Donoho 2014, "The optimal hard threshold
for singular values is 4/√3", eq. for σ̂ when the noise level is unknown): σ²/N of the noise follows the
MP law of ratio β and variance σ_e², whose median is σ_e²·μ_β, so

    σ̂_e = √(median(σ²) / (N · μ_β)),   μ_β = the median of MP(β, 1).

The median ignores the few spikes, so the estimate is robust where the mean (‖W‖_F/√(nm), which the
spikes inflate) is not. ``mp_softrank`` = edge²/σ₁², WW's bulk_max/λ_max in λ = σ² units.

This is not WeightWatcher's ``mp_fit``: WW rescales λ to mean 1 and fits σ_mp by a brute-force kernel
density fit, then adds a Tracy–Widom margin; its ``num_spikes`` and ``mp_softrank`` differ from these.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache

import numpy as np

from svdtool.results.spectrum import MPBulk


@lru_cache(maxsize=256)
def mp_median(beta: float) -> float:
    """Median of the Marchenko–Pastur law with ratio β ∈ (0, 1] and variance 1."""
    from scipy import integrate, optimize

    if not 0 < beta <= 1:
        raise ValueError(f"beta {beta} must be in (0, 1]")
    lo, hi = (1 - math.sqrt(beta)) ** 2, (1 + math.sqrt(beta)) ** 2

    def density(x: float) -> float:
        return math.sqrt(max((hi - x) * (x - lo), 0.0)) / (2 * math.pi * beta * x)

    def cdf(x: float) -> float:
        return float(integrate.quad(density, lo, x, limit=200)[0])

    return float(optimize.brentq(lambda x: cdf(x) - 0.5, lo, hi, xtol=1e-13))


def mp_bulk(sigma: np.ndarray, shape: Sequence[int]) -> MPBulk:
    """The MP bulk of one matrix from its σ (float64, descending)."""
    n_max, n_min = max(shape), min(shape)
    if not len(sigma) or sigma[0] <= 0:
        return MPBulk(sigma_e=0.0, edge=0.0, spikes=0, softrank=math.nan)
    sigma_e = math.sqrt(float(np.median(np.square(sigma))) / (n_max * mp_median(n_min / n_max)))
    edge = sigma_e * (math.sqrt(n_max) + math.sqrt(n_min))
    return MPBulk(
        sigma_e=sigma_e,
        edge=edge,
        spikes=int(np.count_nonzero(sigma > edge)),
        softrank=edge**2 / float(sigma[0]) ** 2,
    )
