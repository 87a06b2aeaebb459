"""The LPT work plan: deterministic, balanced, every job once; at world size 8 under the fake process group."""

from __future__ import annotations

import random

import pytest

from svdtool.engine.plan import Job, matrix_cost, plan
from svdtool.engine.work import Share
from svdtool.engine.world import World, current

# Llama-2-7B's 2-D weights (bf16): 32 blocks of q, k, v, o (4096²) and gate, up (11008×4096), down (4096×11008).
LLAMA7B = [
    Job(f"model.layers.{i}.{name}.weight", matrix_cost(shape, 2 * shape[0] * shape[1]))
    for i in range(32)
    for name, shape in [
        ("self_attn.q_proj", (4096, 4096)),
        ("self_attn.k_proj", (4096, 4096)),
        ("self_attn.v_proj", (4096, 4096)),
        ("self_attn.o_proj", (4096, 4096)),
        ("mlp.gate_proj", (11008, 4096)),
        ("mlp.up_proj", (11008, 4096)),
        ("mlp.down_proj", (4096, 11008)),
    ]
] + [Job("model.embed_tokens.weight", matrix_cost((32000, 4096), 2 * 32000 * 4096))]


@pytest.mark.parametrize("ranks", [1, 2, 3, 8, 300])
def test_every_job_once_and_balanced(ranks: int) -> None:
    p = plan(LLAMA7B, ranks)
    assert sorted(i for r in range(ranks) for i in p.mine(r)) == list(range(len(LLAMA7B)))
    loads = p.loads()
    biggest = max(j.cost for j in LLAMA7B)
    # LPT's bound: no rank carries more than the mean plus one job.
    assert max(loads) <= sum(loads) / ranks + biggest
    if ranks <= 8:
        assert max(loads) / min(loads) < 1.05  # 225 jobs spread evenly


def test_largest_jobs_go_first_and_ties_break_by_position() -> None:
    jobs = [Job("a", 1.0), Job("b", 5.0), Job("c", 5.0), Job("d", 2.0)]
    p = plan(jobs, 2)
    # b → 0, c → 1 (tie with b: position), d → 0 (loads tie at 5: the lower rank), a → 1.
    assert p.owners == (1, 0, 1, 0)
    assert p.loads() == [7.0, 6.0]


def test_the_plan_depends_on_the_jobs_only() -> None:
    shuffled = LLAMA7B[:]
    random.Random(0).shuffle(shuffled)
    a, b = plan(LLAMA7B, 8), plan(LLAMA7B, 8)
    assert a == b and a.fingerprint() == b.fingerprint()
    # The same jobs in another order are another plan, and the fingerprint says so.
    assert plan(shuffled, 8).fingerprint() != a.fingerprint()


def test_world_size_8_under_the_fake_process_group() -> None:
    import torch.distributed as dist
    import torch.testing._internal.distributed.fake_pg  # noqa: F401  (registers the "fake" backend)

    dist.init_process_group("fake", store=dist.HashStore(), rank=5, world_size=8)
    try:
        world = current()
        assert world == World(rank=5, size=8, local_rank=5, local_size=8, joined=True)
        share = Share.of(world, LLAMA7B, {"model": "llama-7b"})  # the fake group echoes this rank's digest
        assert share.mine == plan(LLAMA7B, 8).mine(5)
        assert 25 <= len(share.mine) <= 32
    finally:
        dist.destroy_process_group()
    assert current() == World()
