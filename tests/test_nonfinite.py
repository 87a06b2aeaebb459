"""NaN and ±Inf: spectrum skips the matrix, reports its counts and carries on; init, coverage, verify refuse.

The damaged checkpoints are cut from the packaged SmolLM2-135M (its first two blocks, bf16) with 3 NaN and
one −Inf written into one matrix.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from svdtool.errors import SvdtoolError
from svdtool.nonfinite import NonFinite, TimedCheck, first_nonfinite, nonfinite, require_finite
from tests.helpers import run_cli

BROKEN = "model.layers.1.self_attn.q_proj.weight"
COUNTS = "3 NaN, 1 −Inf"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_counts_every_kind(dtype: torch.dtype) -> None:
    t = torch.randn(40, 30).to(dtype)
    assert nonfinite(t) is None
    t[3, 4] = t[5, 6] = float("nan")
    t[0, 0] = float("inf")
    t[7, 1] = t[8, 2] = t[9, 3] = float("-inf")
    assert nonfinite(t) == NonFinite(2, 1, 3)
    assert str(nonfinite(t)) == "2 NaN, 1 +Inf, 3 −Inf"
    assert nonfinite(t.T) == NonFinite(2, 1, 3)  # a strided view is read in place


def test_overflowing_sum_of_finite_values_is_finite() -> None:
    big = torch.full((64, 64), 6e4, dtype=torch.float16)  # the fp16 sum overflows to +Inf; no element does
    assert not torch.isfinite(big.sum())
    assert nonfinite(big) is None
    assert nonfinite(torch.full((4, 4), 3e38)) is None
    assert nonfinite(torch.ones(3, 3, dtype=torch.int64)) is None and nonfinite(torch.empty(0, 5)) is None


def test_first_nonfinite_of_many() -> None:
    good = [(f"w{i}", torch.randn(5, 5)) for i in range(4)]
    assert first_nonfinite(good) is None
    overflow = ("big", torch.full((8, 8), 6e4, dtype=torch.float16))  # a non-finite sum, finite values
    bad = torch.zeros(3, 3, dtype=torch.bfloat16)
    bad[0, 0] = float("-inf")
    assert first_nonfinite([*good[:2], overflow, ("ints", torch.ones(2, dtype=torch.int64)), ("bad", bad)]) == (
        "bad",
        NonFinite(0, 0, 1),
    )


def test_require_and_timed_check() -> None:
    t = torch.zeros(8, 8)
    t[1, 1] = float("nan")
    with pytest.raises(SvdtoolError, match=r"^w has non-finite values \(1 NaN\): the checkpoint is damaged"):
        require_finite(t, "w")
    check = TimedCheck()
    assert check.counts(torch.zeros(3, 3)) is None and check.seconds > 0
    with pytest.raises(SvdtoolError, match="1 NaN"):
        check.require(t, "w")


# ---------------------------------------------------------------- damaged SmolLM2 checkpoints
def _cut_smollm2(src: Path, dst: Path, damage: bool) -> Path:
    """SmolLM2's first two blocks (bf16) with its config and tokenizer; with ``damage``, NaN/−Inf in BROKEN."""
    from safetensors.torch import load_file, save_file

    dst.mkdir()
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copyfile(f, dst / f.name)
    config = json.loads((dst / "config.json").read_text())
    config.update(num_hidden_layers=2, torch_dtype="bfloat16")
    config.pop("dtype", None)
    (dst / "config.json").write_text(json.dumps(config))
    keep = {}
    for name, t in load_file(str(src / "model.safetensors")).items():
        if name.startswith("model.layers.") and int(name.split(".")[2]) >= 2:
            continue
        keep[name] = t.to(torch.bfloat16).contiguous()
    if damage:
        w = keep[BROKEN]
        w[0, :3] = float("nan")
        w[5, 7] = float("-inf")
    save_file(keep, str(dst / "model.safetensors"), metadata={"format": "pt"})
    return dst


@pytest.fixture(scope="module")
def smol(smollm2_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("nonfinite")
    return {
        "clean": _cut_smollm2(smollm2_dir, root / "clean", damage=False),
        "broken": _cut_smollm2(smollm2_dir, root / "broken", damage=True),
    }


def _lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.strip()]


