"""Power-law fit of an eigenvalue tail, as WeightWatcher 0.7.7 fits it, vectorised over candidates. Pure math.

WeightWatcher (``WW_powerlaw.WWFit``) takes the eigenvalues λ = σ² above ``EVALS_THRESH`` (1e-5),
sorted ascending, x_0 ≤ … ≤ x_{N−1}, and tries every candidate xmin = x_i, i < N − 1, with a tail of
n_i = N − i values:

* α_i = 1 + n_i / Σ_{j≥i} ln(x_j / x_i)   (the continuous maximum-likelihood exponent, Clauset et al. 2009);
* D_i = max_{j≥i} |1 − (x_j/x_i)^(1−α_i) − (j − i)/n_i|, the Kolmogorov–Smirnov distance between the
  fitted CDF and the empirical one (WW's empirical CDF is 0, 1/n, …, (n−1)/n); D_i = 1 when α_i ≤ 1.

It keeps the first i with the smallest D_i. With fewer than ``SMALL_N`` (20) values it uses WW's small-N
rule instead: the bias-corrected α_i = 1 + (n_i − 1)/Σ ln(x_j/x_i) and only tails of at least 8 values
(its D − 0.868/√n objective is overridden by the same argmin of D).

Cost: the KS distances are O(N²) elementwise work (N ≤ k = min(n, m)), done in blocks of candidates
on the tensor's own device, so on a GPU it is a few kernels per matrix and on a CPU a small fraction of
the matrix's SVD. WW runs a Python loop over the N candidates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: WeightWatcher drops eigenvalues at or below this before the fit (its CPU value; 1e-4 with CUDA present).
EVALS_THRESH = 1e-5
#: Below this many values WW switches to its small-N fit.
SMALL_N = 20
#: The small-N fit needs tails of at least this many values.
SMALL_N_MIN_TAIL = 8
#: Elements of one (candidates × values) block of the KS step. On a CPU a block stays in cache and under
#: torch's intra-op parallel grain (32768), which measured 5–20× faster than large blocks on 2 shared cores;
#: on a GPU one block holds a whole 4096-value spectrum (two float64 temporaries, 256 MiB), so a matrix
#: costs a few kernel launches.
BLOCK_ELEMENTS = {"cpu": 1 << 15, "cuda": 1 << 24}


@dataclass(frozen=True)
class PowerLawFit:
    alpha: float  # nan when the fit failed
    xmin: float  # λ at which the tail starts (nan when failed)
    D: float  # KS distance of the chosen fit (nan when failed)
    num_pl_spikes: int  # #λ ≥ xmin over all eigenvalues (0 when failed)
    status: str  # "success" | "failed"


FAILED = PowerLawFit(math.nan, math.nan, math.nan, 0, "failed")


def fit_power_law(evals: torch.Tensor) -> PowerLawFit:
    """Fit λ (any order, any float dtype, any device) as WeightWatcher 0.7.7 does; computed in float64."""
    import torch

    lam = evals.detach().to(torch.float64).flatten()
    data = torch.sort(lam[lam > EVALS_THRESH]).values  # (N,) ascending
    if data.numel() < 2:  # WW: no candidate xmin, np.argmin of an empty array fails
        return FAILED
    if data.numel() < SMALL_N:
        i, alpha, d = _fit_small(data)
    else:
        i, alpha, d = _fit_standard(data)
    if math.isnan(alpha):
        return FAILED
    xmin = float(data[i])
    return PowerLawFit(alpha, xmin, d, int((lam >= xmin).sum()), "success")


def _suffix_log_sums(logx: torch.Tensor) -> torch.Tensor:
    """s_i = Σ_{j≥i} ln x_j − n_i ln x_i = Σ_{j≥i} ln(x_j/x_i), for every i."""
    import torch

    n = logx.numel()
    tails = torch.flip(torch.cumsum(torch.flip(logx, (0,)), 0), (0,))
    counts = torch.arange(n, 0, -1, dtype=logx.dtype, device=logx.device)
    return tails - counts * logx


def _ks_distances(data: torch.Tensor, alphas: torch.Tensor, candidates: int) -> torch.Tensor:
    """D_i for i < ``candidates``: max over the tail j ≥ i of |1 − (x_j/x_i)^(1−α_i) − (j−i)/n_i|."""
    import torch

    n_all = data.numel()
    out = torch.empty(candidates, dtype=data.dtype, device=data.device)
    position = torch.arange(n_all, dtype=data.dtype, device=data.device)  # (N,) j
    step = max(1, BLOCK_ELEMENTS.get(data.device.type, BLOCK_ELEMENTS["cpu"]) // n_all)
    for a in range(0, candidates, step):  # blocks of candidates, not one Python step per candidate
        b = min(candidates, a + step)
        # Columns j = a … N−1. Entries with j < i are clamped to ratio 1 and offset 0, so they add a gap of 0.
        ratio = (data[None, a:] / data[a:b, None]).clamp_(min=1)  # (C, T): x_j / x_i
        fitted = ratio.pow_((1 - alphas[a:b])[:, None]).neg_().add_(1)  # 1 − (x_j/x_i)^(1−α_i)
        empirical = (position[None, a:] - position[a:b, None]).clamp_(min=0).div_((n_all - position[a:b])[:, None])
        out[a:b] = fitted.sub_(empirical).abs_().amax(dim=1)
    return out


def _fit_standard(data: torch.Tensor) -> tuple[int, float, float]:
    import torch

    n_all = data.numel()
    cand = n_all - 1
    s = _suffix_log_sums(torch.log(data))[:cand]  # (N−1,)
    n = torch.arange(n_all, 1, -1, dtype=data.dtype, device=data.device)  # n_i = N − i
    alphas = 1 + n / s
    ds = torch.where(alphas > 1, _ks_distances(data, alphas, cand), torch.ones_like(alphas))
    ds = torch.nan_to_num(ds, nan=1.0)  # WW's Ds start at 1 and a nan distance never wins its argmin
    i = int(torch.argmin(ds))  # the first of equal minima, as numpy's argmin
    return i, float(alphas[i]), float(ds[i])


def _fit_small(data: torch.Tensor) -> tuple[int, float, float]:
    """WW's small-N fit. Its objective D − 0.868/√n only picks a fallback: ``WWFit.__init__`` then takes the
    argmin of D over all candidates, as in the standard fit, so that is what decides here too."""
    import torch

    n_all = data.numel()
    cand = n_all - 1
    s = _suffix_log_sums(torch.log(data))[:cand]
    n = torch.arange(n_all, 1, -1, dtype=data.dtype, device=data.device)
    usable = (n >= SMALL_N_MIN_TAIL) & (s > 1e-12)
    alphas = torch.where(usable, 1 + (n - 1) / s, torch.zeros_like(s))
    valid = usable & (alphas > 1)
    ds = torch.where(valid, _ks_distances(data, alphas, cand), torch.ones_like(s))
    if not bool(valid.any()) and float(s[0]) > 1e-12:
        # WW's fallback: the whole sample as the tail, whatever its α.
        alphas[0] = 1 + (n_all - 1) / s[0]
        ds[0] = _ks_distances(data, alphas, 1)[0]
    i = int(torch.argmin(ds))
    return i, float(alphas[i]), float(ds[i])
