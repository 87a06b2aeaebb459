"""The real packaged checkpoints: SmolLM2-135M (from GGUF) and all-MiniLM-L6-v2 (BERT, fp32 safetensors).

The claim fractions are cross-checked against an independent float64 computation (scipy svdvals on
every 2-D tensor, pooled), to 4 decimals, both in the JSON and in the printed table.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg as sl
from safetensors.numpy import load_file

from svdtool import naming
from tests.helpers import assert_close, run_cli

pytestmark = pytest.mark.real


def _independent(folder: Path) -> tuple[dict[str, np.ndarray], dict[str, float]]:
    sig = {}
    for f in sorted(folder.glob("*.safetensors")):
        for name, a in load_file(str(f)).items():
            if a.ndim == 2 and a.dtype.kind == "f":  # position_ids (int64) is not a weight
                sig[name] = sl.svdvals(a.astype(np.float64))

    def frac(names: list[str], norm: str) -> float:
        hits = total = 0
        for n in names:
            s = sig[n]
            v = s if norm == "raw" else s / s[0] if norm == "sigma/sigma1" else s / np.sqrt(max(load_shape[n]))
            hits += np.count_nonzero((v >= 0.1) & (v <= 1.1))
            total += len(v)
        return hits / total

    load_shape = {}
    for f in sorted(folder.glob("*.safetensors")):
        for name, a in load_file(str(f)).items():
            if a.ndim == 2 and a.dtype.kind == "f":
                load_shape[name] = a.shape
    all_names = list(sig)
    no_emb = [n for n in all_names if not naming.is_embedding(naming.module_type(n))]
    fr = {}
    for norm in ("raw", "sigma/sigma1", "sigma/sqrt(max(n,m))"):
        fr[f"{norm}|with"] = frac(all_names, norm)
        fr[f"{norm}|without"] = frac(no_emb, norm)
    # The per-head (Keras) reading: scipy σ of each head's block of q/k/v (rows) and o (columns).
    config = json.loads((folder / "config.json").read_text())
    heads_sig = dict(sig)
    for f in sorted(folder.glob("*.safetensors")):
        for name, a in load_file(str(f)).items():
            split = naming.head_blocks(name, a.shape, config) if name in sig else None
            if split is not None:
                h, d, axis = split
                blocks = [a[i * d : (i + 1) * d] if axis == 0 else a[:, i * d : (i + 1) * d] for i in range(h)]
                heads_sig[name] = np.concatenate([sl.svdvals(b.astype(np.float64)) for b in blocks])
    for key, names in (("with", all_names), ("without", no_emb)):
        values = np.concatenate([heads_sig[n] for n in names])
        fr[f"per-head (Keras)|{key}"] = np.count_nonzero((values >= 0.1) & (values <= 1.1)) / values.size
    return sig, fr


@pytest.mark.parametrize("which", ["smollm2", "minilm"])
def test_claim_fractions_match_independent_float64(
    which: str, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture, tmp_path: Path
) -> None:
    folder: Path = request.getfixturevalue(f"{which}_dir")
    sig, expected = _independent(folder)
    # One run: the table on stdout, the JSON in --out.
    code, table, stderr = run_cli(["spectrum", folder, "--device", "cpu", "--out", tmp_path], capsys)
    assert code == 0, stderr
    data = json.loads((tmp_path / "spectrum.json").read_text())
    assert len(data["matrices"]) == len(sig)
    for f in data["claim"]["fractions"]:
        assert_close(f["with_embeddings"], expected[f"{f['normalisation']}|with"], "fraction4", f["normalisation"])
        assert_close(f["without_embeddings"], expected[f"{f['normalisation']}|without"], "fraction4")
    for m in data["matrices"]:
        s = sig[m["name"]]
        assert_close(m["sigma_max"], s[0], "sigma", m["name"])
        assert m["count"] == len(s)
    # The printed table shows the same numbers to 4 decimals.
    raw_with = f"{expected['raw|with']:.4f}"
    raw_without = f"{expected['raw|without']:.4f}"
    assert raw_with in table and raw_without in table
    assert "verdict:" in table


def test_smollm2_shapes_and_types(smollm2_dir: Path, capsys: pytest.CaptureFixture) -> None:
    code, stdout, _ = run_cli(
        [
            "spectrum",
            smollm2_dir,
            "--device",
            "cpu",
            "--format",
            "json",
            "--include",
            "*layers.0.*",
            "--include",
            "embed",
        ],
        capsys,
    )
    assert code == 0
    data = json.loads(stdout)
    shapes = {m["module_type"]: m["shape"] for m in data["matrices"]}
    assert shapes == {
        "embed": [49152, 576],
        "q_proj": [576, 576],
        "k_proj": [192, 576],
        "v_proj": [192, 576],
        "o_proj": [576, 576],
        "gate_proj": [1536, 576],
        "up_proj": [1536, 576],
        "down_proj": [576, 1536],
    }
