"""The model-class layout built in a child process while ``svdtool init`` works from the tensor names' guess.

The child is a real ``python -m svdtool.adapters.layout_process``; outputs are compared byte for byte with a
run that builds the layout in-process (``SVDTOOL_LAYOUT_PROCESS=0``).
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from safetensors.torch import load_file, save_file

from svdtool.adapters import layout_process
from svdtool.adapters.layout import resolve_layout
from svdtool.commands import init as init_cmd
from svdtool.commands.init import run_init
from svdtool.commands.init_request import InitRequest
from svdtool.loading import open_checkpoint


def _outputs(folder: Path) -> dict[str, Any]:
    """Every tensor written (residual and adapter) and the adapter config without the base path."""
    tensors = {
        f"{p.relative_to(folder)}:{k}": v for p in folder.rglob("*.safetensors") for k, v in load_file(p).items()
    }
    cfg = json.loads(next(folder.glob("*_init/adapter_config.json")).read_text())
    cfg.pop("base_model_name_or_path")
    return {"tensors": tensors, "config": cfg}


def _run(src: Path, out: Path, mode: str, monkeypatch: pytest.MonkeyPatch, method: str = "pissa") -> Any:
    monkeypatch.setenv("SVDTOOL_LAYOUT_PROCESS", mode)
    return run_init(InitRequest(model=str(src), method=method, rank=4, alpha=8, out=out, device="cpu"))


def _spy_children(monkeypatch: pytest.MonkeyPatch) -> list[list[str]]:
    started: list[list[str]] = []
    real = subprocess.Popen

    def popen(args: Any, **kwargs: Any) -> Any:
        if isinstance(args, list) and "svdtool.adapters.layout_process" in args:
            started.append(list(args))
        return real(args, **kwargs)

    monkeypatch.setattr(layout_process.subprocess, "Popen", popen)
    return started


def _assert_same(a: Path, b: Path) -> None:
    oa, ob = _outputs(a), _outputs(b)
    assert oa["config"] == ob["config"] and oa["tensors"].keys() == ob["tensors"].keys()
    for k, v in oa["tensors"].items():
        assert v.dtype == ob["tensors"][k].dtype and bool((v == ob["tensors"][k]).all()), k


@pytest.mark.parametrize("method", ["pissa", "olora"])
def test_child_layout_gives_the_same_folder(
    tiny_checkpoints: dict[tuple[str, bool], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, method: str
) -> None:
    """GPT-2 (not a plain decoder: its layout needs the model class) with transformers' own tensor names."""
    src = tiny_checkpoints[("gpt2", False)]
    started = _spy_children(monkeypatch)
    res = _run(src, tmp_path / "child", "1", monkeypatch, method)
    assert len(started) == 1 and started[0][1:3] == ["-m", "svdtool.adapters.layout_process"]
    _run(src, tmp_path / "here", "0", monkeypatch, method)
    assert len(started) == 1  # 0: never
    _assert_same(tmp_path / "child", tmp_path / "here")
    assert res.model_class == "GPT2LMHeadModel" and res.manifest.timings["layout_child"] == 1


