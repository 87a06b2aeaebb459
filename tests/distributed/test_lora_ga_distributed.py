"""``init --method lora-ga`` on two gloo ranks: each target's gradient is formed on the rank that writes its
residual shard file, and the folder equals the single-process one (the gradients differ only by the order
of float32 sums, so the tensors agree to float32 SVD accuracy, not bit for bit)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from svdtool.calibration import CalibRequest
from svdtool.commands.init import InitRequest, run_init
from svdtool.errors import SvdtoolError
from svdtool.gradients import GradientRequest
from tests.distributed.harness import needs_fork, run_distributed
from tests.helpers import assert_close

pytestmark = needs_fork

SHARD = 20_000  # bytes: the tiny Llama's residual becomes several shard files, spread over the ranks


def _request(model: str, calib: str, out: Path, mode: str = "exact", **kw: object) -> InitRequest:
    calib_req = CalibRequest(calib, samples=7, max_length=24, batch_size=3, seed=1)
    grad = GradientRequest(model, calib_req, device="cpu", mode=mode)
    return InitRequest(
        model=model,
        method="lora-ga",
        rank=2,
        svd="randomized",  # the CLI's default: seeded, q = 4r, so only the same r gives the same sketch
        out=out,
        device="cpu",
        max_shard_bytes=SHARD,
        gradient_request=grad,
        command=["svdtool"],
        **kw,  # type: ignore[arg-type]
    )


def _init(rank: int, model: str, calib: str, out: str, mode: str) -> None:
    run_init(_request(model, calib, Path(out) / "dist", mode))


def _tensors(folder: Path) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(folder.rglob("*.safetensors")):
        out.update({f"{f.relative_to(folder).as_posix()}:{k}": v for k, v in load_file(str(f)).items()})
    return out


@pytest.mark.parametrize("mode", ["exact", "sketch"])
def test_two_ranks_write_the_single_process_adapter(lora_ga_tiny: dict, tmp_path: Path, mode: str) -> None:
    model, calib = str(lora_ga_tiny["llama"]), str(lora_ga_tiny["qa"])
    run_distributed(_init, tmp_path, model, calib, str(tmp_path), mode)
    torch.set_num_threads(1)
    run_init(_request(model, calib, tmp_path / "single", mode))
    dist, single = _tensors(tmp_path / "dist"), _tensors(tmp_path / "single")
    assert len({k.split(":")[0] for k in single if k.startswith("model-")}) >= 4  # both ranks wrote files
    assert set(dist) == set(single)
    adapter = [k for k in single if k.startswith("lora_ga_init/")]
    assert adapter
    for key, want in single.items():
        assert_close(dist[key].double(), want.double(), "fp32", key)
    info = json.loads((tmp_path / "dist" / "svdtool.json").read_text())
    assert info["manifest"]["device"].startswith("2 ranks") and info["settings"]["extra"]["gradient"] == mode
    assert info["settings"]["extra"]["gradient_mesh"] == "flat 1x2"  # one node: the flat mesh
    assert "gradient_mesh" not in json.loads((tmp_path / "single" / "svdtool.json").read_text())["settings"]["extra"]
    assert (tmp_path / "dist" / "model.safetensors.index.json").read_text() == (
        tmp_path / "single" / "model.safetensors.index.json"
    ).read_text()


def _refused(rank: int, model: str, calib: str, out: str) -> None:
    try:
        run_init(_request(model, calib, Path(out) / "never", rank_alloc="coverage"))
    except SvdtoolError as exc:
        Path(out, f"rank{rank}.err").write_text(str(exc))
        return
    raise AssertionError("not refused")


def test_gradient_rank_allocation_is_refused_on_every_rank(lora_ga_tiny: dict, tmp_path: Path) -> None:
    model, calib = str(lora_ga_tiny["llama"]), str(lora_ga_tiny["qa"])
    run_distributed(_refused, tmp_path, model, calib, str(tmp_path))
    lines = {(tmp_path / f"rank{r}.err").read_text() for r in (0, 1)}
    assert lines == {
        "--rank-alloc coverage with estimated gradients runs in one process: under torchrun each rank holds only "
        "the gradients of the files it writes"
    }
    assert not (tmp_path / "never").exists()
