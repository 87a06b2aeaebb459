"""HSDP for the sharded gradient estimate: 4 fork-started gloo ranks as 2 simulated nodes of 2
(LOCAL_WORLD_SIZE=2). Weights and accumulators split over a node's 2 ranks (⌈out/2⌉ rows, not ⌈out/4⌉),
one all-reduce across the nodes at the end: exact and sketch gradients equal one process to 1e-6.
``SVDTOOL_SHARD_WEIGHTS=world`` forces the flat mesh; the choice of mesh itself is tested without processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from svdtool.engine.world import World
from svdtool.errors import SvdtoolError
from svdtool.gradients import estimate_gradients
from svdtool.gradients.mesh import MESH_ENV, Mesh, choose, requested
from tests.distributed.harness import needs_fork, run_distributed
from tests.distributed.test_gradients_distributed import _held, _rank_estimate, _request, _single
from tests.helpers import assert_close


@needs_fork
@pytest.mark.parametrize(
    ("mode", "want", "shard"), [("exact", "auto", 2), ("sketch", "auto", 2), ("exact", "world", 4)],
    ids=["exact-hsdp", "sketch-hsdp", "exact-flat"],
)  # fmt: skip
def test_two_nodes_of_two_equal_one_process(
    lora_ga_tiny: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str, want: str, shard: int
) -> None:
    folder, calib = lora_ga_tiny["llama"], lora_ga_tiny["qa"]
    monkeypatch.setenv(MESH_ENV, want)  # inherited by the forked ranks
    args = (str(folder), str(calib), mode, None, str(tmp_path), False)
    run_distributed(_rank_estimate, tmp_path, *args, world=4, local=2)
    want_g = _single(folder, calib, mode, None)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in range(4)]
    got: dict[str, torch.Tensor] = {}
    for p in parts:
        assert not set(got) & set(p["results"])  # each target on its owner only
        got.update(p["results"])
    assert set(got) == set(want_g) == set(parts[0]["shapes"])
    for name, g in want_g.items():
        scale = g.abs().max()
        assert scale > 0, name
        assert_close(got[name] / scale, g / scale, "distributed", name)
    kind = "hsdp" if shard == 2 else "flat"
    assert all(p["plan"]["mesh"]["kind"] == kind and p["plan"]["mesh"]["shard"] == shard for p in parts)
    assert parts[0]["plan"]["mesh"]["replicate"] == 4 // shard
    # Each rank holds ⌈rows/L⌉ rows of every float32 accumulator: L = 2 under HSDP (not 4), 4 on the flat mesh.
    held = [p["plan"]["accumulator_bytes_per_rank"] for p in parts]
    assert held == [_held(parts[0]["shapes"], mode, shard)] * 4
    assert (held[0] > _held(parts[0]["shapes"], mode, 4)) == (shard == 2)


def _differs_by_node(rank: int, folder: str, calib: str, out: str) -> None:
    if rank >= 2:  # the second node was started with another setting
        os.environ[MESH_ENV] = "world"
    try:
        estimate_gradients(_request(Path(folder), Path(calib), "exact", None))
    except SvdtoolError as exc:
        Path(out, f"rank{rank}.err").write_text(str(exc))
        return
    raise AssertionError("the run succeeded")


@needs_fork
def test_nodes_that_disagree_on_the_mesh_are_refused(lora_ga_tiny: dict, tmp_path: Path) -> None:
    model, calib = str(lora_ga_tiny["llama"]), str(lora_ga_tiny["qa"])
    run_distributed(_differs_by_node, tmp_path, model, calib, str(tmp_path), world=4, local=2)
    for r in range(4):
        assert (tmp_path / f"rank{r}.err").read_text().startswith(f"ranks disagree on the weight mesh ({MESH_ENV}")


def _plan(fits_at_least: int) -> object:
    """A memory plan that fits only when the weights are split over at least ``fits_at_least`` ranks."""

    def plan_for(ranks: int) -> int:
        if ranks < fits_at_least:
            raise SvdtoolError("does not fit")
        return ranks

    return plan_for


@pytest.mark.parametrize(
    ("size", "local", "want", "fits", "mesh"),
    [
        (4, 2, "auto", 1, (2, 2)),  # two nodes of two: HSDP
        (16, 8, "auto", 1, (2, 8)),
        (4, 1, "auto", 1, (4, 1)),  # one rank per node: replicated, when the whole model fits
        (4, 4, "auto", 1, (1, 4)),  # one node
        (4, 2, "world", 1, (1, 4)),  # forced flat
        (6, 4, "auto", 1, (1, 6)),  # not whole nodes
        (32, 8, "auto", 16, (1, 32)),  # 1/8 does not fit, 1/32 does: flat
        (1, 1, "auto", 1, (1, 1)),  # one process
    ],
)
def test_choose(size: int, local: int, want: str, fits: int, mesh: tuple[int, int]) -> None:
    world = World(rank=size - 1, size=size, local_rank=0, local_size=local, joined=size > 1)
    chosen, plan = choose(world, want, _plan(fits))  # type: ignore[arg-type]
    assert (chosen.replicate, chosen.shard) == mesh
    assert plan == mesh[1]  # the plan at the chosen share
    assert chosen.kind == ("hsdp" if mesh[0] > 1 else "flat")


def test_choose_raises_when_nothing_fits() -> None:
    with pytest.raises(SvdtoolError, match="does not fit"):
        choose(World(0, 4, 0, 2, True), "auto", _plan(8))  # type: ignore[arg-type]


def test_mesh_groups() -> None:
    mesh = Mesh(2, 3)
    assert mesh.rows() == [[0, 1, 2], [3, 4, 5]]  # a node's ranks: the shard groups
    assert mesh.columns() == [[0, 3], [1, 4], [2, 5]]  # the same shard on every node: the replicate groups
    assert mesh.coords(4) == (1, 1)


def test_requested(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(MESH_ENV, raising=False)
    assert requested() == "auto"
    monkeypatch.setenv(MESH_ENV, " World ")
    assert requested() == "world"
    monkeypatch.setenv(MESH_ENV, "node")
    with pytest.raises(SvdtoolError, match=f"{MESH_ENV}='node': expected auto or world") as err:
        requested()
    assert err.value.exit_code == 2


@needs_fork
@pytest.mark.slow
def test_two_torchrun_agents_run_hsdp_coverage(lora_ga_tiny: dict, tmp_path: Path) -> None:
    """Two torchrun agents of two workers on 127.0.0.1 (LOCAL_WORLD_SIZE=2 from torchrun itself): coverage on
    the HSDP mesh equals the single-process JSON numbers."""
    from tests.distributed.test_coverage_distributed import same_numbers
    from tests.distributed.test_torchrun_cli import _done, _free_port, _svdtool, _torchrun
    from tests.distributed.test_torchrun_coverage import _numbers

    model, calib = str(lora_ga_tiny["llama"]), str(lora_ga_tiny["qa"])
    args = ("coverage", model, "--calib", calib, "--samples", "7", "--max-length", "24", "--batch-size", "3",
            "--ranks", "2,4", "--device", "cpu", "--format", "json")  # fmt: skip
    rdzv = ("--nnodes", "2", "--nproc-per-node", "2", "--rdzv-backend", "c10d")
    rdzv += ("--rdzv-endpoint", f"127.0.0.1:{_free_port()}", "--rdzv-id", "svdtool-hsdp")
    agents = [_torchrun(*args, "--out", str(tmp_path / f"node{k}"), launcher=rdzv) for k in range(2)]
    results = [_done(a) for a in agents]
    assert [rc for rc, _, _ in results] == [0, 0], [e for _, _, e in results]
    out = next(o for _, o, _ in results if o.strip())  # the agent whose worker got rank 0
    assert json.loads(out)["gradient"]["plan"]["mesh"]["kind"] == "hsdp"
    assert json.loads(out)["gradient"]["plan"]["mesh"]["shard"] == 2
    assert "HSDP: weights sharded within each of 2 nodes of 2 ranks" in "".join(e for _, _, e in results)
    one = _svdtool(*args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    same_numbers(_numbers(out), _numbers(one.stdout))
