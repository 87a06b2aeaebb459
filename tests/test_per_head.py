"""The per-head (Keras) reading of the claim: head counts from a Gemma-2-style config, the number of σ,
a hand-computed split, and the claim row of a real run on a tiny Gemma-2 checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from svdtool import naming
from svdtool.heads import per_head_sigma
from svdtool.spectrum import PER_HEAD
from tests.helpers import assert_close, matrix_with_spectrum

# Gemma-2-style: head_dim is given and is not hidden / heads (as Gemma-2-9B's 256 ≠ 3584/16).
CONFIG = {"hidden_size": 24, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 8}


def test_head_blocks_follow_the_config() -> None:
    assert naming.head_blocks("model.layers.0.self_attn.q_proj.weight", (32, 24), CONFIG) == (4, 8, 0)
    assert naming.head_blocks("model.layers.0.self_attn.k_proj.weight", (16, 24), CONFIG) == (2, 8, 0)
    assert naming.head_blocks("model.layers.0.self_attn.v_proj.weight", (16, 24), CONFIG) == (2, 8, 0)
    assert naming.head_blocks("model.layers.0.self_attn.o_proj.weight", (24, 32), CONFIG) == (4, 8, 1)
    assert naming.head_blocks("model.layers.0.mlp.up_proj.weight", (48, 24), CONFIG) is None
    assert naming.head_blocks("model.layers.0.self_attn.q_proj.weight", (24, 24), CONFIG) is None  # 4·8 ≠ 24
    bert = {"hidden_size": 384, "num_attention_heads": 12}
    assert naming.head_blocks("encoder.layer.0.attention.self.query.weight", (384, 384), bert) == (12, 32, 0)
    assert naming.head_blocks("encoder.layer.0.attention.output.dense.weight", (384, 384), bert) == (12, 32, 1)


def test_hand_computed_split() -> None:
    # Two heads of head_dim 2 over hidden 3: rows [3,0,0],[0,1,0] | [0,0,2],[0,0,0].
    w = torch.tensor([[3.0, 0, 0], [0, 1, 0], [0, 0, 2], [0, 0, 0]])
    assert_close(per_head_sigma(w, 2, 2, 0), [3, 2, 1, 0], "exact64")
    # The same blocks as columns of an o-style (hidden, heads·d) weight.
    assert_close(per_head_sigma(w.T.contiguous(), 2, 2, 1), [3, 2, 1, 0], "exact64")


@pytest.mark.parametrize("axis", [0, 1])
def test_split_matches_numpy_per_block(axis: int) -> None:
    rng = np.random.default_rng(axis)
    w = rng.standard_normal((32, 24) if axis == 0 else (24, 32))
    got = per_head_sigma(torch.from_numpy(w), 4, 8, axis)
    blocks = [w[h * 8 : (h + 1) * 8] if axis == 0 else w[:, h * 8 : (h + 1) * 8] for h in range(4)]
    expected = np.sort(np.concatenate([np.linalg.svd(b, compute_uv=False) for b in blocks]))[::-1]
    assert got.shape == (32,)
    assert_close(got, expected, "sigma")


@pytest.mark.parametrize("axis", [0, 1])
def test_gram_route_and_its_fallback_are_exact(axis: int) -> None:
    # Head 0 has a benign spectrum (Gram eigenvalues are exact enough); head 1 reaches 1e-7·σ₁, where the
    # Gram loses relative accuracy, so that head takes the direct SVD. Both must give the known σ.
    benign = np.linspace(2.0, 0.5, 8)
    steep = np.array([3.0, 1.0, 0.3, 1e-2, 1e-3, 1e-5, 1e-6, 3e-7])
    heads = [matrix_with_spectrum((8, 24), sig, seed) for seed, sig in enumerate((benign, steep))]
    w = np.concatenate(heads, axis=0)  # (16, 24): rows per head, as q/k/v
    got = per_head_sigma(torch.from_numpy(w if axis == 0 else np.ascontiguousarray(w.T)), 2, 8, axis)
    assert_close(got, np.sort(np.concatenate([benign, steep]))[::-1], "sigma")


def test_tiny_gemma2_claim_row(tmp_path: Path) -> None:
    import transformers as tf

    from svdtool.commands.spectrum import SpectrumRequest, run_spectrum

    torch.manual_seed(0)
    config = tf.Gemma2Config(
        vocab_size=64, intermediate_size=40, num_hidden_layers=2, max_position_embeddings=32, **CONFIG
    )
    tf.Gemma2ForCausalLM(config).save_pretrained(str(tmp_path), safe_serialization=True)
    run = run_spectrum(SpectrumRequest(str(tmp_path), device="cpu"))
    rows = {f.normalisation: f for f in run.result.claim.fractions}
    raw, heads = rows["raw"], rows[PER_HEAD]
    # Per layer: q 32 + k 16 + v 16 + o 32 σ per head split (HF: 24 + 16 + 16 + 24), MLP the same either way.
    assert heads.count_with - raw.count_with == 2 * ((32 - 24) + (32 - 24))
    lo, hi = run.result.claim.lo, run.result.claim.hi
    per_head = [
        per_head_sigma(torch.from_numpy(np.asarray(w)), *naming.head_blocks(n, tuple(w.shape), CONFIG))  # type: ignore[misc]
        if naming.head_blocks(n, tuple(w.shape), CONFIG)
        else np.asarray(run.sigmas[n])
        for n, w in _weights(tmp_path).items()
        if n in run.sigmas
    ]
    values = np.concatenate(per_head)
    assert_close(heads.with_embeddings, np.count_nonzero((values >= lo) & (values <= hi)) / values.size, "fraction4")


def _weights(folder: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return {n: w.astype(np.float64) for n, w in load_file(str(folder / "model.safetensors")).items() if w.ndim == 2}
