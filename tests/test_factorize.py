"""svdtool.linalg.factorize against float64 ``torch.linalg.svd``: exact top-r / bottom-r, randomized, residuals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from svdtool.linalg import factorize as F
from tests.helpers import assert_close, matrix_with_spectrum

SHAPES = [(120, 80), (80, 120), (96, 96)]  # tall, wide, square


def reference(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return torch.linalg.svd(w.double(), full_matrices=False)


def part(u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor) -> torch.Tensor:
    return (u * s) @ vh


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def spectrum_matrix(shape: tuple[int, int], seed: int, dtype: torch.dtype) -> torch.Tensor:
    """Decaying spectrum with gaps, so that every truncation is well defined, rounded to ``dtype``."""
    k = min(shape)
    sigma = np.geomspace(10.0, 0.05, k) * (1 + 0.3 * np.random.default_rng(seed).random(k))
    w = torch.from_numpy(matrix_with_spectrum(shape, np.sort(sigma)[::-1].copy(), seed))
    return w.to(dtype)


def check_triplets(t: F.Triplets, w: torch.Tensor, r: int, top: bool) -> None:
    u, s, vh = reference(w)
    sl = slice(0, r) if top else slice(s.shape[0] - r, s.shape[0])
    assert_close(t.s, s[sl], "sigma", "singular values")
    assert_close(rel(part(t.u, t.s, t.vh), part(u[:, sl], s[sl], vh[sl])), 0.0, "svd_rel", "truncated part")
    eye = torch.eye(r, dtype=torch.float64)
    assert_close(t.u.T @ t.u, eye, "orthonormal", "U")
    assert_close(t.vh @ t.vh.T, eye, "orthonormal", "V")
    assert t.residual <= F.DEFAULT_TOL


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("algorithm", ["gram-cheb", "svd64"])
def test_top_svd_matches_float64_reference(
    shape: tuple[int, int], dtype: torch.dtype, seed: int, algorithm: str
) -> None:
    w = spectrum_matrix(shape, seed, dtype)
    t = F.top_svd(w, 8, algorithm=algorithm, seed=seed)
    assert t.algorithm == algorithm
    check_triplets(t, w, 8, top=True)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("seed", [0, 1])
def test_top_svd_on_gaussian_matrices_is_optimal(shape: tuple[int, int], seed: int) -> None:
    """Random matrices have nearly equal top σ: the rank-r part must still be the optimal one."""
    w = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    t = F.top_svd(w, 10, algorithm="gram-cheb", seed=seed)
    u, s, vh = reference(w)
    assert t.residual <= F.DEFAULT_TOL
    assert_close(t.s, s[:10], "sigma")
    tail = (w - part(t.u, t.s, t.vh)).norm() ** 2  # ‖W − W_r‖² = Σ_{i>r} σᵢ² for the true top r
    assert_close(tail, (s[10:] ** 2).sum(), "metric")


def test_top_svd_handles_spread_and_steep_spectra() -> None:
    for sigma in (np.geomspace(1e3, 1e-3, 64), np.geomspace(1.0, 1e-9, 64), np.linspace(5.0, 4.9, 64)):
        w = torch.from_numpy(matrix_with_spectrum((90, 64), sigma, 3))
        t = F.top_svd(w, 6, algorithm="gram-cheb")
        check_triplets(t, w, 6, top=True)


def test_auto_picks_direct_svd_for_small_matrices_and_iterates_otherwise() -> None:
    assert F.top_svd(spectrum_matrix((40, 30), 0, torch.float32), 4).algorithm == "svd64"
    assert F.top_svd(spectrum_matrix((400, 300), 0, torch.float32), 4).algorithm == "gram-cheb"


def test_rank_deficient_and_zero_matrices_fall_back_to_direct_svd() -> None:
    low = torch.randn(100, 3, dtype=torch.float64) @ torch.randn(3, 80, dtype=torch.float64)
    t = F.top_svd(low, 6, algorithm="gram-cheb")
    assert t.algorithm.startswith("svd64 (fallback")
    assert_close(rel(part(t.u, t.s, t.vh), low), 0.0, "svd_rel")
    z = F.top_svd(torch.zeros(80, 60), 4, algorithm="gram-cheb")
    assert z.algorithm.startswith("svd64") and float(z.s.abs().max()) == 0.0


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_bottom_svd_matches_float64_reference(shape: tuple[int, int], dtype: torch.dtype) -> None:
    w = spectrum_matrix(shape, 5, dtype)
    t = F.bottom_svd(w, 8)
    check_triplets(t, w, 8, top=False)
    assert bool((t.s[:-1] >= t.s[1:]).all())  # descending among themselves


def test_rank_outside_range_is_refused() -> None:
    with pytest.raises(ValueError, match="outside"):
        F.top_svd(torch.randn(10, 6), 7)
    with pytest.raises(ValueError, match="outside"):
        F.bottom_svd(torch.randn(10, 6), 0)


def test_randomized_converges_to_exact_and_is_seeded() -> None:
    w = spectrum_matrix((300, 200), 7, torch.float32)
    exact = F.top_svd(w, 8)
    errs = [F.product_distance(F.randomized_svd(w, 8, oversample=8, niter=n, seed=0), exact) for n in (1, 2, 4, 12)]
    assert errs[0] > errs[-1] and errs[-1] < 1e-4  # float32 products: ~1e-5 is their floor here
    a = F.randomized_svd(w, 8, oversample=8, niter=3, seed=5)
    b = F.randomized_svd(w, 8, oversample=8, niter=3, seed=5)
    c = F.randomized_svd(w, 8, oversample=8, niter=3, seed=6)
    assert torch.equal(a.u, b.u) and torch.equal(a.s, b.s)
    assert not torch.equal(a.u, c.u)
    assert a.algorithm == "randomized" and a.products == 3 and a.seed == 5


def test_randomized_beats_unoversampled_svd_lowrank_at_equal_niter() -> None:
    """PEFT's pissa_niter_4 is svd_lowrank(q=r, niter=4); oversampled, accelerated iteration does better."""
    w = spectrum_matrix((400, 300), 11, torch.float32)
    exact = F.top_svd(w, 16)
    torch.manual_seed(0)
    u, s, v = torch.svd_lowrank(w, q=16, niter=4)
    peft = F.Triplets(u.double(), s.double(), v.T.double(), "svd_lowrank", 0.0)
    ours = F.randomized_svd(w, 16, oversample=48, niter=4, seed=0)
    assert F.product_distance(ours, exact) < 0.1 * F.product_distance(peft, exact)


