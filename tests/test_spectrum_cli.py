"""`svdtool spectrum` end to end on tiny Llama, GPT-2 and BERT checkpoints (single-file and sharded) and GGUF."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg as sl
import torch
from safetensors.torch import load_file

from svdtool.commands.spectrum import load_sigmas
from svdtool.results import load_json
from svdtool.results.spectrum import SpectrumResult
from tests.helpers import assert_close, run_cli


def _reference(folder: Path) -> dict[str, np.ndarray]:
    """float64 scipy singular values of every 2-D tensor in a folder."""
    out = {}
    for f in sorted(folder.glob("*.safetensors")):
        for name, t in load_file(str(f)).items():
            if t.ndim == 2:
                out[name] = sl.svdvals(t.double().numpy())
    return out


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_tiny_checkpoints_match_scipy(
    tiny_checkpoints: dict, tiny_kind: str, sharded: bool, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    folder = tiny_checkpoints[(tiny_kind, sharded)]
    out = tmp_path / "res"
    code, stdout, stderr = run_cli(["spectrum", folder, "--device", "cpu", "--out", out, "--format", "json"], capsys)
    assert code == 0, stderr
    data = json.loads(stdout)
    ref = _reference(folder)
    assert {m["name"] for m in data["matrices"]} == set(ref)
    sig = load_sigmas(out)
    for name, r in ref.items():
        assert_close(sig[name], r, "sigma", name)
    result = load_json(SpectrumResult, out / "spectrum.json")
    assert result.manifest.source_kind == "folder"
    assert result.manifest.dtypes == {"fp32": len(ref)}
    assert sum(f.size for f in result.manifest.files) == sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    pooled = np.concatenate(list(ref.values()))
    assert result.claim.fractions[0].with_embeddings == pytest.approx(
        np.count_nonzero((pooled >= 0.1) & (pooled <= 1.1)) / len(pooled), abs=1e-12
    )
    assert result.claim.counted == [m.name for m in result.matrices]


def test_single_safetensors_file_include_exclude(tiny_llama: Path, capsys: pytest.CaptureFixture) -> None:
    f = tiny_llama / "model.safetensors"
    code, stdout, _ = run_cli(
        ["spectrum", f, "--device", "cpu", "--include", "*self_attn*", "--exclude", "k_proj", "--format", "json"],
        capsys,
    )
    assert code == 0
    data = json.loads(stdout)
    types = {m["module_type"] for m in data["matrices"]}
    assert types == {"q_proj", "v_proj", "o_proj"}
    assert data["manifest"]["source_kind"] == "file"


def test_table_output_has_verdict_and_types(tiny_llama: Path, capsys: pytest.CaptureFixture) -> None:
    code, stdout, stderr = run_cli(["spectrum", tiny_llama, "--device", "cpu", "--ranks", "2,4"], capsys)
    assert code == 0
    assert "verdict:" in stdout and "q_proj" in stdout and "E(4)" in stdout
    assert "verdict" not in stderr  # data on stdout, progress on stderr


def test_no_power_law_leaves_out_only_the_fit(tiny_llama: Path, capsys: pytest.CaptureFixture) -> None:
    args = ["spectrum", tiny_llama, "--device", "cpu", "--format", "json"]
    code, with_fit, _ = run_cli(args, capsys)
    assert code == 0
    code, without, _ = run_cli([*args, "--no-power-law"], capsys)
    assert code == 0
    a, b = json.loads(with_fit)["matrices"], json.loads(without)["matrices"]
    assert all(m["ww"] is not None for m in a) and all(m["ww"] is None for m in b)
    for x, y in zip(a, b, strict=True):
        x.pop("ww"), y.pop("ww"), x.pop("seconds"), y.pop("seconds")
        assert x == y  # σ metrics, MP bulk and SNR unchanged
    code, table, _ = run_cli([*args[:-2], "--no-power-law"], capsys)
    assert code == 0 and "verdict:" in table


def test_bf16_and_fp16_checkpoints(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from tests.conftest import build_tiny_model, save_tiny

    for dtype, label in [(torch.bfloat16, "bf16"), (torch.float16, "fp16")]:
        folder = save_tiny(build_tiny_model("llama"), tmp_path / label, sharded=False, dtype=dtype)
        code, stdout, _ = run_cli(["spectrum", folder, "--device", "cpu", "--format", "json"], capsys)
        assert code == 0
        data = json.loads(stdout)
        assert set(data["manifest"]["dtypes"]) == {label}
        ref = _reference(folder)
        got = {m["name"]: m["sigma_max"] for m in data["matrices"]}
        for name, r in ref.items():
            assert_close(got[name], r[0], "sigma", name)


def test_gguf_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(0)
    q = rng.standard_normal((32, 64)).astype(np.float32)  # (out, in) in PyTorch order
    d = rng.standard_normal((64, 32)).astype(np.float32)
    path = tmp_path / "tiny.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_tensor("blk.0.attn_q.weight", q)
    qd = gguf.quants.quantize(d, gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.ffn_down.weight", qd, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    w.add_tensor("blk.0.attn_norm.weight", np.ones(64, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    code, stdout, stderr = run_cli(["spectrum", path, "--device", "cpu", "--format", "json"], capsys)
    assert code == 0, stderr
    data = json.loads(stdout)
    got = {m["module_type"]: m for m in data["matrices"]}
    assert set(got) == {"q_proj", "down_proj"}
    assert got["down_proj"]["dtype"] == "gguf_q8_0" and got["down_proj"]["shape"] == [64, 32]
    assert_close(got["q_proj"]["sigma_max"], sl.svdvals(q.astype(np.float64))[0], "sigma")
    deq = gguf.quants.dequantize(qd, gguf.GGMLQuantizationType.Q8_0).astype(np.float64)
    assert_close(got["down_proj"]["sigma_max"], sl.svdvals(deq)[0], "sigma")
    assert data["manifest"]["source_kind"] == "gguf"


def test_python_dash_m_and_help_are_fast_and_torch_free() -> None:
    import subprocess
    import sys

    code = "import sys; from svdtool.cli import app; print('torch' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"  # --help never pays for importing torch
    res = subprocess.run([sys.executable, "-m", "svdtool", "spectrum", "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--stream" in res.stdout
