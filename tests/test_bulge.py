"""Band → tridiagonal bulge chasing (svdtool.linalg.bulge) against float64 references.

Without CUDA the Triton kernel runs in Triton's interpreter (``TRITON_INTERPRET=1``, set in conftest), so
CI checks the same kernel code that a GPU compiles; the GPU tests run it compiled and graphed.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg as sl
import torch

from svdtool.engine import band_pool
from svdtool.linalg import band, bulge
from tests import bulge_reference
from tests.helpers import assert_close, matrix_with_spectrum

pytest.importorskip("triton")
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def _random_band(n: int, b: int, seed: int) -> np.ndarray:
    """A random symmetric band matrix (b+1, n) in lower band storage."""
    rng = np.random.default_rng(seed)
    out = rng.standard_normal((b + 1, n))
    for i in range(b + 1):
        out[i, n - i :] = 0.0
    return out


def _assert_same_spectrum(d: np.ndarray, e: np.ndarray, dense: np.ndarray) -> None:
    ref = np.linalg.eigvalsh(dense)
    scale = max(float(np.abs(ref).max()), 1.0)
    got = sl.eigvalsh_tridiagonal(d, e) if len(d) > 1 else d
    assert_close(got / scale, ref / scale, "eig64_backward")


@pytest.mark.parametrize(("n", "b"), [(20, 3), (33, 4), (9, 8), (40, 16), (25, 2), (12, 1), (3, 2), (2, 5), (1, 4)])
def test_chase_keeps_the_eigenvalues(n: int, b: int) -> None:
    bands = torch.from_numpy(np.stack([_random_band(n, b, seed) for seed in (0, 1)]))  # a batch of two
    before = bands.clone()
    d, e = bulge.tridiagonalize(bands)
    assert d.shape == (2, n) and e.shape == (2, max(n - 1, 0))
    assert torch.equal(bands, before)  # the input is left alone
    for m in range(2):
        _assert_same_spectrum(d[m].numpy(), e[m].numpy(), bulge_reference.dense(bands[m].numpy()))


@pytest.mark.parametrize(("n", "b"), [(30, 4), (17, 8), (26, 3)])
def test_wavefront_equals_the_sweep_order(n: int, b: int) -> None:
    # Same tasks, same arithmetic, another order: the tridiagonal itself must agree, not only its spectrum.
    band_ = _random_band(n, b, 7)
    d, e = bulge.tridiagonalize(torch.from_numpy(band_[None]))
    d_ref, e_ref = bulge_reference.tridiagonalize(band_)
    assert_close(d[0].numpy(), d_ref, "reordered64")
    assert_close(np.abs(e[0].numpy()), np.abs(e_ref), "reordered64")


def test_two_stages_give_the_gram_spectrum() -> None:
    # Dense → band (svdtool.linalg.band) → tridiagonal (svdtool.linalg.bulge) → LAPACK dsterf, against dense eigvalsh.
    sigma = np.geomspace(3.0, 1e-3, 48)
    w = torch.from_numpy(matrix_with_spectrum((60, 48), sigma, 3))
    g = (w.T @ w)[None]  # (1, 48, 48)
    lam = bulge.eigenvalues(*bulge.tridiagonalize(band.reduce_to_band(g, 6)))[0].numpy()
    got = np.sqrt(np.clip(lam, 0, None))[::-1]
    mask = sigma >= 1e-4 * sigma[0]  # where the Gram route is trusted (linalg.GRAM_SAFE_RATIO)
    assert_close(got[mask], sigma[mask], "sigma")


@pytest.mark.parametrize("case", ["random", "split", "repeated", "graded", "diagonal", "one", "two", "empty"])
def test_bisection_equals_lapack(case: str) -> None:
    rng = np.random.default_rng(5)
    n = {"one": 1, "two": 2, "empty": 0}.get(case, 24)
    d, e = rng.standard_normal((2, n)), rng.standard_normal((2, max(n - 1, 0)))
    if case == "split":  # a zero subdiagonal entry splits T into two blocks
        e[:, 7] = 0.0
    if case == "repeated":  # one eigenvalue many times (to rounding)
        d[:], e[:] = 1.0, 1e-13
    if case == "graded":  # eigenvalues over 12 orders of magnitude
        d = np.tile(np.geomspace(1e6, 1e-6, n), (2, 1))
        e = 1e-3 * np.sqrt(d[:, 1:] * d[:, :-1])
    if case == "diagonal":
        e[:] = 0.0
    got = bulge.eigenvalues(torch.from_numpy(d), torch.from_numpy(e)).numpy()
    assert got.shape == (2, n)
    for m in range(2):
        ref = sl.eigvalsh_tridiagonal(d[m], e[m]) if n > 1 else d[m]
        scale = max(float(np.abs(ref).max(initial=0.0)), 1e-300)
        assert_close(got[m] / scale, ref / scale, "eig64_backward")


def test_availability_and_its_self_test() -> None:
    assert not bulge.available(torch.device("cpu"))  # the route is for GPUs
    assert bulge._self_test(torch.device("cpu"))  # the kernels, interpreted here, pass the check it runs


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="float64"):
        bulge.tridiagonalize(torch.zeros((1, 3, 10), dtype=torch.float32))
    with pytest.raises(ValueError, match="batch"):
        bulge.tridiagonalize(torch.zeros((3, 10), dtype=torch.float64))


def test_pipeline_with_the_chase_route(monkeypatch: pytest.MonkeyPatch) -> None:
    # The GPU-side pipeline on the CPU with the kernels interpreted: no CPU processes are needed.
    monkeypatch.setattr(band_pool, "BAND_MIN", 16)
    monkeypatch.setattr(band_pool, "BAND_BATCH", 2)
    monkeypatch.setattr(bulge, "BANDWIDTH", 4)
    monkeypatch.setattr(bulge, "available", lambda device: True)
    rng = np.random.default_rng(1)
    mats = []
    for i, shape in enumerate([(24, 24), (20, 30), (30, 20)]):
        sigma = np.sort(rng.uniform(0.1, 2.0, min(shape)))[::-1]
        if shape == (24, 24):
            sigma[-1] = 1e-7  # needs the refinement after the chase
        mats.append(torch.from_numpy(matrix_with_spectrum(shape, sigma, i)).to(torch.float32))
    items = ((i, f"m{i}", w, 0.0) for i, w in enumerate(mats))
    out = list(band_pool.solve_stream(items, torch.device("cpu"), None, 0, lambda *a: a))  # type: ignore[arg-type]
    assert sorted(o[0] for o in out) == [0, 1, 2]
    assert {o[3] for o in out} == {"gram64-chase", "gram64-chase+inv64"}
    for index, _, sigma, _, _, _ in out:
        ref = sl.svdvals(mats[index].double().numpy())
        mask = ref >= 1e-6 * ref[0]
        assert np.max(np.abs(sigma - ref)[mask] / ref[mask]) < 1e-8


@pytest.mark.gpu
@CUDA
@pytest.mark.parametrize("b", [16, 32, 64])
def test_gpu_chase_graphed_equals_eager_and_dense(b: int, monkeypatch: pytest.MonkeyPatch) -> None:
    from svdtool.linalg import cuda_graphs

    n = 700
    bands = torch.from_numpy(np.stack([_random_band(n, b, seed) for seed in range(3)])).cuda()
    out = {}
    for graphs in (False, True, True):  # eager, capture, replay
        monkeypatch.setattr(cuda_graphs, "ENABLED", graphs)
        d, e = bulge.tridiagonalize(bands)
        out[graphs] = (d.cpu().numpy(), e.cpu().numpy())
    cuda_graphs.release()
    assert_close(out[True][0], out[False][0], "exact64")
    assert_close(out[True][1], out[False][1], "exact64")
    lam = bulge.eigenvalues(torch.from_numpy(out[True][0]).cuda(), torch.from_numpy(out[True][1]).cuda()).cpu()
    for m in range(3):
        # As accurate as LAPACK's own band solver (dsbevd), both against the dense float64 eigen-solve.
        ref = np.linalg.eigvalsh(bulge_reference.dense(bands[m].cpu().numpy()))
        bound = 2 * np.abs(band.band_eigenvalues(bands[m].cpu().numpy()) - ref).max() + 4e-16 * np.abs(ref).max()
        assert np.abs(lam[m].numpy() - ref).max() <= bound
        assert np.abs(sl.eigvalsh_tridiagonal(out[True][0][m], out[True][1][m]) - ref).max() <= bound