def test_warm_start_reuses_the_randomized_subspace() -> None:
    w = spectrum_matrix((400, 300), 2, torch.float64)
    approx = F.randomized_svd(w, 8, oversample=24, niter=6, seed=0)
    cold = F.top_svd(w, 8, algorithm="gram-cheb")
    warm = F.top_svd(w, 8, algorithm="gram-cheb", start=approx)
    check_triplets(warm, w, 8, top=True)
    assert warm.products <= cold.products


def test_subtract_adapter_is_exact_from_stored_factors() -> None:
    w = torch.randn(50, 40, dtype=torch.float64)
    a = torch.randn(4, 40, dtype=torch.float32)
    b = torch.randn(50, 4, dtype=torch.float32)
    res = F.subtract_adapter(w, a, b, 0.5)
    assert res.dtype == torch.float64
    assert_close(res + 0.5 * (b.double() @ a.double()), w, "exact64")


def test_product_distance() -> None:
    w = spectrum_matrix((60, 50), 1, torch.float64)
    t = F.top_svd(w, 5)
    assert F.product_distance(t, t) < 1e-7
    half = F.Triplets(t.u, t.s / 2, t.vh, "x", 0.0)
    assert_close(F.product_distance(half, t), 0.5, "metric")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("shape", [(512, 384), (384, 512)])
