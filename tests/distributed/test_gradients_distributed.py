"""The gradient estimate on fork-started gloo ranks, weights sharded by FSDP2: the single-process gradients
(exact and sketch) to 1e-6, with unequal micro-batch counts per rank, accumulators of 4·P/N bytes per rank,
each target on its owner only, and one line (no hang) when a rank fails in the middle of the passes."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from svdtool.calibration import CalibRequest
from svdtool.engine.world import current
from svdtool.errors import SvdtoolError
from svdtool.gradients import GradientRequest, estimate_gradients
from svdtool.gradients.compute import SKETCH_OVERSAMPLE
from svdtool.gradients.shard_load import row_range
from svdtool.linalg.sketch import sketch_sizes
from tests.distributed.harness import needs_fork, run_distributed
from tests.helpers import assert_close

pytestmark = needs_fork

#: 7 samples in logical batches of 3: 3 micro-batches (or 7 at micro-batch 1), an odd number for 2 ranks.
CALIB = {"samples": 7, "max_length": 24, "batch_size": 3, "seed": 1}


def _request(folder: Path, calib: Path, mode: str, micro: int | None) -> GradientRequest:
    return GradientRequest(
        str(folder), CalibRequest(str(calib), **CALIB), device="cpu", mode=mode, micro_batch_size=micro, sketch_rank=4
    )


def _dense(value: Any) -> torch.Tensor:
    """G itself (exact), or U·diag(S)·Vh of its top factors (sketch): free of the factors' sign choices."""
    if isinstance(value, torch.Tensor):
        return value.double()
    return (value.U.double() * value.S.double()) @ value.Vh.double()


def _rank_estimate(rank: int, folder: str, calib: str, mode: str, micro: int | None, out: str, forced: bool) -> None:
    if forced:
        os.environ["SVDTOOL_DISTRIBUTED"] = "on"  # the sharded path at world size 1
    world = current()
    assert world.distributed and world.rank == rank
    est = estimate_gradients(_request(Path(folder), Path(calib), mode, micro))
    torch.save(
        {
            "results": {n: _dense(v) for n, v in est.provider().items()},
            "shapes": est.shapes,
            "plan": est.info.plan,
            "device": est.info.device,
        },
        Path(out) / f"rank{rank}.pt",
    )


def _single(folder: Path, calib: Path, mode: str, micro: int | None) -> dict[str, torch.Tensor]:
    torch.set_num_threads(1)
    est = estimate_gradients(_request(folder, calib, mode, micro))
    return {n: _dense(v) for n, v in est.provider().items()}


@pytest.mark.parametrize(
    ("mode", "micro"), [("exact", None), ("exact", 1), ("sketch", None)], ids=["exact", "exact-micro-1", "sketch"]
)
def test_two_ranks_equal_one_process(lora_ga_tiny: dict, tmp_path: Path, mode: str, micro: int | None) -> None:
    folder, calib = lora_ga_tiny["llama"], lora_ga_tiny["qa"]
    run_distributed(_rank_estimate, tmp_path, str(folder), str(calib), mode, micro, str(tmp_path), False)
    want = _single(folder, calib, mode, micro)
    parts = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    got = {**parts[0]["results"], **parts[1]["results"]}
    assert not set(parts[0]["results"]) & set(parts[1]["results"])  # each target on its owner only
    assert parts[0]["results"] and parts[1]["results"]  # both ranks own some
    assert set(got) == set(want) == set(parts[0]["shapes"])
    for name, g in want.items():
        scale = g.abs().max()
        assert scale > 0, name
        assert_close(got[name] / scale, g / scale, "distributed", name)
    assert parts[0]["device"].startswith("2 ranks, each")
    # Each rank holds ⌈rows/2⌉ rows of every float32 accumulator (exact: G; sketch: Y and W): 4·P/N bytes.
    assert all(p["plan"]["ranks"] == 2 for p in parts)
    assert [p["plan"]["accumulator_bytes_per_rank"] for p in parts] == [_held(parts[0]["shapes"], mode, 2)] * 2
    assert _held(parts[0]["shapes"], mode, 2) <= _held(parts[0]["shapes"], mode, 1) / 2 * 1.01


