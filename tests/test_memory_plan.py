"""The layer-group and micro-batch planner on synthetic memory budgets (no GPU needed), and the CPU dtype rule."""

from __future__ import annotations

import pytest
import torch

from svdtool.errors import SvdtoolError
from svdtool.gradients.model import model_shape, resolve_dtype
from svdtool.gradients.plan import GiB, ModelShape, estimate, largest_group, partition, plan_memory
from svdtool.loading import TensorInfo

# Llama-2-7B in bf16: 6.74e9 parameters (12.6 GiB), 202M target parameters per block (24.1 GiB of fp32 accumulators).
PER_BLOCK = 4 * 4096 * 4096 + 3 * 4096 * 11008
LLAMA7B = ModelShape(
    weight_bytes=2 * 6_738_415_616,
    target_params=[PER_BLOCK] * 32,
    hidden=4096,
    intermediate=11008,
    vocab=32000,
    itemsize=2,
)


def plan(budget_gib: float | None, **kw: object):  # type: ignore[no-untyped-def]
    args: dict = dict(mode="exact", offload=False, batch_size=2, width=1024, n_batches=64)
    args.update(kw)
    budget = None if budget_gib is None else int(budget_gib * GiB)
    return plan_memory(LLAMA7B, budget=budget, **args)


def test_partition_matches_equal_sizes_and_keeps_order() -> None:
    assert partition([1] * 6, 2) == [[0, 1, 2], [3, 4, 5]]
    assert partition([1] * 5, 5) == [[0], [1], [2], [3], [4]]
    assert partition([1] * 3, 7) == [[0], [1], [2]]  # never more groups than items
    assert partition([5, 1, 1, 1, 1, 1], 2) == [[0], [1, 2, 3, 4, 5]]
    runs = partition(list(range(1, 11)), 3)
    assert [i for r in runs for i in r] == list(range(10)) and len(runs) == 3


def test_the_estimate_matches_the_measured_7b_peak() -> None:
    """H100, 2 × 1024 tokens, one group: 48.2 GiB allocated at peak; two groups: 31.8 GiB. The model errs high."""
    one = estimate(LLAMA7B, "exact", False, 1, 2, 1024, 64) / GiB
    two = estimate(LLAMA7B, "exact", False, 2, 2, 1024, 64) / GiB
    assert 48.2 <= one <= 48.2 * 1.1
    assert 31.8 <= two <= 31.8 * 1.15
    assert largest_group(LLAMA7B.target_params, 2) * 4 / GiB == pytest.approx(24.1 / 2, rel=0.01)


def test_one_group_when_it_fits() -> None:
    p = plan(137.2)  # an H200's free memory
    assert (p.groups, p.micro_batch_size) == (1, 2)
    assert p.reason.startswith("one pass fits") and "137.2 GiB free" in p.reason
    assert p.as_dict()["groups"] == 1 and p.as_dict()["budget"] == int(137.2 * GiB)


def test_smaller_micro_batch_before_more_groups() -> None:
    """Just too small for micro-batch 2 in one pass: micro-batch 1 (a little slower) beats a second pass."""
    need2 = estimate(LLAMA7B, "exact", False, 1, 2, 1024, 64)
    need1 = estimate(LLAMA7B, "exact", False, 1, 1, 1024, 128)
    assert need1 < need2
    budget = (need1 + 0.5 * (need2 - need1)) / 0.9 / GiB
    p = plan(budget)
    assert (p.groups, p.micro_batch_size) == (1, 1) and "micro-batch 1" in p.reason


def test_more_groups_only_when_needed() -> None:
    p = plan(40)  # a 40 GB A100
    assert p.groups == 2 and p.micro_batch_size == 2 and "2 layer groups" in p.reason
    assert p.need <= 40 * GiB * 0.9
    p24 = plan(24)
    assert p24.groups > 2 and p24.need <= 24 * GiB - 2 * GiB


def test_user_choices_are_kept() -> None:
    p = plan(137.2, groups=3, micro_batch_size=1)
    assert (p.groups, p.micro_batch_size) == (3, 1) and p.reason.startswith("as given")
    small = plan(16, groups=1)  # does not fit, but the user asked: run it, say so
    assert small.groups == 1 and small.reason.startswith("as given")


def test_sketch_and_offload_take_one_group() -> None:
    assert plan(40, mode="sketch").groups == 1
    assert plan(40, offload=True).groups == 1
    assert estimate(LLAMA7B, "sketch", False, 1, 2, 1024, 64) < estimate(LLAMA7B, "exact", False, 1, 2, 1024, 64)


def test_too_small_fails_early_with_one_line_of_advice() -> None:
    with pytest.raises(SvdtoolError) as exc:
        plan(12)  # the bf16 weights alone are 12.6 GiB
    msg = str(exc.value)
    assert "\n" not in msg and "weights alone" in msg
    assert "--gradient sketch" in msg and "--offload" in msg and "more GPUs" in msg
    with pytest.raises(SvdtoolError, match="more GPUs"):
        plan(12, mode="sketch")


def test_cpu_runs_one_pass_without_a_budget() -> None:
    p = plan(None)
    assert (p.groups, p.micro_batch_size, p.budget) == (1, 2, None) and p.reason.startswith("CPU")


def test_model_shape_from_headers() -> None:
    infos = [
        TensorInfo("model.embed_tokens.weight", (100, 8), "bf16", "m.safetensors", 1600),
        TensorInfo("model.layers.0.self_attn.q_proj.weight", (8, 8), "bf16", "m.safetensors", 128),
        TensorInfo("model.layers.0.mlp.up_proj.weight", (16, 8), "bf16", "m.safetensors", 256),
        TensorInfo("model.layers.1.self_attn.q_proj.weight", (8, 8), "bf16", "m.safetensors", 128),
        TensorInfo("model.layers.1.input_layernorm.weight", (8,), "bf16", "m.safetensors", 16),
    ]
    config = {"hidden_size": 8, "intermediate_size": 16, "vocab_size": 100}
    shape = model_shape(config, infos, [], "fp32")  # all-linear; computed in fp32: 4 bytes per weight
    assert shape.target_params == [64, 64 + 128]  # top block first
    assert shape.weight_bytes == 4 * (800 + 64 + 128 + 64 + 8) and shape.itemsize == 4
    assert model_shape(config, infos, ["q_proj"], "bf16").target_params == [64, 64]


@pytest.mark.parametrize(
    ("requested", "stored", "device", "want", "has_reason"),
    [
        ("auto", "bfloat16", "cpu", "fp32", True),
        ("auto", "float16", "cpu", "fp32", True),
        ("auto", "float32", "cpu", "fp32", False),
        ("auto", "bfloat16", "cuda", "bf16", False),
        ("bf16", "bfloat16", "cpu", "bf16", False),
        ("fp16", "float16", "cpu", "fp32", True),
    ],
)
def test_cpu_computes_low_precision_checkpoints_in_fp32(
    requested: str, stored: str, device: str, want: str, has_reason: bool
) -> None:
    name, reason = resolve_dtype(requested, {"torch_dtype": stored}, torch.device(device))
    assert name == want and (reason is not None) == has_reason


def test_bad_dtype_is_refused() -> None:
    with pytest.raises(SvdtoolError, match="--dtype 'int8'"):
        resolve_dtype("int8", {}, torch.device("cpu"))