def test_gpu_paths_match_float64_reference(shape: tuple[int, int]) -> None:
    w = spectrum_matrix(shape, 4, torch.bfloat16).cuda()
    for t in (F.top_svd(w, 16, algorithm="gram-cheb"), F.top_svd(w, 16, algorithm="svd64")):
        assert t.u.is_cuda
        check_triplets(F.Triplets(t.u.cpu(), t.s.cpu(), t.vh.cpu(), t.algorithm, t.residual), w.cpu(), 16, True)
    bottom = F.bottom_svd(w, 8)
    check_triplets(F.Triplets(bottom.u.cpu(), bottom.s.cpu(), bottom.vh.cpu(), "", bottom.residual), w.cpu(), 8, False)
    approx = F.randomized_svd(w, 16, oversample=48, niter=24, seed=0)
    assert F.product_distance(approx, F.top_svd(w, 16)) < 1e-4


def _covariance(n: int, spectrum: np.ndarray, seed: int) -> torch.Tensor:
    """Q·diag(λ)·Qᵀ for a random orthonormal Q (n, n), float64."""
    q, _ = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, n)))
    return torch.from_numpy((q * spectrum) @ q.T)


@pytest.mark.parametrize("spectrum", ["decaying", "clustered", "outliers"])
def test_top_eigh_matches_float64_eigh(spectrum: str) -> None:
    """Top k eigenpairs of a PSD matrix by the certified iteration (n > the CPU's direct limit) against a full
    float64 eigh: values to 1e-12·λ₁, vectors to float64 accuracy (up to sign), the certificate recomputed."""
    n, k = 400, 24
    i = np.arange(1, n + 1, dtype=np.float64)
    lam = {
        "decaying": i**-1.2,
        "clustered": np.where(i <= 40, 1.0 + 1e-3 * (40 - i), 1e-2 * i**-0.5),  # gaps of 1e-3 inside the top
        "outliers": np.concatenate([[1e4, 3e3], i[2:] ** -0.7]),  # massive-activation channels
    }[spectrum]
    c = _covariance(n, lam, 3)
    got = F.top_eigh(c, k)
    assert got.algorithm == "cheb-eigh" and got.residual <= 1e-11
    ref_vals, ref_vecs = torch.linalg.eigh(c)
    ref_vals, ref_vecs = ref_vals.flip(0)[:k], ref_vecs.flip(1)[:, :k]
    assert_close(got.values / ref_vals[0], ref_vals / ref_vals[0], "exact64")
    assert_close((got.vectors * ref_vecs).sum(0).abs(), torch.ones(k, dtype=torch.float64), "svd_rel")
    recomputed = (c @ got.vectors - got.vectors * got.values).norm(dim=0).max() / got.values[0]
    assert float(recomputed) <= 1e-11  # the certified bound, from C itself


def test_top_eigh_falls_back_to_eigh_when_small_or_rank_deficient() -> None:
    i = np.arange(1, 301, dtype=np.float64)
    small = F.top_eigh(_covariance(64, i[:64] ** -1.0, 0), 8)
    assert small.algorithm == "eigh64"
    deficient = F.top_eigh(_covariance(300, np.where(i <= 10, i**-1.0, 0.0), 1), 16)  # λ_16 = 0
    assert deficient.algorithm.startswith("eigh64 (fallback") and deficient.residual <= 1e-12


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_top_eigh_on_gpu_matches_float64_eigh() -> None:
    i = np.arange(1, 1025, dtype=np.float64)
    c = _covariance(1024, i**-0.9, 5)
    got = F.top_eigh(c.cuda(), 32)
    ref = torch.linalg.eigh(c)[0].flip(0)[:32]
    assert got.algorithm == "cheb-eigh" and got.vectors.is_cuda and got.residual <= 1e-11
    assert_close(got.values.cpu() / ref[0], ref / ref[0], "exact64")
