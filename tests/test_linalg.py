"""Exact singular values: svdtool.linalg against float64 scipy, on matrices with known spectra."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sl
import torch

from svdtool.linalg import exact
from tests.helpers import assert_close, matrix_with_spectrum

CPU = torch.device("cpu")
SHAPES = {"tall": (96, 40), "wide": (40, 96), "square": (64, 64)}


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_known_spectrum_fp64(shape: tuple[int, int], seed: int) -> None:
    k = min(shape)
    sigma = np.sort(np.random.default_rng(seed).uniform(0.05, 3.0, k))[::-1]
    w = torch.from_numpy(matrix_with_spectrum(shape, sigma, seed))
    got, method = exact.singular_values(w, CPU)
    assert method == "gram64"
    assert_close(got, sigma, "sigma")


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("seed", [0, 1])
def test_low_precision_storage_matches_scipy(shape: tuple[int, int], dtype: torch.dtype, seed: int) -> None:
    # The stored (rounded) matrix is the input: compare with scipy on exactly those values.
    sigma = np.linspace(2.0, 0.2, min(shape))
    w = torch.from_numpy(matrix_with_spectrum(shape, sigma, seed)).to(dtype)
    ref = sl.svdvals(w.double().numpy())
    got, _ = exact.singular_values(w, CPU)
    assert_close(got, ref, "sigma")
    # and the rounding moved σ by no more than the storage precision allows
    assert_close(got, sigma, "bf16")


def test_square_with_tiny_values_is_refined_not_trusted_to_the_gram_matrix() -> None:
    n = 80
    sigma = np.linspace(1.0, 0.5, n)
    sigma[-3:] = [1e-5, 3e-7, 1e-9]  # far below the Gram matrix's accuracy (~1e-8·σ₁)
    w = torch.from_numpy(matrix_with_spectrum((n, n), sigma, 3))
    got, method = exact.singular_values(w, CPU)
    assert method == "gram64+inv64"
    ref = sl.svdvals(w.numpy())
    mask = ref >= 1e-6 * ref[0]
    assert np.max(np.abs(got - ref)[mask] / ref[mask]) < 1e-9
    assert abs(got[-1] - 1e-9) / 1e-9 < 1e-5  # still accurate well below 1e-6·σ₁


@pytest.mark.parametrize("shape", [(90, 60), (60, 90)])
def test_rectangular_ill_conditioned_falls_back_to_direct_svd(shape: tuple[int, int]) -> None:
    sigma = np.logspace(0, -9, min(shape))
    w = torch.from_numpy(matrix_with_spectrum(shape, sigma, 5))
    got, method = exact.singular_values(w, CPU)
    assert method == "svd64"
    ref = sl.svdvals(w.numpy())
    # A direct SVD is exact to eps·σ₁ in absolute terms: relative checks apply from 1e-6·σ₁ up.
    mask = ref >= 1e-6 * ref[0]
    assert_close(got[mask], ref[mask], "sigma")
    assert np.max(np.abs(got - ref)) < 1e-13 * ref[0]


def test_many_small_values_use_direct_svd() -> None:
    sigma = np.logspace(0, -8, 64)  # half the values are below 1e-4·σ₁
    w = torch.from_numpy(matrix_with_spectrum((64, 64), sigma, 9))
    got, method = exact.singular_values(w, CPU)
    assert method == "svd64"
    ref = sl.svdvals(w.numpy())
    mask = ref >= 1e-6 * ref[0]
    assert_close(got[mask], ref[mask], "sigma")


def test_singular_square_matrix() -> None:
    sigma = np.linspace(1.0, 0.1, 32)
    sigma[-2:] = 0.0
    w = torch.from_numpy(matrix_with_spectrum((32, 32), sigma, 2))
    got, _ = exact.singular_values(w, CPU)
    assert np.all(got[:-2] > 0.09)
    assert np.all(np.abs(got[-2:]) < 1e-14)


@pytest.mark.parametrize("shape", [(300, 20), (20, 300)])
def test_chunked_gram_equals_plain_gram(shape: tuple[int, int]) -> None:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    g = exact.gram64(w, CPU, chunk_elements=7 * min(shape))  # many uneven chunks
    ref = w.T @ w if shape[0] >= shape[1] else w @ w.T
    assert_close(g, ref, "exact64")


def test_zero_and_empty_matrices() -> None:
    got, method = exact.singular_values(torch.zeros(5, 3), CPU)
    assert method == "gram64" and np.all(got == 0)
    got, method = exact.singular_values(torch.zeros(0, 3), CPU)
    assert len(got) == 0 and method == "empty"


def test_rejects_non_matrix() -> None:
    with pytest.raises(ValueError):
        exact.singular_values(torch.zeros(3), CPU)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_gpu_matches_scipy(shape: tuple[int, int]) -> None:
    w = torch.from_numpy(matrix_with_spectrum(shape, np.linspace(3, 0.01, min(shape)), 0)).to(torch.bfloat16)
    got, _ = exact.singular_values(w.cuda(), torch.device("cuda"))
    assert_close(got, sl.svdvals(w.double().numpy()), "sigma")
    lam = torch.linalg.eigvalsh(exact.gram64(w, torch.device("cpu"))).numpy()
    got, _ = exact.finish_from_gram(w.cuda(), lam, torch.device("cuda"), "test")  # random-start refinement
    assert_close(got, sl.svdvals(w.double().numpy()), "sigma")


@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_unrefined_keeps_the_gram_values_and_says_so(shape: tuple[int, int]) -> None:
    # refine=False (coverage): values below GRAM_SAFE_RATIO·σ₁ stay the Gram's; σ² is still exact to eps·σ₁².
    sigma = np.geomspace(3.0, 1e-7, min(shape))
    w = torch.from_numpy(matrix_with_spectrum(shape, sigma, 3))
    ref = sl.svdvals(w.numpy())
    got, method = exact.singular_values(w, CPU, refine=False)
    assert method == "gram64+unrefined"
    assert_close((got / ref[0]) ** 2, (ref / ref[0]) ** 2, "eig64_backward")
    refined, method = exact.singular_values(w, CPU)
    assert method in ("svd64", "gram64+inv64")
    assert_close(refined, ref, "sigma")
