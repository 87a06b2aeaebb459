"""WeightWatcher-compatible metrics and the MP bulk: the fitter against a float64 loop and WeightWatcher's own
fitter, the known α of Pareto samples, hand-computed columns, and the MP edge on planted spikes."""

from __future__ import annotations

import io
import math
from contextlib import redirect_stdout

import numpy as np
import pytest
import torch

from svdtool.heavy_tail import matrix_entropy, ww_metrics
from svdtool.mp import mp_bulk, mp_median
from svdtool.powerlaw import EVALS_THRESH, fit_power_law
from tests.helpers import assert_close


def reference_fit(lam: np.ndarray) -> tuple[float, float, float]:
    """WW's standard fit, written as a plain float64 loop over candidates (N ≥ 20)."""
    x = np.sort(lam[lam > EVALS_THRESH])
    n_all = len(x)
    best = (math.inf, 0.0, 0.0)
    for i in range(n_all - 1):
        n = n_all - i
        alpha = 1 + n / np.sum(np.log(x[i:] / x[i]))
        d = np.max(np.abs(1 - (x[i:] / x[i]) ** (1 - alpha) - np.arange(n) / n)) if alpha > 1 else 1.0
        if d < best[0]:
            best = (d, alpha, x[i])
    return best[1], best[2], best[0]


def _pareto(alpha: float, size: int, seed: int) -> np.ndarray:
    # numpy's pareto(a) + 1 has density ∝ x^-(a+1): a power law of exponent α = a + 1 from xmin = 1.
    return np.random.default_rng(seed).pareto(alpha - 1, size) + 1


@pytest.mark.parametrize("alpha", [1.8, 2.5, 4.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_fitter_matches_float64_reference_on_pareto(alpha: float, seed: int) -> None:
    lam = 0.01 * _pareto(alpha, 600, seed)
    fit = fit_power_law(torch.from_numpy(lam))
    ref_alpha, ref_xmin, ref_d = reference_fit(lam)
    assert_close([fit.alpha, fit.xmin, fit.D], [ref_alpha, ref_xmin, ref_d], "metric")
    assert fit.num_pl_spikes == int(np.count_nonzero(lam >= ref_xmin))
    # The MLE recovers the exponent of the sample (standard error (α−1)/√n ≈ 0.07 at the largest α).
    assert abs(fit.alpha - alpha) < 0.25, (fit.alpha, alpha)


def test_fitter_dtype_and_order_do_not_matter() -> None:
    lam = 0.01 * _pareto(2.5, 300, 3)
    a = fit_power_law(torch.from_numpy(lam))
    b = fit_power_law(torch.from_numpy(lam[::-1].copy()).to(torch.float64))
    assert a == b


@pytest.mark.parametrize("n", [2, 5, 12, 19, 20, 64])
@pytest.mark.parametrize("kind", ["pareto", "exponential", "ties"])
def test_fitter_matches_weightwatcher_small_and_standard(n: int, kind: str) -> None:
    from weightwatcher.WW_powerlaw import WWFit

    rng = np.random.default_rng(n)
    lam = {"pareto": 0.01 * _pareto(2.2, n, n), "exponential": rng.exponential(1.0, n), "ties": np.ones(n)}[kind]
    with redirect_stdout(io.StringIO()):  # WW prints "SMALL N PL FIT"
        ww = WWFit(lam)
    fit = fit_power_law(torch.from_numpy(lam))
    assert fit.status == "success"
    assert_close([fit.alpha, fit.xmin, fit.D], [ww.alpha, ww.xmin, ww.D], "metric", f"n={n} {kind}")


def test_fit_fails_without_two_values_above_threshold() -> None:
    fit = fit_power_law(torch.tensor([1.0, 1e-7, 0.0], dtype=torch.float64))
    assert fit.status == "failed" and math.isnan(fit.alpha) and fit.num_pl_spikes == 0
    m = ww_metrics(np.array([1.0, 1e-4, 0.0]), (3, 3))
    assert m.status == "failed" and m.warning == "" and math.isnan(m.alpha_weighted)


def test_ww_columns_by_hand() -> None:
    sigma = np.sort(np.sqrt(0.01 * _pareto(2.5, 40, 7)))[::-1].copy()  # descending, as svdtool stores σ
    m = ww_metrics(sigma, (100, 40))
    lam = sigma**2
    alpha, xmin, d = reference_fit(lam)
    assert_close([m.alpha, m.xmin, m.D], [alpha, xmin, d], "metric")
    assert_close(m.log_norm, math.log10(lam.sum()), "metric")
    assert_close(m.log_spectral_norm, math.log10(lam.max()), "metric")
    assert_close(m.alpha_weighted, alpha * math.log10(lam.max()), "metric")
    assert_close(m.log_alpha_norm, math.log10((lam**alpha).sum()), "metric")
    p = lam / lam.sum() + 1e-10
    assert_close(m.entropy, -(p * np.log(p)).sum() / math.log(40 + 1e-10), "metric")
    assert m.rank_loss == 0 and m.num_pl_spikes == int((lam >= xmin).sum())
    assert m.warning == ("over-trained" if alpha < 2 else "under-trained" if alpha > 6 else "")


def test_entropy_of_flat_spectrum_is_one_and_rank_loss_counts() -> None:
    assert_close(matrix_entropy(np.ones(16), 16), 1.0, "fp32")
    m = ww_metrics(np.array([2.0, 1.0, 1e-20]), (3, 3))
    assert m.rank_loss == 1


@pytest.mark.parametrize("beta", [1.0, 0.25, 0.1])
def test_mp_median_against_sampled_spectra(beta: float) -> None:
    n = 2000
    m = int(beta * n)
    w = np.random.default_rng(0).standard_normal((n, m))
    lam = np.linalg.svd(w, compute_uv=False) ** 2 / n
    assert abs(mp_median(beta) - np.median(lam)) < 0.02 * mp_median(beta)


@pytest.mark.parametrize("shape", [(600, 300), (300, 600), (400, 400)])
def test_mp_edge_finds_planted_spikes(shape: tuple[int, int]) -> None:
    rng = np.random.default_rng(1)
    std = 0.02
    w = std * rng.standard_normal(shape)
    k = min(shape)
    u, _ = np.linalg.qr(rng.standard_normal((shape[0], 5)))
    v, _ = np.linalg.qr(rng.standard_normal((shape[1], 5)))
    edge_true = std * (math.sqrt(shape[0]) + math.sqrt(shape[1]))
    w += (u * (edge_true * np.array([4, 3, 2.5, 2, 1.8]))) @ v.T  # five spikes well above the edge
    sigma = np.linalg.svd(w, compute_uv=False)
    bulk = mp_bulk(sigma, shape)
    assert abs(bulk.sigma_e - std) < 0.02 * std  # the median ignores the spikes
    assert bulk.spikes == 5
    assert_close(bulk.edge, bulk.sigma_e * (math.sqrt(max(shape)) + math.sqrt(k)), "metric")
    assert_close(bulk.softrank, bulk.edge**2 / sigma[0] ** 2, "metric")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fit_on_gpu_matches_cpu() -> None:
    lam = 0.01 * _pareto(2.5, 4096, 11)
    cpu = fit_power_law(torch.from_numpy(lam))
    gpu = fit_power_law(torch.from_numpy(lam).cuda())
    assert_close([gpu.alpha, gpu.xmin, gpu.D], [cpu.alpha, cpu.xmin, cpu.D], "metric")
    assert gpu.num_pl_spikes == cpu.num_pl_spikes
