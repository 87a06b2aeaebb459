"""``svdtool init`` under torchrun: the residual's shard files are the jobs of the work plan.

The residual has the source's names, shapes and dtypes, so its shard files are planned from the
headers, the same on every rank. The rank that owns a file (:mod:`svdtool.engine.work`) reads the
tensors in it, initialises the targets among them and writes the whole file: nothing is written by two
processes. The factors A, B of every rank go to rank 0, which writes the adapter and the index.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svdtool.adapters.peft_format import ADAPTER_WEIGHTS
from svdtool.adapters.safetensors_out import INDEX_NAME, Planned, ShardSet, shard_index, shard_names
from svdtool.commands.init_layers import Target
from svdtool.engine.plan import FLOPS_PER_BYTE, Job, matrix_cost, plan
from svdtool.engine.work import Share
from svdtool.engine.world import World
from svdtool.results.base import atomic_write_bytes
from svdtool.results.init import LayerInit

if TYPE_CHECKING:
    import torch


def shard_jobs(shards: list[list[Planned]], targets: list[Target]) -> list[Job]:
    """One job per residual shard file: the matrices to decompose in it, plus its bytes."""
    shapes = {t.info.name: t.info.shape for t in targets}
    return [
        Job(
            name,
            sum(
                matrix_cost(shapes[e.name], e.nbytes) if e.name in shapes else FLOPS_PER_BYTE * e.nbytes for e in shard
            ),
        )
        for name, shard in zip(shard_names(len(shards)), shards, strict=True)
    ]


def target_owners(world: World, shards: list[list[Planned]], targets: list[Target]) -> dict[str, int]:
    """Tensor name -> the rank that will write it (LoRA-GA's gradient of a target is formed there, and only there).

    The plan of the :class:`Share` that ``run_init`` builds after the estimate from the same files and targets.
    """
    p = plan(shard_jobs(shards, targets), world.size)
    return {e.name: p.owners[k] for k, shard in enumerate(shards) for e in shard}


def owned_tensors(share: Share, shards: list[list[Planned]]) -> tuple[list[int], set[str]]:
    """This rank's shard files (indices) and the names of the tensors in them."""
    mine = share.mine
    return mine, {e.name for k in mine for e in shards[k]}


def finish(
    share: Share,
    targets: list[Target],
    layers: list[LayerInit],
    timings: dict[str, float],
    kept: list[tuple[str, torch.Tensor]],
    adapter_dir: Path,
    adapter_plan: list[Planned],
    shards: list[list[Planned]],
) -> tuple[list[LayerInit], dict[str, Any]]:
    """Every rank's records (on every rank, in checkpoint order); at rank 0 the adapter and the index."""
    parts = share.collect([(layers, timings)])
    position = {t.info.name: k for k, t in enumerate(targets)}
    merged = sorted((x for part, _ in parts for x in part), key=lambda x: position[x.name])
    summed = {k: round(sum(t[k] for _, t in parts), 4) for k in timings}
    factors = share.gather(kept)
    with share.world.phase():
        if factors is not None:
            adapter_dir.mkdir(exist_ok=True)
            adapter = ShardSet(adapter_dir, [adapter_plan], [ADAPTER_WEIGHTS])
            try:
                for key, tensor in factors:
                    adapter.write(key, tensor)
            finally:
                adapter.close()  # raises when a planned factor is missing
            if shards:
                index = shard_index(shards, shard_names(len(shards)))
                atomic_write_bytes(adapter_dir.parent / INDEX_NAME, (json.dumps(index, indent=2) + "\n").encode())
    return merged, summed
