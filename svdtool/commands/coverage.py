"""``svdtool coverage``: estimate the target gradients on calibration data and measure how much of each a
rank-r (and rank-2r) adapter can cover; optionally compare small-batch gradients with a reference batch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from svdtool import coverage, naming
from svdtool.commands.common import (
    Progress,
    SilentProgress,
    describe_device,
    manifest,
    utc_now,
    write_result_with_sigmas,
)
from svdtool.commands.coverage_matrices import coverage_jobs, gradient_coverage
from svdtool.engine.plan import plan
from svdtool.engine.work import request_fields
from svdtool.engine.world import World, current
from svdtool.errors import SvdtoolError
from svdtool.gradients import GradientRequest, estimate_gradients
from svdtool.results.coverage import CoverageOptions, CoverageResult

if TYPE_CHECKING:
    import torch


@dataclass
class CoverageRequest:
    gradient: GradientRequest
    ranks: list[int] = field(default_factory=lambda: [8, 32, 128])
    batch_sizes: list[int] = field(default_factory=list)  # compare G of these many samples with the reference
    ref_batch: int | None = None  # reference samples (sets --samples); needed with batch_sizes
    command: list[str] = field(default_factory=list)


@dataclass
class CoverageRun:
    result: CoverageResult
    sigmas: dict[str, np.ndarray]  # tensor name -> every singular value of G, float64, descending


def _check(req: CoverageRequest) -> None:
    g = req.gradient
    if g.mode != "exact":
        raise SvdtoolError("coverage needs the exact gradient (its norm and full spectrum): drop --gradient sketch")
    if not req.batch_sizes:
        return
    ref = req.ref_batch or g.calib.samples
    bs = g.calib.batch_size
    for b in req.batch_sizes:
        if b >= ref:
            raise SvdtoolError(f"--batch-sizes {b} must be smaller than --ref-batch {ref}")
        if b % bs:
            raise SvdtoolError(f"--batch-sizes {b} must be a multiple of --batch-size {bs}")
    g.calib.samples = ref
    g.snapshots = sorted(set(req.batch_sizes))


def _compared(req: CoverageRequest) -> dict[str, Any]:
    """What the ranks must agree on: the request, with the gradient request's own compared fields."""
    fields = request_fields(req)
    fields["gradient"] = request_fields(req.gradient)
    return fields


def _device_label(device: torch.device, helpers: int, world: World) -> str:
    label = describe_device(device)
    return world.label(f"{label} + {helpers} CPU processes for band eigenvalues" if helpers else label)


def run_coverage(req: CoverageRequest, progress: Progress | None = None, world: World | None = None) -> CoverageRun:
    """Gradients (or a matching ``--grad-cache``), then coverage per matrix (:mod:`.coverage_matrices`) and
    summaries. The σ of the gradients come from the engine's pool, as ``spectrum``'s of weights do."""
    progress = progress or SilentProgress()
    world = world or current()
    _check(req)
    started = utc_now()
    t0 = time.perf_counter()
    # Under torchrun each gradient is formed (from its row shards) on the rank that the coverage plan gives it.
    est = estimate_gradients(
        req.gradient, progress, owners=lambda shapes: plan(coverage_jobs(shapes), world.size).owner_of()
    )
    if req.batch_sizes and est.info.from_cache:
        raise SvdtoolError("--batch-sizes needs a fresh estimate (the cache holds only the reference gradient)")
    t_grad = time.perf_counter() - t0
    with world.phase():
        device = world.device(req.gradient.device)  # under torchrun a bare cuda is this rank's GPU
    t1 = time.perf_counter()
    spectra = gradient_coverage(
        est.grads,  # the gradients this process holds: all of them, or under torchrun its share
        est.shapes,
        ranks=req.ranks,
        device=device,
        snapshots=est.snapshots,
        args=_compared(req),
        world=world,
        progress=progress,
    )
    matrices = spectra.matrices
    t_math = time.perf_counter() - t1
    result = CoverageResult(
        manifest=manifest(
            "coverage",
            req.command,
            est.meta,
            device=_device_label(device, spectra.helpers, world),
            dtypes={est.info.dtype: len(matrices)},
            methods=spectra.methods,
            started=started,
            timings={"gradients": t_grad, "coverage": t_math, "total": time.perf_counter() - t0},
            extra_versions=("transformers",),
        ),
        options=CoverageOptions(
            ranks=list(req.ranks),
            levels=coverage.coverage_levels(req.ranks),
            targets=list(req.gradient.targets),
            batch_sizes=sorted(set(req.batch_sizes)),
            ref_batch=req.gradient.calib.samples if req.batch_sizes else None,
            definitions={
                "coverage": coverage.COVERAGE_DEFINITION,
                "sign_similarity": coverage.SIGN_DEFINITION,
                "magnitude_similarity": coverage.MAGNITUDE_DEFINITION,
            },
        ),
        calibration=est.calibration,
        gradient=est.info,
        matrices=matrices,
        by_module_type=coverage.summarize(matrices, "module_type", req.ranks, order=naming.type_sort_key),
        by_layer=coverage.summarize(matrices, "layer", req.ranks),
    )
    return CoverageRun(result, spectra.sigmas)


def write_coverage(run: CoverageRun, out_dir: Path) -> list[Path]:
    """``coverage.json`` and the ``coverage.safetensors`` singular values, each written atomically."""
    return write_result_with_sigmas(
        run.result, run.sigmas, out_dir, json_name=CoverageResult.JSON, sidecar_name=CoverageResult.SIDECAR,
        tag="svdtool-gradient-spectra",
    )  # fmt: skip