def _hub_style_gpt2(src: Path, dst: Path) -> Path:
    """The Hub's ``gpt2`` layout: tensor names without the ``transformer.`` prefix of the model class's modules."""
    dst.mkdir()
    for f in src.iterdir():
        if f.suffix == ".safetensors":
            state = {k.removeprefix("transformer."): v.contiguous() for k, v in load_file(f).items()}
            save_file(state, dst / f.name, metadata={"format": "pt"})
        elif not f.name.endswith(".index.json"):
            (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_a_wrong_guess_starts_over_with_the_model_class_layout(
    tiny_checkpoints: dict[tuple[str, bool], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GPT-2 named as on the Hub: the names' guess keys modules h.0.attn.c_attn, the model class
    transformer.h.0.attn.c_attn. The run starts over and writes what the in-process run writes."""
    src = _hub_style_gpt2(tiny_checkpoints[("gpt2", False)], tmp_path / "gpt2-hub")
    with open_checkpoint(str(src)) as ckpt:
        real, guessed = (
            resolve_layout(ckpt.meta.config, ckpt.tensors()),
            layout_process.guess(ckpt.meta.config, ckpt.tensors()),
        )
    assert {w.module for w in real.weights.values()} != {w.module for w in guessed.weights.values()}
    attempts: list[Any] = []
    inner = init_cmd._run_init

    def counted(*args: Any) -> Any:
        attempts.append(args[-1])
        return inner(*args)

    monkeypatch.setattr(init_cmd, "_run_init", counted)
    _run(src, tmp_path / "child", "1", monkeypatch)
    assert attempts[0] is None and attempts[1] is not None and len(attempts) == 2
    assert not list(tmp_path.glob(".child.tmp-*"))  # the first attempt's staging folder is gone
    _run(src, tmp_path / "here", "0", monkeypatch)
    _assert_same(tmp_path / "child", tmp_path / "here")


def test_a_failing_child_costs_only_the_in_process_build(
    tiny_checkpoints: dict[tuple[str, bool], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tiny_checkpoints[("gpt2", False)]
    monkeypatch.setattr(layout_process.sys, "executable", str(tmp_path / "no-such-python"))
    _run(src, tmp_path / "a", "1", monkeypatch)
    monkeypatch.undo()
    _run(src, tmp_path / "b", "0", monkeypatch)
    _assert_same(tmp_path / "a", tmp_path / "b")


def test_auto_starts_a_child_only_where_it_pays(monkeypatch: pytest.MonkeyPatch) -> None:
    big, small = layout_process.MIN_BYTES, 64
    cfg = {"model_type": "bert", "architectures": ["BertModel"]}
    monkeypatch.setenv("SVDTOOL_LAYOUT_PROCESS", "auto")
    monkeypatch.setattr(layout_process.os, "cpu_count", lambda: 16)
    import transformers.modeling_utils  # noqa: F401  (imported: building in-process is cheap)

    assert not layout_process.child_wanted(cfg, big)
    monkeypatch.delitem(layout_process.sys.modules, "transformers.modeling_utils")
    assert layout_process.child_wanted(cfg, big) and not layout_process.child_wanted(cfg, small)
    assert not layout_process.child_wanted({}, big)
    plain = {"model_type": "llama", "architectures": ["LlamaForCausalLM"]}  # the names give its layout
    assert not layout_process.child_wanted(plain, big)
    monkeypatch.setattr(layout_process.os, "cpu_count", lambda: 2)
    assert not layout_process.child_wanted(cfg, big)
    monkeypatch.setenv("SVDTOOL_LAYOUT_PROCESS", "1")
    assert layout_process.child_wanted(cfg, small)
    monkeypatch.setenv("SVDTOOL_LAYOUT_PROCESS", "0")
    assert not layout_process.child_wanted(cfg, big)


def test_the_cli_prefetches_the_layout_and_run_init_adopts_it(
    tiny_checkpoints: dict[tuple[str, bool], Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``svdtool init`` starts the child for a local folder before importing torch; the run uses that child."""
    from tests.helpers import run_cli

    started = _spy_children(monkeypatch)
    monkeypatch.setenv("SVDTOOL_LAYOUT_PROCESS", "1")
    src = tiny_checkpoints[("gpt2", False)]
    args = ["init", src, "--method", "olora", "-r", "4", "--alpha", "8", "--out", tmp_path / "cli"]
    code, out, _ = run_cli([*args, "--device", "cpu", "--format", "json"], capsys)
    assert code == 0 and json.loads(out)["manifest"]["timings"]["layout_child"] == 1
    assert len(started) == 1 and started[0][-2] == "--folder"
    assert not layout_process._PREFETCHED
    _run(src, tmp_path / "here", "0", monkeypatch, "olora")
    _assert_same(tmp_path / "cli", tmp_path / "here")


def test_a_prefetched_child_that_is_not_used_is_stopped(tiny_llama: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SVDTOOL_LAYOUT_PROCESS", "1")
    layout_process.prefetch(str(tiny_llama))
    (bg,) = layout_process._PREFETCHED.values()
    layout_process.discard(str(tiny_llama))
    assert not layout_process._PREFETCHED and bg.proc is not None and bg.proc.poll() is not None


def test_a_plain_decoder_starts_no_child(tiny_llama: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its names give the layout: no child even when forced, and the folder equals the in-process build's."""
    started = _spy_children(monkeypatch)
    res = _run(tiny_llama, tmp_path / "plain", "1", monkeypatch)
    assert not started and res.manifest.timings["layout_child"] == 0 and res.model_class == "LlamaForCausalLM"
