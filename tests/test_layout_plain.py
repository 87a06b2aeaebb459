"""Plain decoder checkpoints take their layout from the tensor names (no transformers import): for every family in
``naming.PLAIN_DECODERS`` the result must equal what the transformers model class gives, tied and untied."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from svdtool import naming
from svdtool.adapters import layout as lay
from svdtool.loading import TensorInfo, open_checkpoint


def _save_tiny(model_type: str, tied: bool, path: Path) -> Path:
    import transformers as tf

    try:
        cfg = tf.AutoConfig.for_model(
            model_type, vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64,
            tie_word_embeddings=tied,
        )  # fmt: skip
    except (KeyError, ValueError) as exc:  # a transformers without this family
        pytest.skip(f"transformers cannot build {model_type}: {exc}")
    torch.manual_seed(0)
    tf.AutoModelForCausalLM.from_config(cfg).save_pretrained(str(path))
    return path


def _layouts(folder: Path) -> tuple[lay.ModelLayout | None, lay.ModelLayout, list[TensorInfo]]:
    with open_checkpoint(str(folder)) as ckpt:
        config, infos = ckpt.meta.config, ckpt.tensors()
    return lay.plain_decoder_layout(config, infos), lay._from_transformers(config, infos), infos


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
@pytest.mark.parametrize("model_type", sorted(naming.PLAIN_DECODERS))
def test_plain_decoder_layout_equals_the_model_class(model_type: str, tied: bool, tmp_path: Path) -> None:
    plain, real, infos = _layouts(_save_tiny(model_type, tied, tmp_path / model_type))
    assert plain is not None
    # class_name only names the module in messages (Gemma's embedding is a subclass of nn.Embedding)
    kinds = lambda ly: {k: (w.tensor, w.module, w.kind) for k, w in ly.weights.items()}  # noqa: E731
    assert kinds(plain) == kinds(real)
    assert (plain.model_class, plain.task_type) == (real.model_class, real.task_type)
    assert (plain.output_module, plain.tied_output) == (real.output_module, real.tied_output)
    # What PEFT's target_modules become: for all-linear, each module type, and one block's modules.
    linear = [w.module for w in real.weights.values() if w.kind == lay.LINEAR and w.module != real.output_module]
    chosen_sets = [linear, *([m for m in linear if m.endswith("." + t)] for t in ("q_proj", "down_proj"))]
    chosen_sets.append([m for m in linear if ".layers.1." in m])
    for chosen in chosen_sets:
        assert naming.peft_target_modules(chosen, plain.all_modules) == naming.peft_target_modules(
            chosen, real.all_modules
        )
    assert lay.resolve_layout(json.loads((tmp_path / model_type / "config.json").read_text()), infos) == plain


def test_anything_else_goes_to_the_model_class(tmp_path: Path) -> None:
    """A projector, a fused or quantised weight, a base model class or another family: no names-only layout."""
    folder = _save_tiny("llama", False, tmp_path / "llama")
    with open_checkpoint(str(folder)) as ckpt:
        config, infos = ckpt.meta.config, ckpt.tensors()
    assert lay.plain_decoder_layout(config, infos) is not None
    extra = [
        TensorInfo("model.mm_projector.weight", (32, 32), "F32", "x", 0),
        TensorInfo("model.layers.0.mlp.gate_up_proj.weight", (96, 32), "F32", "x", 0),
        TensorInfo("model.layers.0.self_attn.q_proj.qweight", (4, 32), "I32", "x", 0),
        TensorInfo("layers.0.self_attn.q_proj.weight", (32, 32), "F32", "x", 0),
    ]
    for info in extra:
        assert lay.plain_decoder_layout(config, [*infos, info]) is None, info.name
    assert lay.plain_decoder_layout({**config, "architectures": ["LlamaModel"]}, infos) is None
    assert lay.plain_decoder_layout({**config, "model_type": "gpt2"}, infos) is None
    assert lay.plain_decoder_layout({**config, "architectures": []}, infos) is None
