"""Spectrum SNR against the Spectrum tool's formula on float64 numpy σ (packaged SmolLM2), the Axolotl files'
schema, the MP-correct variant, and ``init --targets snr:P``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

from svdtool import naming
from svdtool.snr import snr_mp, spectrum_snr, top_by_type
from tests.helpers import assert_close, run_cli


def spectrum_reference(weights: np.ndarray) -> float:
    """Spectrum's calculate_snr_for_layer, step for step, on float64 numpy σ."""
    s = torch.from_numpy(np.linalg.svd(weights.astype(np.float64), compute_uv=False))
    sigma = (torch.quantile(s, 0.75) - torch.quantile(s, 0.25)) / 1.349
    n, m = weights.shape
    beta = n / m if n < m else m / n
    threshold = sigma * np.sqrt((1 + np.sqrt(beta)) ** 2)
    signal_mask = s > threshold
    signal = s[signal_mask].sum() if signal_mask.any() else torch.tensor(0.0, dtype=s.dtype)
    noise = s[~signal_mask].sum() if (~signal_mask).any() else torch.tensor(1.0, dtype=s.dtype)
    snr = signal / noise if noise != 0 else float("inf")
    return float(snr / s[0])


def spectrum_yaml(snr_data: dict[str, Any], top_percent: int) -> str:
    """Spectrum's generate_unfrozen_params_yaml, as text."""
    by_type: dict[str, list[tuple[str, float]]] = {}
    for name, info in snr_data.items():
        by_type.setdefault(info["type"], []).append((name, info["snr"]))
    text = "unfrozen_parameters:\n- ^lm_head.weight$\n- ^model.embed_tokens.weight$\n"
    for kind, layers in by_type.items():
        top = sorted(layers, key=lambda x: x[1], reverse=True)[: int(len(layers) * top_percent / 100)]
        text += f"# {kind} layers\n" + "".join(f"- {name}\n" for name, _ in top)
    return text


@pytest.mark.real
def test_smollm2_snr_and_axolotl_files(smollm2_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "model_snr_results"
    code, stdout, stderr = run_cli(
        ["spectrum", smollm2_dir, "--device", "cpu", "--top-percent", "25", "--out", out, "--format", "json"], capsys
    )
    assert code == 0, stderr
    result = json.loads(stdout)
    weights = load_file(str(smollm2_dir / "model.safetensors"))
    slug = str(smollm2_dir).replace("/", "-").replace("_", "-")
    data = json.loads((out / f"snr_results_{slug}.json").read_text())
    matrices = {m["name"]: m for m in result["matrices"]}
    for name, w in weights.items():
        module = name.removesuffix(".weight")
        if w.ndim == 1:
            assert data[module]["snr"] == math.inf  # norms: Infinity, as in Spectrum's files
        else:
            assert data[module]["snr"] == matrices[name]["snr"]
            # The float64 numpy reference on every matrix type, in the first and last block (CI time).
            if naming.layer_index(name) in (0, 29):
                assert_close(data[module]["snr"], spectrum_reference(w), "snr", name)
        assert data[module]["type"] == naming.spectrum_type(module)
    assert len(data) == len(weights)
    assert data["model.layers.3.self_attn.q_proj"]["type"] == "self_attn.q_proj"
    assert data["model.embed_tokens"]["type"] == "model.embed_tokens"
    raw = (out / f"snr_results_{slug}.json").read_text()
    assert '"snr": Infinity' in raw
    yaml = (out / f"snr_results_{slug}_unfrozenparameters_25percent.yaml").read_text()
    assert yaml == spectrum_yaml(data, 25)
    assert "# self_attn.q_proj layers\n" in yaml and yaml.count("self_attn.q_proj\n") == 30 * 25 // 100


def test_slug_and_types() -> None:
    assert naming.spectrum_slug("HuggingFaceTB/SmolLM2_135M") == "HuggingFaceTB-SmolLM2-135M"
    assert naming.spectrum_type("model.layers.12.mlp.down_proj") == "mlp.down_proj"
    assert naming.spectrum_type("lm_head") == "lm_head"
    assert naming.spectrum_type("transformer.h.0.attn.c_attn") == "attn.c_attn"


def test_snr_edge_cases_follow_spectrum() -> None:
    # Every σ above τ: Spectrum's noise of 1.
    sigma = np.array([10.0, 9.9, 9.8, 9.7])
    assert_close(spectrum_snr(sigma, (4, 4)), sigma.sum() / 1.0 / 10.0, "metric")
    assert math.isnan(spectrum_snr(np.zeros(3), (3, 3)))


def test_snr_mp_counts_above_the_edge() -> None:
    sigma = np.array([5.0, 4.0, 1.0, 0.5])
    assert_close(snr_mp(sigma, 2.0), 9.0 / 1.5, "metric")
    assert snr_mp(sigma, 0.1) == math.inf


def test_top_by_type_is_spectrum_rule() -> None:
    rows = [("a.0.q", "q", 1.0), ("a.1.q", "q", 3.0), ("a.2.q", "q", 3.0), ("a.0.v", "v", 0.5)]
    assert top_by_type(rows, 50) == {"q": ["a.1.q"], "v": []}  # int(3 · 0.5) = 1; ties keep file order
    assert top_by_type(rows, 100) == {"q": ["a.1.q", "a.2.q", "a.0.q"], "v": ["a.0.v"]}


def test_top_percent_needs_out(tiny_llama: Path, capsys: pytest.CaptureFixture) -> None:
    code, _, err = run_cli(["spectrum", tiny_llama, "--top-percent", "50"], capsys)
    assert code == 2 and "--out" in err and "Traceback" not in err


def test_init_targets_snr(tiny_llama: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "init"
    args = ["init", tiny_llama, "--method", "pissa", "-r", "2", "--targets", "snr:50", "--device", "cpu"]
    code, stdout, err = run_cli([*args, "--out", out, "--format", "json"], capsys)
    assert code == 0, err
    chosen = {x["module"] for x in json.loads(stdout)["layers"]}
    weights = load_file(str(tiny_llama / "model.safetensors"))
    scores = [
        (naming.module_path(n), naming.spectrum_type(naming.module_path(n)), spectrum_reference(w))
        for n, w in weights.items()
        if w.ndim == 2 and naming.is_adapter_target(n, [])
    ]
    expected = {m for mods in top_by_type(scores, 50).values() for m in mods}
    assert chosen == expected and len(chosen) == 7  # 2 layers × 7 types, the better half of each
    code, _, err = run_cli([*args[:-4], "--targets", "snr:0", "--out", tmp_path / "bad"], capsys)
    assert code == 2 and "snr:0" in err
    code, _, err = run_cli([*args[:-4], "--targets", "snr:50,q_proj", "--out", tmp_path / "bad"], capsys)
    assert code == 2 and "combined" in err