def _held(shapes: dict[str, tuple[int, int]], mode: str, ranks: int) -> int:
    """Float32 accumulator bytes on one of ``ranks`` ranks."""
    total = 0
    for out, inp in shapes.values():
        if mode == "exact":
            total += 4 * row_range(out, 0, ranks)[1] * inp
        else:
            k, l_ = sketch_sizes(4, out, inp, SKETCH_OVERSAMPLE)
            total += 4 * (row_range(out, 0, ranks)[1] * k + row_range(l_, 0, ranks)[1] * inp)
    return total


def test_one_rank_when_forced_equals_one_process(lora_ga_tiny: dict, tmp_path: Path) -> None:
    """SVDTOOL_DISTRIBUTED=on at WORLD_SIZE=1: the sharded code path, on one rank."""
    folder, calib = lora_ga_tiny["llama"], lora_ga_tiny["qa"]
    run_distributed(_rank_estimate, tmp_path, str(folder), str(calib), "exact", None, str(tmp_path), True, world=1)
    want = _single(folder, calib, "exact", None)
    part = torch.load(tmp_path / "rank0.pt")
    assert part["device"].startswith("1 rank (torch.distributed)")
    assert part["plan"]["accumulator_bytes_per_rank"] == _held(part["shapes"], "exact", 1)
    for name, g in want.items():
        scale = g.abs().max()
        assert_close(part["results"][name] / scale, g / scale, "distributed", name)


def _fails_on_one_rank(rank: int, folder: str, calib: str, where: str, out: str) -> None:
    from svdtool.gradients import sharded

    reduce = None
    if rank == 1 and where == "fold":  # rank 1's second fold raises while rank 0 waits in a reduce-scatter
        calls = []
        fold = sharded.ShardedExactFold.fold

        def failing(self: sharded.ShardedExactFold, x: torch.Tensor, d: torch.Tensor) -> None:
            calls.append(1)
            if len(calls) == 2:
                raise OSError("the device went away")
            fold(self, x, d)

        sharded.ShardedExactFold.fold = failing  # type: ignore[method-assign]
    if where == "reduce":  # rank 1's reduction of its first gradient raises while rank 0 gathers the next

        def reduce(name: str, g: torch.Tensor) -> torch.Tensor:
            if rank == 1:
                raise OSError("the device went away")
            return g

    try:
        with current().phase():  # as the commands run it: a failing rank settles with the others at the end
            estimate_gradients(_request(Path(folder), Path(calib), "exact", 1), reduce=reduce)
    except (OSError, SvdtoolError) as exc:
        code = exc.exit_code if isinstance(exc, SvdtoolError) else 1
        Path(out, f"rank{rank}.err").write_text(f"{type(exc).__name__}|{code}|{exc}")
        return
    raise AssertionError("the run succeeded")


@pytest.mark.parametrize("where", ["fold", "reduce"])
def test_a_rank_failing_mid_pass_stops_every_rank(lora_ga_tiny: dict, tmp_path: Path, where: str) -> None:
    """In the passes or in the gathers after them: the failing rank leaves its message and tears the groups
    down, so the other's collective fails at once and it reports that message."""
    t0 = time.perf_counter()
    model, calib = str(lora_ga_tiny["llama"]), str(lora_ga_tiny["qa"])
    run_distributed(_fails_on_one_rank, tmp_path, model, calib, where, str(tmp_path))
    assert time.perf_counter() - t0 < 30  # the harness's collectives time out after 60 s: no rank waited for one
    assert (tmp_path / "rank1.err").read_text() == "OSError|1|the device went away"
    assert (tmp_path / "rank0.err").read_text() == "PeerFailed|1|rank 1: OSError: the device went away"
