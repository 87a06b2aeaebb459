"""``coverage``'s per-matrix work through the engine: two gloo ranks equal one process, a ``--grad-cache``
mapping is looked up once per gradient, and on a GPU the σ take the band route and equal float64."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
import pytest
import torch

from svdtool.commands.coverage_matrices import coverage_jobs, gradient_coverage
from svdtool.engine import band_pool
from svdtool.engine.plan import plan
from svdtool.engine.world import current
from tests.distributed.harness import needs_fork, run_distributed
from tests.helpers import assert_close, matrix_with_spectrum

CPU = torch.device("cpu")
RANKS = [2, 4]


def _gradients() -> dict[str, torch.Tensor]:
    """Seven float32 gradients of three shapes, some with σ small enough to be refined."""
    out = {}
    for i in range(7):
        shape = [(48, 32), (32, 48), (40, 40)][i % 3]
        sigma = np.geomspace(3.0, 1e-2, min(shape))
        if i % 2:
            sigma[-2:] = [1e-7, 0.0]
        g = matrix_with_spectrum(shape, sigma, i)
        out[f"model.layers.{i}.mlp.{['up', 'down', 'gate'][i % 3]}_proj.weight"] = torch.from_numpy(g).float()
    return out


def _snapshots(grads: dict[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(0)
    return {4: {n: g + 0.5 * torch.randn(g.shape, generator=gen) * g.abs().mean() for n, g in grads.items()}}


def _shapes(grads: Mapping[str, torch.Tensor]) -> dict[str, tuple[int, int]]:
    return {n: (int(g.shape[0]), int(g.shape[1])) for n, g in grads.items()}


def _on_rank(rank: int, out: str) -> None:
    assert current().size == 2
    grads = _gradients()
    names = list(grads)
    mine = [names[i] for i in plan(coverage_jobs(_shapes(grads)), 2).mine(rank)]
    assert 0 < len(mine) < len(names)
    held = {n: grads[n] for n in mine}  # only the gradients this rank owns
    snapshots = {b: {n: s[n] for n in mine} for b, s in _snapshots(grads).items()}
    got = gradient_coverage(held, _shapes(grads), ranks=RANKS, device=CPU, snapshots=snapshots)
    torch.save({"sigmas": got.sigmas, "matrices": got.matrices, "methods": got.methods}, Path(out, f"rank{rank}.pt"))


@needs_fork
def test_two_ranks_equal_one_process(tmp_path: Path) -> None:
    run_distributed(_on_rank, tmp_path, str(tmp_path))
    grads = _gradients()
    single = gradient_coverage(grads, _shapes(grads), ranks=RANKS, device=CPU, snapshots=_snapshots(grads))
    assert single.methods == {"gram64": 4, "gram64+unrefined": 3}
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=False)
        assert got["matrices"] == single.matrices and got["methods"] == single.methods
        assert list(got["sigmas"]) == list(single.sigmas)
        for name, sigma in single.sigmas.items():
            np.testing.assert_array_equal(got["sigmas"][name], sigma, err_msg=name)  # bit for bit


class _Counting(Mapping[str, torch.Tensor]):
    """A mapping that reads on lookup, like a ``--grad-cache`` file, counting the lookups."""

    def __init__(self, grads: dict[str, torch.Tensor]) -> None:
        self.grads, self.lookups = grads, 0

    def __getitem__(self, name: str) -> torch.Tensor:
        self.lookups += 1
        return self.grads[name].clone()

    def __iter__(self) -> Iterator[str]:
        return iter(self.grads)

    def __len__(self) -> int:
        return len(self.grads)


def test_a_lazy_mapping_is_looked_up_once_per_gradient() -> None:
    grads = _gradients()
    lazy = _Counting(grads)
    got = gradient_coverage(lazy, _shapes(grads), ranks=RANKS, device=CPU)
    assert lazy.lookups == len(grads)
    want = gradient_coverage(grads, _shapes(grads), ranks=RANKS, device=CPU)
    assert got.matrices == want.matrices


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("route", ["gram64-chase", "gram64-band"])
def test_gpu_gradients_take_the_band_route(monkeypatch: pytest.MonkeyPatch, route: str) -> None:
    """Gradients on the GPU, fed from memory: batched dense → band, then the GPU chase (Triton) or CPU band
    processes; σ and coverage equal the CPU float64 results, and the manifest's methods say which route."""
    from svdtool.linalg import bulge

    monkeypatch.setattr(band_pool, "BAND_MIN", 8)
    monkeypatch.setattr(bulge, "ENABLED", route == "gram64-chase")
    grads = _gradients()
    cuda = {n: g.cuda() for n, g in grads.items()}
    got = gradient_coverage(cuda, _shapes(grads), ranks=RANKS, device=torch.device("cuda"), cpu_workers=2)
    assert any(m.startswith(route) for m in got.methods), got.methods
    want = gradient_coverage(grads, _shapes(grads), ranks=RANKS, device=CPU)
    for g, w in zip(got.matrices, want.matrices, strict=True):
        assert g.name == w.name
        ref = np.linalg.svd(grads[g.name].double().numpy(), compute_uv=False)
        assert_close((got.sigmas[g.name] / ref[0]) ** 2, (ref / ref[0]) ** 2, "eig64_backward", g.name)
        for k in g.coverage:
            assert_close(g.coverage[k], w.coverage[k], "metric", f"{g.name} k={k}")
        assert_close(g.frobenius, w.frobenius, "metric", g.name)
