"""The gradient estimate over the ranks of a torchrun job: data parallel, frozen weights sharded by FSDP2.

Every rank encodes the whole calibration set and runs the micro-batches i with i % N == rank. A
micro-batch's loss is divided by its logical batch's *global* target-token count N_b, so the sum over
ranks is the single-process sum. Every rank runs the same number of steps, because FSDP's all-gathers
pair up across ranks: a rank with fewer micro-batches runs copies whose labels are all ignored, so their
summed loss is 0 (a sum, never a 0/0 mean) and they fold zeros.

* exact: in each target's backward hook, δᵀX (out, in) float32 is reduce-scattered over the L ranks that
  share the weights' rows (:mod:`svdtool.gradients.mesh`: all N ranks on the flat mesh, a node's under
  HSDP): rank r adds rows [i·c, (i+1)·c) (i = r % L, c = ⌈out/L⌉) of the sum into its own accumulator
  (c, in). That is 4·P/L bytes per rank, beside FSDP's 2·P/L of bf16 weights. FSDP's own ``.grad`` is not
  used: it stays bf16 for bf16 weights in torch ≤ 2.13.
* sketch: every rank uses the same seeded Ω, Ψ, and the sketch terms are reduce-scattered the same way, so
  a rank holds 1/L of every Y and W (:mod:`svdtool.gradients.sharded_fold`).
* HSDP (several nodes): after the last pass, one all-reduce over the nodes sums their partial shards, so
  the traffic between nodes is once per run, not per micro-batch.

At the end each target's gradient (or its top factors) is formed on its owner rank only (``owners``, the
rank that uses it: coverage's share of the matrices, or the writer of its residual shard file), gathered
from its own node's ranks. One pass over the data: the accumulators are already 1/L, so there are no layer
groups, and no CUDA graphs (collectives run inside the hooks).

A rank that fails in the passes or in the gathers (its own reduce, say) leaves its peers waiting in a
collective that will never complete: it tears the process groups down first, so that it exits at once
(torchrun then stops the others; over gloo the peers' collectives fail too).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from svdtool.engine.plan import Job, matrix_cost, plan
from svdtool.engine.world import PeerFailed, World, failure_summary
from svdtool.errors import SvdtoolError
from svdtool.gradients import fold as folds
from svdtool.gradients.compute import Computed, ComputeSettings, finish, test_matrices
from svdtool.gradients.finite import folded_nonfinite, folded_refusal
from svdtool.gradients.graphed import GraphStats
from svdtool.gradients.mesh import Mesh
from svdtool.gradients.model import Target, blocks
from svdtool.gradients.passes import MicroBatch, PassPlan, Timer, run_pass, stage
from svdtool.gradients.plan import ModelShape
from svdtool.gradients.sharded_fold import RowShards, ShardedExactFold, ShardedSketchFold
from svdtool.runtime import Progress, SilentProgress

if TYPE_CHECKING:
    import torch
    from torch import nn

#: The rendezvous-store key where the first rank to give up mid-pass leaves its one-line message.
FAILED_KEY = "svdtool/sharded-passes-failed"


def refuse_unsupported(cache: object, snapshots: list[int], groups: int | None) -> None:
    """Options of one process that the sharded estimate does not offer (one line, the same on every rank)."""
    if cache is not None:
        raise SvdtoolError("--grad-cache runs in one process: under torchrun each rank holds only its share of G")
    if snapshots:
        raise SvdtoolError("--batch-sizes runs in one process (its running means follow the batch order)")
    if groups not in (None, 1):
        raise SvdtoolError("--grad-groups applies to one process: under torchrun the accumulators are sharded")


def per_rank(shape: ModelShape, ranks: int) -> ModelShape:
    """What one rank holds, for the memory plan: 1/ranks of the weights and of every block's accumulators."""
    return dataclasses.replace(
        shape,
        weight_bytes=-(-shape.weight_bytes // ranks),
        target_params=[-(-p // ranks) for p in shape.target_params],
    )


def default_owners(targets: list[Target], ranks: int) -> dict[str, int]:
    """Targets spread over the ranks by the engine's LPT plan (cost: the SVD of each G), when the caller has none."""
    shapes = [(t.name, t.out_features, t.in_features) for t in targets]
    return plan([Job(name, matrix_cost((m, n), 4 * m * n)) for name, m, n in shapes], ranks).owner_of()


def share_of(micro: list[MicroBatch], world: World) -> list[MicroBatch]:
    """This rank's micro-batches (i % N == rank), padded with zero-loss copies to ⌈len/N⌉ steps."""
    import torch

    mine = micro[world.rank :: world.size]
    steps = -(-len(micro) // world.size)
    blank = micro[0]
    silent = dataclasses.replace(
        blank,
        inputs={**blank.inputs, "labels": torch.full_like(blank.inputs["labels"], -100)},
        samples=0,
        tokens=0,
        last_of_batch=False,
        staged=None,
    )
    return mine + [silent] * (steps - len(mine))


def compute_sharded(
    model: nn.Module,
    targets: list[Target],
    micro: list[MicroBatch],
    settings: ComputeSettings,
    device: torch.device,
    world: World,
    owners: Mapping[str, int],
    mesh: Mesh,
    progress: Progress | None = None,
    reduce: Callable[[str, torch.Tensor], Any] | None = None,
    on_result: Callable[[str, Any], None] | None = None,
) -> Computed:
    """:func:`svdtool.gradients.compute.compute_gradients` over the world; results only for this rank's targets.

    ``mesh`` is the one the model was sharded on: the accumulators are split the same way.
    """
    import torch

    progress = progress or SilentProgress()
    missing = [t.name for t in targets if not 0 <= owners.get(t.name, -1) < world.size]
    if missing:
        raise SvdtoolError(f"no rank owns the gradient of {missing[0]}")  # a caller's bug, on every rank alike
    n_batches = micro[-1].batch + 1
    mine = share_of(micro, world)
    stage(mine, device)
    param = next(model.parameters())
    tm = test_matrices(targets, settings, param.dtype, device) if settings.mode == "sketch" else {}
    xo_cache = folds.XOmegaCache()
    shards = RowShards(world, mesh, device)  # our reductions, in groups apart from FSDP's all-gathers
    acc_device = torch.device("cpu") if settings.offload else device
    states: dict[str, ShardedExactFold | ShardedSketchFold] = {
        t.name: ShardedSketchFold(t, tm[t.name][0], tm[t.name][1], xo_cache, shards)
        if settings.mode == "sketch"
        else ShardedExactFold(t, shards, acc_device)
        for t in targets
    }
    held = sum(x.numel() * x.element_size() for st in states.values() for x in st.buffers())
    chain = [b for _, b in blocks(model)]
    timer = Timer()
    stats = GraphStats()
    progress.start("gradients", sum(mb.samples for mb in mine))

    def on_step(mb: MicroBatch) -> None:
        xo_cache.clear()
        for _ in range(mb.samples):
            progress.advance(f"rank {world.rank} of {world.size}")

    handles = [folds.install(t, states[t.name]) for t in targets]
    try:
        plan_ = PassPlan(chain[0], chain[-1], top=True, bottom=True)  # one pass: the whole model
        run_pass(model, plan_, mine, device, None, device, on_step, settings.offload, stats)
        for st in states.values():  # HSDP: the one all-reduce across nodes; then every node holds the sums
            for buf in st.buffers():
                shards.combine(buf)
    except BaseException as exc:
        raise abandon(exc, world) from None
    finally:
        for h in handles:
            h.remove()
        progress.finish()
    every = world.all_gather(folded_nonfinite(states))
    found = next((f for f in every if f is not None), None)
    if found is not None:
        raise folded_refusal(found, model, micro, device)  # every rank runs the same forward passes
    t_finish = timer()
    results: dict[str, Any] = {}
    try:
        for t in targets:  # every rank, in the same order: one collective per target
            value = _to_owner(states.pop(t.name), owners[t.name], world, n_batches, settings, reduce)
            if owners[t.name] == world.rank:
                results[t.name] = value
                if on_result is not None:
                    on_result(t.name, value)  # the owner's reduce or consumer may fail there alone
    except BaseException as exc:
        raise abandon(exc, world) from None
    shards.close()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = timer()
    rate = sum(mb.tokens for mb in micro) / max(seconds, 1e-9)
    return Computed(results, {}, 1, n_batches, seconds, rate, stats, seconds - t_finish, held)


def _to_owner(
    state: ShardedExactFold | ShardedSketchFold,
    owner: int,
    world: World,
    n_batches: int,
    settings: ComputeSettings,
    reduce: Callable[[str, torch.Tensor], Any] | None,
) -> Any:
    """The row shards gathered at ``owner``; there, the mean G, reduce(name, G), or the recovered factors."""
    whole = state.gather(owner)
    return None if whole is None else finish(state.target.name, whole, n_batches, settings, True, reduce)


def abandon(exc: BaseException, world: World) -> BaseException:
    """Give up the job after ``exc``: tear the process groups down, so that peers waiting in a collective with
    this rank fail instead of hanging; returns what to raise.

    The first rank to give up leaves its one-line message in the rendezvous store first. A rank whose
    collective then failed because of it raises that message (:class:`PeerFailed`), not the broken connection.
    """
    import torch.distributed as dist

    if not dist.is_initialized():
        return exc
    store = _store()
    first = None
    if store is not None:
        try:
            if store.check([FAILED_KEY]):
                first = json.loads(store.get(FAILED_KEY))
            else:
                store.set(FAILED_KEY, json.dumps([world.rank, *failure_summary(exc)]))
        except Exception:  # the store went away with the job: nothing to tell or learn
            pass
    try:
        dist.destroy_process_group()
    except Exception:  # already broken: nothing left to release
        pass
    if first is not None and isinstance(exc, RuntimeError) and not isinstance(exc, SvdtoolError):
        rank, message, code = first
        return PeerFailed(f"rank {rank}: {message}", code)
    return exc


def _store() -> Any:
    import torch.distributed.distributed_c10d as c10d

    try:
        return c10d._get_default_store()
    except Exception:  # no default group, or a torch without it
        return None
