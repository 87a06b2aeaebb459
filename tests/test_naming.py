"""Checkpoint naming: module types, layer indices, embeddings, Conv1D, selection globs."""

from __future__ import annotations

import pytest

from svdtool import naming

CASES = [
    ("model.layers.0.self_attn.q_proj.weight", "q_proj", 0),
    ("model.layers.12.mlp.down_proj.weight", "down_proj", 12),
    ("model.embed_tokens.weight", "embed", None),
    ("lm_head.weight", "lm_head", None),
    ("transformer.h.3.attn.c_attn.weight", "c_attn", 3),
    ("transformer.h.3.attn.c_proj.weight", "attn.c_proj", 3),
    ("transformer.h.3.mlp.c_proj.weight", "mlp.c_proj", 3),
    ("transformer.wte.weight", "embed", None),
    ("transformer.wpe.weight", "embed_positions", None),
    ("encoder.layer.2.attention.self.query.weight", "query", 2),
    ("encoder.layer.2.attention.output.dense.weight", "attention.output", 2),
    ("encoder.layer.2.intermediate.dense.weight", "intermediate", 2),
    ("encoder.layer.2.output.dense.weight", "output", 2),
    ("embeddings.word_embeddings.weight", "embed", None),
    ("blk.4.attn_q.weight", "q_proj", 4),
    ("blk.4.ffn_down.weight", "down_proj", 4),
    ("token_embd.weight", "embed", None),
    ("output.weight", "lm_head", None),
    ("model.layers.1.mlp.experts.3.w1.weight", "experts.w1", 1),
]


@pytest.mark.parametrize(("name", "mtype", "layer"), CASES)
def test_module_type_and_layer(name: str, mtype: str, layer: int | None) -> None:
    assert naming.module_type(name) == mtype
    assert naming.layer_index(name) == layer


def test_embeddings() -> None:
    assert naming.is_embedding("embed") and naming.is_embedding("lm_head")
    assert not naming.is_embedding("q_proj")


def test_conv1d_only_for_gpt2_style_models() -> None:
    assert naming.is_transposed("gpt2", "transformer.h.0.attn.c_attn.weight")
    assert naming.is_transposed("gpt2", "transformer.h.0.mlp.c_proj.weight")
    assert not naming.is_transposed("gpt2", "transformer.wte.weight")
    assert not naming.is_transposed("llama", "model.layers.0.self_attn.q_proj.weight")


def test_selection_globs_match_names_and_types() -> None:
    name = "model.layers.0.self_attn.q_proj.weight"
    assert naming.selected(name, [], [])
    assert naming.selected(name, ["q_proj"], [])
    assert naming.selected(name, ["*self_attn*"], [])
    assert not naming.selected(name, ["*mlp*"], [])
    assert not naming.selected(name, [], ["q_proj"])
    assert not naming.selected("model.embed_tokens.weight", [], ["embed"])


def test_type_order_follows_the_block_with_embeddings_last() -> None:
    types = ["embed", "down_proj", "zz_custom", "q_proj", "lm_head", "up_proj", "k_proj", "o_proj", "v_proj"]
    assert sorted(types, key=naming.type_sort_key) == [
        "q_proj", "k_proj", "v_proj", "o_proj", "up_proj", "down_proj", "zz_custom", "embed", "lm_head",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("token", "hit"),
    [
        ("q_proj", True),  # module type
        ("self_attn.q_proj", True),  # PEFT's path-suffix rule
        ("*attn*", True),  # glob on the path
        ("layers.0.self_attn.q_proj", True),
        ("v_proj", False),
        ("proj", False),  # not a suffix after a dot, not a type
    ],
)
def test_gradient_targets_follow_the_init_targets_rule(token: str, hit: bool) -> None:
    # coverage/init --method lora-ga select weights with is_adapter_target, init with target_matches:
    # one rule for both, so one --targets value means the same matrices everywhere.
    name = "model.layers.0.self_attn.q_proj.weight"
    assert naming.target_matches(naming.module_path(name), token) is hit
    assert naming.is_adapter_target(name, [token]) is hit
    assert naming.is_adapter_target(name, []) is True
    assert naming.is_adapter_target("model.embed_tokens.weight", []) is False
