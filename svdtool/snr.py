"""Signal-to-noise scores of a weight's spectrum, and the Spectrum tool's layer selection. Pure math: no I/O.

``snr`` is the Spectrum tool's own score (Hartford et al. 2024, arXiv 2406.06623; ``spectrum.py``,
``calculate_snr_for_layer``), so that rankings compare with its published scans:

    σ̂   = (q75(σ) − q25(σ)) / 1.349        (linear-interpolated quantiles of the singular values)
    τ    = σ̂ · (1 + √β),  β = min(n, m)/max(n, m)
    snr  = (Σ_{σ>τ} σ / Σ_{σ≤τ} σ) / σ₁

with Spectrum's edge cases: no σ above τ gives a signal of 0, no σ at or below τ a noise of 1. τ is an
MP edge in form only (no √n; σ̂ is the spread of the σ, not of the entries), and the division by σ₁
makes the score depend on the weights' scale, which is why Spectrum ranks layers within a module type.
1-D weights (norms) score ``Infinity``, as in Spectrum's published scans.

``snr_mp`` is the MP-correct variant: the same signal/noise split at the Marchenko–Pastur bulk edge
σ̂_e(√n + √m) of :mod:`svdtool.mp`, without the division by σ₁, so it is scale-free:
Σ_{σ>edge} σ / Σ_{σ≤edge} σ.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

#: Spectrum's normal-consistency constant for the interquartile range.
IQR_TO_SIGMA = 1.349


def spectrum_snr(sigma: np.ndarray, shape: Sequence[int]) -> float:
    """The Spectrum tool's SNR of one matrix from its σ (descending)."""
    if not len(sigma) or sigma[0] <= 0:
        return math.nan
    q75, q25 = np.quantile(sigma, [0.75, 0.25])
    beta = min(shape) / max(shape)
    tau = (q75 - q25) / IQR_TO_SIGMA * math.sqrt((1 + math.sqrt(beta)) ** 2)
    signal_mask = sigma > tau
    signal = float(sigma[signal_mask].sum()) if signal_mask.any() else 0.0
    noise = float(sigma[~signal_mask].sum()) if (~signal_mask).any() else 1.0
    snr = signal / noise if noise != 0 else math.inf
    return snr / float(sigma[0])


def snr_mp(sigma: np.ndarray, edge: float) -> float:
    """Σσ above the MP bulk edge over Σσ at or below it (inf when every σ is a spike)."""
    noise = float(sigma[sigma <= edge].sum())
    signal = float(sigma[sigma > edge].sum())
    if noise == 0:
        return math.inf if signal > 0 else math.nan
    return signal / noise


def top_by_type(scores: Iterable[tuple[str, str, float]], percent: float) -> dict[str, list[str]]:
    """Spectrum's selection: per type, the int(count · percent / 100) names of highest score.

    ``scores`` is (name, type, score) in file order; ties keep that order (a stable sort, as Spectrum's).
    Types come in the order they first appear.
    """
    by_type: dict[str, list[tuple[str, float]]] = {}
    for name, kind, score in scores:
        by_type.setdefault(kind, []).append((name, score))
    out = {}
    for kind, items in by_type.items():
        ranked = sorted(items, key=lambda item: item[1], reverse=True)
        out[kind] = [name for name, _ in ranked[: int(len(items) * percent / 100)]]
    return out
