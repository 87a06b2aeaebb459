"""Two-stage eigenvalues (svdtool.linalg.band) and the GPU-side pipeline that uses them, against float64 references."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg as sl
import torch

from svdtool.engine import band_pool
from svdtool.linalg import band, exact
from tests.helpers import assert_close, matrix_with_spectrum

CPU = torch.device("cpu")


def _gram(n: int, cols: int, seed: int) -> torch.Tensor:
    w = torch.randn(n, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return w @ w.T  # (n, n)


def _eigs(bands: torch.Tensor) -> list[np.ndarray]:
    return [band.band_eigenvalues(x.numpy()) for x in bands]


def _assert_eigs_close(got: np.ndarray, ref: np.ndarray | torch.Tensor) -> None:
    # Orthogonal similarities in float64: every eigenvalue to a few eps·‖G‖ (absolute, for G = 0).
    ref = np.asarray(ref, dtype=np.float64)
    scale = float(ref[-1]) if ref[-1] > 0 else 1.0
    assert_close(got / scale, ref / scale, "eig64_backward")


@pytest.mark.parametrize(("n", "b"), [(200, 16), (130, 32), (64, 32), (33, 32), (97, 1), (2, 4), (1, 8)])
@pytest.mark.parametrize("seed", [0, 1])
def test_band_eigenvalues_equal_dense_float64(n: int, b: int, seed: int) -> None:
    g = torch.stack([_gram(n, n + 7, seed), _gram(n, 3 * n, seed + 10)])  # a batch of two
    before = g.clone()
    bands = band.reduce_to_band(g, b)
    assert bands.shape == (2, b + 1, n)
    assert torch.equal(g, before)  # the input is left alone
    for got, ref in zip(_eigs(bands), torch.linalg.eigvalsh(g), strict=True):
        _assert_eigs_close(got, ref)


def test_reduced_matrix_is_banded_and_similar() -> None:
    g = _gram(120, 150, 3)
    bands = band.reduce_to_band(g[None], 8)[0]  # (9, 120)
    # Rebuild the dense band matrix: its trace and Frobenius norm equal G's (an orthogonal similarity).
    dense = torch.zeros_like(g)
    for i in range(9):
        dense += torch.diag(bands[i, : 120 - i], -i)
        if i:
            dense += torch.diag(bands[i, : 120 - i], i)
    assert_close(torch.trace(dense), torch.trace(g), "exact64")
    assert_close(torch.linalg.norm(dense), torch.linalg.norm(g), "exact64")


def test_rank_deficient_and_degenerate_matrices_take_the_safe_panels() -> None:
    low_rank = _gram(150, 12, 4)  # rank 12: most panels cannot be Cholesky-factored
    cases = [low_rank, torch.diag(torch.arange(90.0, dtype=torch.float64)), torch.zeros(70, 70, dtype=torch.float64)]
    for g in cases:
        got = _eigs(band.reduce_to_band(g[None], 16))[0]
        ref = torch.linalg.eigvalsh(g).numpy()
        _assert_eigs_close(got, ref)


@pytest.mark.parametrize("fast", [True, False])
def test_panel_householder_is_an_orthogonal_qr(fast: bool) -> None:
    p = torch.randn(3, 200, 16, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    v, t, r, failed = band.panel_householder(p, fast)
    assert not bool(failed)
    q = torch.eye(200, dtype=torch.float64) - v @ t @ v.mT  # (3, 200, 200)
    assert_close(q.mT @ q, torch.eye(200, dtype=torch.float64).expand(3, 200, 200), "orthonormal")
    applied = q.mT @ p  # [R; 0]
    scale = float(p.abs().max())
    assert float((applied[:, :16] - r).abs().max()) < 1e-12 * scale
    assert float(applied[:, 16:].abs().max()) < 1e-12 * scale
    assert torch.equal(r, torch.triu(r))


@pytest.mark.parametrize("seed", range(6))
def test_cholesky_route_is_accurate_or_flags_a_rank_deficient_panel(seed: int) -> None:
    p = torch.randn(1, 100, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    p[..., 7] = p[..., 0]  # two equal columns: CholeskyQR breaks down or loses orthogonality
    v, t, r, failed = band.panel_householder(p, fast=True)
    if not bool(failed):  # it passed its own check, so it must be a valid QR
        q = torch.eye(100, dtype=torch.float64) - v @ t @ v.mT
        assert_close(q.mT @ q, torch.eye(100, dtype=torch.float64)[None], "orthonormal")
        applied = q.mT @ p
        assert float((applied[:, :8] - r).abs().max()) < 1e-12 * float(p.abs().max())
    assert not bool(band.panel_householder(p, fast=False)[3])


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_square_small_values_refined_from_a_random_start(seed: int) -> None:
    n = 90
    sigma = np.linspace(2.0, 0.5, n)
    sigma[-4:] = [3e-5, 1e-6, 2e-7, 5e-9]
    w = torch.from_numpy(matrix_with_spectrum((n, n), sigma, seed))
    lam = torch.linalg.eigvalsh(exact.gram64(w, CPU)).numpy()
    got, method = exact.finish_from_gram(w, lam, CPU, "gram64-band")
    assert method == "gram64-band+inv64"
    ref = sl.svdvals(w.numpy())
    mask = ref >= 1e-6 * ref[0]
    assert np.max(np.abs(got - ref)[mask] / ref[mask]) < 1e-9
    assert abs(got[-1] - ref[-1]) / ref[-1] < 1e-5


def test_pipeline_with_cpu_processes_matches_scipy(monkeypatch: pytest.MonkeyPatch) -> None:
    # The GPU-side pipeline run on the CPU, with real helper processes: the band route, the direct
    # route when the helpers are busy, and the refinement of small values after the band route.
    monkeypatch.setattr(band_pool, "BAND_MIN", 16)
    monkeypatch.setattr(band, "BANDWIDTH", 8)
    monkeypatch.setattr(band_pool, "BAND_BATCH", 2)  # full batches and a remainder
    rng = np.random.default_rng(0)
    mats = []
    for i in range(7):
        shape = [(60, 60), (48, 80), (80, 48), (20, 10)][i % 4]
        sigma = np.sort(rng.uniform(0.1, 2.0, min(shape)))[::-1]
        if shape == (60, 60):
            sigma[-1] = 1e-7  # needs the refinement
        mats.append(torch.from_numpy(matrix_with_spectrum(shape, sigma, i)).to(torch.float32))
    items = ((i, f"m{i}", w, 0.0) for i, w in enumerate(mats))
    pool = band_pool.start_pool(2)
    assert pool is not None
    try:
        out = list(band_pool.solve_stream(items, CPU, pool, 2, lambda *a: a))  # type: ignore[arg-type]
    finally:
        pool.shutdown()
    assert sorted(o[0] for o in out) == list(range(7))
    methods = {o[3] for o in out}
    assert "gram64-band" in methods and "gram64-band+inv64" in methods
    for index, _, sigma, _, _, _ in out:
        ref = sl.svdvals(mats[index].double().numpy())
        mask = ref >= 1e-6 * ref[0]
        assert np.max(np.abs(sigma - ref)[mask] / ref[mask]) < 1e-8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_band_route_matches_dense() -> None:
    g = torch.stack([_gram(1100, 1300, s) for s in range(3)]).cuda()
    for b in (16, 32):
        got = _eigs(band.reduce_to_band(g, b).cpu())
        for x, ref in zip(got, torch.linalg.eigvalsh(g).cpu(), strict=True):
            _assert_eigs_close(x, ref)


def test_pipeline_drops_queued_bands_once_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(band_pool, "BAND_MIN", 16)
    monkeypatch.setattr(band_pool, "BAND_BATCH", 3)
    stop = threading.Event()
    mats = [torch.randn(40, 50, generator=torch.Generator().manual_seed(i)) for i in range(5)]

    def items() -> Iterator[tuple[int, str, torch.Tensor, float]]:
        yield from ((i, f"m{i}", w, 0.0) for i, w in enumerate(mats))
        stop.set()  # e.g. Ctrl-C while the last bands are still queued

    pool = band_pool.start_pool(1)
    assert pool is not None
    try:
        out = list(band_pool.solve_stream(items(), CPU, pool, 4, lambda *a: a, stop))  # type: ignore[arg-type]
    finally:
        pool.shutdown(cancel_futures=True)
    # Matrices 0-2 were reduced as a batch; 3-4 never were, and nothing waits for the queued work.
    assert len(out) < 5
    for index, _, sigma, _, _, _ in out:
        assert_close(sigma, sl.svdvals(mats[index].double().numpy()), "sigma")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("route", ["gram64-chase", "gram64-band"])
def test_gpu_spectrum_end_to_end_through_the_band_route(
    tiny_llama: Path, monkeypatch: pytest.MonkeyPatch, route: str
) -> None:
    # The whole GPU pipeline (reader, GPU thread, CUDA-graph reductions, the GPU chase or the CPU band
    # solver, CPU processes, refinement) on a real checkpoint, with the size threshold lowered so its
    # small matrices take the band route.
    from safetensors.torch import load_file

    from svdtool.commands.spectrum import SpectrumRequest, run_spectrum
    from svdtool.linalg import bulge

    monkeypatch.setattr(band_pool, "BAND_MIN", 8)
    monkeypatch.setattr(bulge, "ENABLED", route == "gram64-chase")
    run = run_spectrum(SpectrumRequest(model=str(tiny_llama), device="cuda", cpu_workers=2))
    methods = {m.method for m in run.result.matrices}
    assert any(m.startswith(route) for m in methods)
    weights = load_file(str(tiny_llama / "model.safetensors"))
    for m in run.result.matrices:
        ref = sl.svdvals(weights[m.name].double().numpy())
        mask = ref >= 1e-6 * ref[0]
        got = run.sigmas[m.name]
        assert np.max(np.abs(got - ref)[mask] / ref[mask]) < 1e-8, m.name


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_refinement_graphed_equals_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    from svdtool.linalg import cuda_graphs

    n = 300
    results = {}
    for graphs in (True, False):
        monkeypatch.setattr(cuda_graphs, "ENABLED", graphs)
        for seed in (0, 1):  # the second matrix replays the graph captured for the first
            sigma = np.linspace(2.0, 0.5, n)
            sigma[-3:] = [3e-5, 1e-6, 5e-9]
            w = torch.from_numpy(matrix_with_spectrum((n, n), sigma, seed))
            lam = torch.linalg.eigvalsh(exact.gram64(w, CPU)).numpy()
            got, method = exact.finish_from_gram(w.cuda(), lam, torch.device("cuda"), "gram64-band")
            assert method == "gram64-band+inv64"
            ref = sl.svdvals(w.numpy())
            mask = ref >= 1e-6 * ref[0]
            assert np.max(np.abs(got - ref)[mask] / ref[mask]) < 1e-9
            results[(graphs, seed)] = got
        cuda_graphs.release()
    for seed in (0, 1):
        assert_close(results[(True, seed)], results[(False, seed)], "exact64")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_capture_while_another_thread_uploads() -> None:
    # The reader thread keeps allocating and uploading while the GPU thread captures its graphs.
    from svdtool.linalg import cuda_graphs

    done = threading.Event()
    errors: list[BaseException] = []

    def upload() -> None:
        try:
            while not done.is_set():
                x = torch.randn(512, 700).to("cuda")  # fresh allocations and host-to-device copies
                del x
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    thread = threading.Thread(target=upload)
    thread.start()
    try:
        g = torch.stack([_gram(520, 600, s) for s in range(2)]).cuda()
        for b in (8, 12):  # two shapes: two captures
            got = _eigs(band.reduce_to_band(g, b).cpu())
            for x, ref in zip(got, torch.linalg.eigvalsh(g).cpu(), strict=True):
                _assert_eigs_close(x, ref)
    finally:
        done.set()
        thread.join()
        cuda_graphs.release()
    assert not errors
