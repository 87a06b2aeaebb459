"""``torchrun --nproc-per-node 2 -m svdtool coverage`` end to end on the tiny Llama: one JSON document on
stdout, written by rank 0, whose numbers equal the single-process run's to float32 accuracy."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.distributed.harness import needs_fork
from tests.distributed.test_coverage_distributed import RUN_FIELDS, _floats, same_numbers
from tests.distributed.test_torchrun_cli import _done, _env, _svdtool

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
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "svdtool"]
    two = subprocess.Popen([*cmd, *args, "--out", str(tmp_path / "two")], env=_env(), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    rc, out, err = _done(two)
    assert rc == 0, err
    one = _svdtool(*args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    same_numbers(_numbers(out), _numbers(one.stdout))
    assert err.count("wrote ") == 2  # rank 0 alone writes coverage.json and the σ sidecar, and names them
    assert json.loads(out)["manifest"]["device"].startswith("2 ranks")
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == ["coverage.json", "coverage.safetensors"]