@pytest.mark.real
def test_spectrum_skips_reports_and_continues(smol: dict[str, Path], tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = ["spectrum", smol["broken"], "--include", "model.layers.1.*", "--device", "cpu", "--ranks", "8"]
    extra = ["--format", "json", "--out", tmp_path / "o", "--report", tmp_path / "r.html"]
    code, stdout, stderr = run_cli([*args, *extra], capsys)
    assert code == 0, stderr
    assert "Traceback" not in stderr
    data = json.loads(stdout)
    skipped = [s for s in data["skipped"] if s["name"] == BROKEN]
    assert skipped == [
        {"name": BROKEN, "shape": [576, 576], "reason": f"non-finite values: {COUNTS}", "nan": 3, "pos_inf": 0,
         "neg_inf": 1}
    ]  # fmt: skip
    assert BROKEN not in {m["name"] for m in data["matrices"]} and len(data["matrices"]) == 6
    assert "check" in data["manifest"]["timings"]
    last = _lines(stderr)[-1]
    assert last.startswith("warning: 1 matrices with NaN or ±Inf values were skipped") and COUNTS in last
    assert f"non-finite values: {COUNTS}" in (tmp_path / "r.html").read_text()
    saved = json.loads((tmp_path / "o" / "spectrum.json").read_text())
    assert saved["skipped"][0]["nan"] == 3

    code, stdout, stderr = run_cli(args, capsys)  # the table names it too
    assert code == 0 and f"{BROKEN} (non-finite values: {COUNTS})" in stdout

    code, stdout, stderr = run_cli([*args, "--strict"], capsys)
    lines = _lines(stderr)
    assert code == 1 and lines[-1].startswith("error: 1 matrices with NaN") and "(--strict)" in lines[-1]
    assert "Traceback" not in stderr


@pytest.mark.real
def test_init_refuses(smol: dict[str, Path], tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "init"
    args = ["init", smol["broken"], "--method", "pissa", "-r", "4", "--targets", "q_proj", "--out", out]
    code, stdout, stderr = run_cli([*args, "--device", "cpu"], capsys)
    errors = [x for x in _lines(stderr) if x.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    assert f"{BROKEN} has non-finite values ({COUNTS})" in errors[0]
    assert list(tmp_path.iterdir()) == []  # no OUT, no staging folder


@pytest.mark.real
def test_verify_refuses(smol: dict[str, Path], tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "init"
    code, _, stderr = run_cli(
        ["init", smol["clean"], "--method", "pissa", "-r", "4", "--targets", "q_proj", "--out", out, "--device", "cpu"],
        capsys,
    )
    assert code == 0, stderr
    code, stdout, stderr = run_cli(["verify", out, "--model", smol["broken"], "--no-logits", "--device", "cpu"], capsys)
    errors = [x for x in _lines(stderr) if x.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    assert f"{BROKEN} of the original has non-finite values ({COUNTS})" in errors[0]


@pytest.mark.real
def test_coverage_refuses(smol: dict[str, Path], lora_ga_tiny: dict, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    args = ["coverage", smol["broken"], "--calib", lora_ga_tiny["text"], "--samples", "2", "--max-length", "16",
            "--targets", "q_proj", "--device", "cpu", "--out", tmp_path / "cov"]  # fmt: skip
    code, stdout, stderr = run_cli(args, capsys)
    errors = [x for x in _lines(stderr) if x.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    assert f"{BROKEN} has non-finite values ({COUNTS})" in errors[0]
    assert not (tmp_path / "cov").exists()


@pytest.mark.parametrize(
    ("tensor", "why"),
    [
        ("lm_head.weight", "the loss of calibration batch 1 is nan"),  # the logits overflow: the loss is NaN
        ("model.embed_tokens.weight", "every batch's loss is finite, so the backward pass overflowed"),
    ],
)
def test_calibration_names_batch_and_layer(lora_ga_tiny: dict, tmp_path: Path, capsys, tensor: str, why: str) -> None:  # type: ignore[no-untyped-def]
    """Finite weights whose activations overflow: the line names the layer, and the batch when its loss is NaN."""
    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(lora_ga_tiny["llama"], model)
    state = load_file(str(model / "model.safetensors"))
    state[tensor].fill_(3e38)  # finite (the weight check passes), but products of it are not
    save_file(state, str(model / "model.safetensors"), metadata={"format": "pt"})
    args = ["coverage", model, "--calib", lora_ga_tiny["qa"], "--samples", "4", "--max-length", "24",
            "--ranks", "2", "--device", "cpu"]  # fmt: skip
    code, stdout, stderr = run_cli(args, capsys)
    errors = [x for x in _lines(stderr) if x.startswith("error:")]
    assert code == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    assert errors[0].startswith("error: the gradient of model.layers.") and "NaN" in errors[0]
    assert why in errors[0], errors[0]
