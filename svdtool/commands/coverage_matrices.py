"""``coverage``'s per-matrix work through the engine, as ``spectrum`` does it for weights.

A job is one target gradient G (out, in), costed like a weight of that shape (:func:`matrix_cost`). The plan
is built from the shapes alone, so every rank builds the same one (:class:`~svdtool.engine.work.Share`). Each
rank takes the σ of its own jobs from the gradients it holds (:class:`InMemory`: in memory, or a
``--grad-cache`` read one gradient at a time), through the local pool: on a GPU the batched two-stage pipeline (dense →
band on the GPU, then the bulge chase on the GPU or band eigenvalues in CPU processes), on a CPU the Gram
route on every core. Unlike weights, values below ``GRAM_SAFE_RATIO``·σ₁ are not refined (``refine=False`` of
:func:`svdtool.linalg.exact.finish_from_gram`): coverage uses σ², which the Gram gives to eps64·σ₁² absolute,
and refining would cost a float64 SVD of almost every gradient (their spectra decay steeply). Every matrix
reports the method that produced its σ. ‖G‖_F and the batch-size similarities are computed beside it, on the
same rank. The results then reach every rank (``share.collect``), ordered as the shapes are.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from contextlib import closing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from svdtool import coverage, naming
from svdtool.engine.memory import InMemory
from svdtool.engine.plan import Job, matrix_cost
from svdtool.engine.pool import compute_all, plan_workers
from svdtool.engine.work import Share
from svdtool.engine.world import World, current
from svdtool.errors import SvdtoolError
from svdtool.loading import TensorInfo
from svdtool.results.coverage import MatrixCoverage, Similarity
from svdtool.runtime import Progress, SilentProgress

if TYPE_CHECKING:
    import torch

#: Bytes per element of a gradient accumulator (float32), for the plan's cost of each job.
GRADIENT_BYTES = 4


@dataclass
class GradientSpectra:
    """Every target's coverage statistics and σ (float64, descending), in the order of the shapes."""

    matrices: list[MatrixCoverage]
    sigmas: dict[str, np.ndarray]
    methods: dict[str, int]  # method -> matrices, for the manifest
    helpers: int = 0  # CPU processes that took band eigenvalues for this rank's GPU


def coverage_jobs(shapes: Mapping[str, tuple[int, int]]) -> list[Job]:
    """One job per target gradient (out, in), costed like a weight of that shape held in float32; the plan
    over them (:func:`svdtool.engine.plan.plan`) says which rank must hold which whole gradient."""
    return [Job(n, matrix_cost(s, GRADIENT_BYTES * s[0] * s[1])) for n, s in shapes.items()]


def gradient_coverage(
    held: Mapping[str, torch.Tensor],
    shapes: Mapping[str, tuple[int, int]],
    *,
    ranks: list[int],
    device: torch.device,
    snapshots: Mapping[int, Mapping[str, torch.Tensor]] | None = None,
    args: dict[str, Any] | None = None,
    cpu_workers: int | None = None,
    world: World | None = None,
    progress: Progress | None = None,
) -> GradientSpectra:
    """Coverage of every target in ``shapes`` (name -> (out, in), the same on every rank).

    ``held`` holds at least this rank's share of the gradients (in one process: all of them), on any
    device; ``snapshots`` (samples -> name -> G_b) likewise for the batch-size similarities. ``args``
    are compared across ranks with the plan. Every rank returns the same result.
    """
    world = world or current()
    progress = progress or SilentProgress()
    names = list(shapes)
    share = Share.of(world, coverage_jobs(shapes), args or {})
    mine = [names[i] for i in share.mine]
    label = "coverage" if not world.distributed else f"coverage, rank 0's {len(mine)} of {len(names)}"
    progress.start(label, len(mine))
    with world.phase():
        have = set(held)  # names only: a --grad-cache mapping reads a tensor on lookup
        missing = [n for n in mine if n not in have]
        if missing:
            raise SvdtoolError(f"rank {world.rank} was planned {missing[0]} but holds no gradient for it")
        mine_shapes = {n: shapes[n] for n in mine}
        local, helpers = _local(held, mine_shapes, snapshots or {}, ranks, device, cpu_workers, world, progress)
    every = {m.name: (m, sigma, method) for m, sigma, method in share.collect(local)}
    done = [every[n] for n in names]
    return GradientSpectra(
        matrices=[m for m, _, _ in done],
        sigmas={m.name: sigma for m, sigma, _ in done},
        methods=dict(Counter(method for _, _, method in done)),
        helpers=helpers,
    )


def _local(
    held: Mapping[str, torch.Tensor],
    shapes: dict[str, tuple[int, int]],
    snapshots: Mapping[int, Mapping[str, torch.Tensor]],
    ranks: list[int],
    device: torch.device,
    cpu_workers: int | None,
    world: World,
    progress: Progress,
) -> tuple[list[tuple[MatrixCoverage, np.ndarray, str]], int]:
    """The gradients named in ``shapes`` through the local pool: (statistics, σ, method) each, and the
    helper processes. Each G is looked up once; its ‖G‖_F and similarities are taken as it is read."""
    import torch

    if not shapes:
        progress.finish()
        return [], 0
    measured: dict[str, tuple[float, list[Similarity]]] = {}

    def measure(info: TensorInfo, g: torch.Tensor) -> bool:
        """On the pool's reader thread, with G on the device: ‖G‖_F² and the similarities of G_b to G."""
        sims = [coverage.similarity(snapshots[b][info.name].to(g.device), g, b) for b in sorted(snapshots)]
        measured[info.name] = (coverage.frobenius_sq(g, device), sims)
        return True

    threads = torch.get_num_threads()  # the CPU pool sets a share of the cores per worker
    workers, helpers = plan_workers(device, cpu_workers, world.cores())
    src = InMemory(held, shapes)
    try:
        advance = lambda c: progress.advance(c.info.name)  # noqa: E731
        # closing(): an interrupt between two items must still stop and join the threads, here and now.
        with closing(compute_all(src, src.tensors(), workers, advance, helpers, measure, refine=False)) as computed:
            done = list(computed)
    finally:
        torch.set_num_threads(threads)
        progress.finish()
    out = []
    for c in done:
        name = c.info.name
        frob_sq, sims = measured[name]
        m = coverage.matrix_coverage(
            c.sigma,
            frob_sq,
            name=name,
            module_type=naming.module_type(name),
            layer=naming.layer_index(name),
            shape=shapes[name],
            ranks=ranks,
        )
        m.similarity = sims
        out.append((m, c.sigma, c.method))
    return out, helpers
