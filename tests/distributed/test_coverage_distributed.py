"""``coverage`` on two gloo ranks: the gradients are estimated with the weights sharded by FSDP2, each one is
formed on the rank that the coverage plan gives it, and the result equals the single-process run to 1e-6."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from svdtool.calibration import CalibRequest
from svdtool.commands.coverage import CoverageRequest, run_coverage, write_coverage
from svdtool.errors import SvdtoolError
from svdtool.gradients import GradientRequest
from svdtool.results.coverage import CoverageResult
from tests.distributed.harness import needs_fork, run_distributed
from tests.helpers import assert_close

pytestmark = needs_fork

#: Manifest fields that say how and when a run happened, not what it computed.
RUN_FIELDS = ("device", "timings", "started", "versions")


def _request(model: str, calib: str, **kw: Any) -> CoverageRequest:
    grad = GradientRequest(model, CalibRequest(calib, samples=7, max_length=24, batch_size=3, seed=1), device="cpu")
    return CoverageRequest(gradient=grad, ranks=[2, 4], command=["svdtool", "coverage"], **kw)


def _coverage(rank: int, model: str, calib: str, out: str) -> None:
    write_coverage(run_coverage(_request(model, calib)), Path(out) / f"rank{rank}")


def _sigmas(folder: Path) -> dict[str, np.ndarray]:
    return load_file(str(folder / CoverageResult.SIDECAR))


def _numbers(folder: Path) -> dict:
    data = json.loads((folder / "coverage.json").read_text())
    for key in RUN_FIELDS:
        data["manifest"].pop(key)
    data.pop("gradient")  # how the estimate ran: seconds, device, plan
    return data


def _floats(value: Any, path: str = "") -> dict[str, Any]:
    """Every leaf of a JSON document by its path (numbers compared with a tolerance, the rest exactly)."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items() for k, v in _floats(item, f"{path}.{key}").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value) for k, v in _floats(item, f"{path}[{i}]").items()}
    return {path: value}


def same_numbers(got: dict[str, Any], want: dict[str, Any]) -> None:
    """The same JSON leaves: floats to float32 accuracy (sums in another order), everything else exactly."""
    assert set(got) == set(want)
    for key, value in want.items():
        if isinstance(value, float):
            assert_close(got[key], value, "fp32", key)
        else:
            assert got[key] == value, key


def test_two_ranks_equal_one_process(lora_ga_tiny: dict, tmp_path: Path) -> None:
    import torch

    model, calib = str(lora_ga_tiny["llama"]), str(lora_ga_tiny["qa"])
    run_distributed(_coverage, tmp_path, model, calib, str(tmp_path))
    torch.set_num_threads(1)
    write_coverage(run_coverage(_request(model, calib)), tmp_path / "single")
    want = _floats(_numbers(tmp_path / "single"))
    sigmas = _sigmas(tmp_path / "single")
    for rank in (0, 1):  # every rank returns the whole run
        same_numbers(_floats(_numbers(tmp_path / f"rank{rank}")), want)
        got_sigmas = _sigmas(tmp_path / f"rank{rank}")
        assert list(got_sigmas) == list(sigmas)
        for name, s in sigmas.items():
            assert_close(got_sigmas[name] / s[0], s / s[0], "distributed", name)
    info = json.loads((tmp_path / "rank0" / "coverage.json").read_text())
    assert info["manifest"]["device"].startswith("2 ranks")
    assert info["gradient"]["plan"]["ranks"] == 2


def _refused(rank: int, model: str, calib: str, out: str) -> None:
    try:
        run_coverage(_request(model, calib, batch_sizes=[3], ref_batch=6))
    except SvdtoolError as exc:
        Path(out, f"rank{rank}.err").write_text(str(exc))
        return
    raise AssertionError("not refused")


def test_batch_sizes_are_refused_in_one_line(lora_ga_tiny: dict, tmp_path: Path) -> None:
    run_distributed(_refused, tmp_path, str(lora_ga_tiny["llama"]), str(lora_ga_tiny["qa"]), str(tmp_path))
    lines = {(tmp_path / f"rank{r}.err").read_text() for r in (0, 1)}
    assert lines == {"--batch-sizes runs in one process (its running means follow the batch order)"}
