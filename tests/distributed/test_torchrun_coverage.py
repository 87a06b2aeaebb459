"""``torchrun --nproc-per-node 2 -m svdtool coverage`` end to end on the tiny Llama: one JSON document on
stdout, written by rank 0, whose numbers equal the single-process run's to float32 accuracy; and (slow) the
packaged SmolLM2's coverage and LoRA-GA init under torchrun equal the single-process ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.distributed.harness import needs_fork
from tests.distributed.test_coverage_distributed import RUN_FIELDS, _floats, same_numbers
from tests.distributed.test_lora_ga_distributed import _tensors
from tests.distributed.test_torchrun_cli import _done, _svdtool, _torchrun
from tests.helpers import assert_close

pytestmark = [needs_fork]


def _numbers(stdout: str) -> dict:
    data = json.loads(stdout)  # exactly one JSON document on stdout
    for key in (*RUN_FIELDS, "command"):
        data["manifest"].pop(key)
    data.pop("gradient")
    return _floats(data)


def test_coverage_under_torchrun_equals_one_process(lora_ga_tiny: dict, tmp_path: Path) -> None:
    model, calib = str(lora_ga_tiny["llama"]), str(lora_ga_tiny["qa"])
    args = ("coverage", model, "--calib", calib, "--samples", "7", "--max-length", "24", "--batch-size", "3",
            "--ranks", "2,4", "--device", "cpu", "--format", "json")  # fmt: skip
    rc, out, err = _done(_torchrun(*args, "--out", str(tmp_path / "two")))
    assert rc == 0, err
    one = _svdtool(*args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    same_numbers(_numbers(out), _numbers(one.stdout))
    assert err.count("wrote ") == 2  # rank 0 alone writes coverage.json and the σ sidecar, and names them
    assert json.loads(out)["manifest"]["device"].startswith("2 ranks")
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["coverage.json", "coverage.safetensors"]


@pytest.mark.slow
@pytest.mark.real
def test_smollm2_coverage_and_lora_ga_under_torchrun(smollm2_dir: Path, tmp_path: Path) -> None:
    """The packaged SmolLM2 (tied embeddings, RoPE buffers rebuilt) on two ranks: the single-process coverage
    numbers, and the single-process LoRA-GA folder (its tensors were bit-identical on the CPU)."""
    from tests.lora_ga_support import smollm2_calibration

    calib = str(smollm2_calibration(tmp_path / "docs.jsonl"))
    data = ("--calib", calib, "--samples", "5", "--max-length", "64", "--batch-size", "2", "--device", "cpu")
    cov = ("coverage", str(smollm2_dir), *data, "--targets", "q_proj,v_proj,down_proj", "--format", "json")
    rc, out, err = _done(_torchrun(*cov))
    assert rc == 0, err
    one = _svdtool(*cov)
    assert one.returncode == 0, one.stderr
    same_numbers(_numbers(out), _numbers(one.stdout))

    init = ("init", str(smollm2_dir), "--method", "lora-ga", "-r", "4", *data, "--targets", "*layers.[01].*_proj")
    rc, out, err = _done(_torchrun(*init, "--out", str(tmp_path / "two")))
    assert rc == 0, err
    one = _svdtool(*init, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two, single = _tensors(tmp_path / "two"), _tensors(tmp_path / "one")
    assert set(two) == set(single)
    for key, want in single.items():
        assert_close(two[key].double(), want.double(), "fp32", key)
