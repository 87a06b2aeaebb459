"""``init`` on two gloo ranks writes the single-process folder: the same residual shard files, byte for
byte, and the same adapter; a rank failing mid-write stops every rank and leaves no folder."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from svdtool.commands.init import InitRequest, run_init
from svdtool.engine.world import PeerFailed
from svdtool.errors import SvdtoolError
from tests.distributed.harness import needs_fork, run_distributed

pytestmark = needs_fork

SHARD = 20_000  # bytes: the tiny Llama's residual becomes several shard files, spread over the ranks


def _request(model: str, out: Path, **kw: Any) -> InitRequest:
    return InitRequest(
        model=model, method="pissa", rank=4, out=out, device="cpu", max_shard_bytes=SHARD, command=["svdtool"], **kw
    )


def _init(rank: int, model: str, out: str) -> None:
    res = run_init(_request(model, Path(out) / "dist"))
    Path(out, f"rank{rank}.layers").write_text(json.dumps([x.name for x in res.layers]))


def _digests(folder: Path) -> dict[str, str]:
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*.safetensors")) + [folder / "model.safetensors.index.json"]
    }


def _numbers(folder: Path) -> dict:
    data = json.loads((folder / "svdtool.json").read_text())
    for key in ("device", "timings", "started", "versions"):
        data["manifest"].pop(key)
    data.pop("base_model_name_or_path")
    for layer in data["layers"]:
        layer.pop("seconds")
    return data


def test_two_ranks_write_the_single_process_folder(tiny_checkpoints: dict, tmp_path: Path) -> None:
    model = str(tiny_checkpoints[("llama", True)])
    run_distributed(_init, tmp_path, model, str(tmp_path))
    torch.set_num_threads(1)  # as in each rank: the same BLAS summation order
    run_init(_request(model, tmp_path / "single"))
    dist, single = _digests(tmp_path / "dist"), _digests(tmp_path / "single")
    assert len([k for k in single if k.startswith("model-")]) >= 4  # several files, so both ranks wrote some
    assert dist == single
    assert _numbers(tmp_path / "dist") == _numbers(tmp_path / "single")
    assert (tmp_path / "rank0.layers").read_text() == (tmp_path / "rank1.layers").read_text()
    assert not list(tmp_path.glob(".dist.tmp-*"))


def _fails_mid_write(rank: int, model: str, out: str, bad: str) -> None:
    def gradients(name: str) -> torch.Tensor:
        if name == bad:
            raise OSError(f"cannot read the gradient of {name}")
        return torch.ones(tuple(shapes[name]))

    from svdtool.loading import open_checkpoint

    with open_checkpoint(model) as ckpt:
        shapes = {i.name: i.shape for i in ckpt.tensors()}
    req = _request(model, Path(out) / "never", gradients=gradients)
    req.method, req.svd = "lora-ga", "randomized"
    try:
        run_init(req)
    except (SvdtoolError, OSError) as exc:
        code = exc.exit_code if isinstance(exc, SvdtoolError) else 1
        Path(out, f"rank{rank}.err").write_text(f"{type(exc).__name__}|{code}|{exc}")
        return
    raise AssertionError("the run succeeded")


# Under the plan, the first is in a file of rank 0, the second in a file of rank 1 (after others were written).
@pytest.mark.parametrize(
    ("bad", "owner"), [("model.layers.0.self_attn.q_proj.weight", 0), ("model.layers.1.self_attn.q_proj.weight", 1)]
)
def test_a_rank_failing_mid_write_leaves_no_folder(
    tiny_checkpoints: dict, tmp_path: Path, bad: str, owner: int
) -> None:
    model = str(tiny_checkpoints[("llama", True)])
    run_distributed(_fails_mid_write, tmp_path, model, str(tmp_path), bad)
    errors = {r: (tmp_path / f"rank{r}.err").read_text().split("|") for r in (0, 1)}
    failed = [r for r, (kind, _, _) in errors.items() if kind == "OSError"]
    assert failed == [owner]
    (peer,) = {0, 1} - set(failed)
    kind, code, message = errors[peer]
    assert (kind, code) == (PeerFailed.__name__, "1")
    assert message == f"rank {failed[0]}: OSError: cannot read the gradient of {bad}"
    assert "\n" not in message
    assert not (tmp_path / "never").exists()
    assert not list(tmp_path.glob(".never*"))  # the staging folder is gone too
