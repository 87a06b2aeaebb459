"""Estimate the full-model gradient of every target matrix on calibration data (LoRA-GA §3.2).

G = (1/n_batches) Σ_b ∇_W mean-loss(batch b), the reference's estimator (``estimate_gradient``: sum of the
per-batch gradients divided by the number of batches), accumulated in float32. Two modes:

* ``exact``: G itself, (out, in) float32 per target (see :mod:`svdtool.gradients.fold`).
* ``sketch``: only G's top-t singular triplets, from single-pass sketches; no weight gradient is formed.

Memory stays low because no parameter has ``requires_grad`` (so no ``.grad`` buffers), each micro-batch's
weight gradient goes straight into its float32 accumulator inside the backward pass, and with K layer
groups (:mod:`svdtool.gradients.passes`) only 1/K of the accumulators exist at a time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svdtool import naming
from svdtool.calibration import CalibrationSet, CalibRequest, prepare_calibration
from svdtool.calibration.encode import pad_id
from svdtool.engine.world import World, current
from svdtool.errors import SvdtoolError
from svdtool.gradients import mesh as mesh_choice
from svdtool.gradients import sharded
from svdtool.gradients.compute import SKETCH_OVERSAMPLE, ComputeSettings, compute_gradients, micro_batches
from svdtool.gradients.finite import check_weights
from svdtool.gradients.graphed import width_multiple
from svdtool.gradients.model import (
    ModelSource,
    Target,
    find_targets,
    header_targets,
    load_weights,
    model_shape,
    open_model,
)
from svdtool.gradients.passes import Laps, Timer
from svdtool.gradients.plan import MemoryPlan, ModelShape, plan_memory
from svdtool.gradients.shard_load import load_sharded
from svdtool.linalg.sketch import LowRankGradient, sketch_sizes
from svdtool.results.gradients import CalibrationInfo, GradientInfo
from svdtool.runtime import Progress, SilentProgress, describe_device, resolve_device

if TYPE_CHECKING:
    import torch

    from svdtool.loading import CheckpointMeta, TensorInfo


#: Who forms each target's gradient under torchrun: tensor name -> rank, or a function of the shapes giving that.
Owners = Mapping[str, int] | Callable[[dict[str, tuple[int, int]]], Mapping[str, int]]


@dataclass
class GradientRequest:
    model: str
    calib: CalibRequest
    revision: str | None = None
    token: str | None = None
    tokenizer: str | None = None
    targets: list[str] = field(default_factory=list)  # module types / globs; [] = all-linear
    dtype: str = "auto"
    device: str = "auto"
    mode: str = "exact"  # exact | sketch
    sketch_rank: int = 16  # t: singular triplets recovered in sketch mode (2r for LoRA-GA)
    sketch_oversample: int = SKETCH_OVERSAMPLE
    seed: int = 0  # sketch test matrices
    groups: int | None = None  # layer groups (passes); None: auto
    micro_batch_size: int | None = None  # None: --batch-size
    offload: bool = False  # exact accumulators in host memory
    cache: Path | None = None
    snapshots: list[int] = field(default_factory=list)  # sample counts at which to keep the running G (exact)

    def fingerprint(self) -> dict[str, Any]:
        """What decides the gradient values (a cache built with another fingerprint is not reused)."""
        fp: dict[str, Any] = {
            "model": self.model,
            "revision": self.revision,
            "tokenizer": self.tokenizer,
            "dtype": self.dtype,
            "mode": self.mode,
            "targets": list(self.targets),
            "calib": self.calib.fingerprint(),
        }
        if self.mode == "sketch":
            fp["sketch"] = {"rank": self.sketch_rank, "oversample": self.sketch_oversample, "seed": self.seed}
        return fp


@dataclass
class GradientEstimate:
    info: GradientInfo
    calibration: CalibrationInfo
    meta: CheckpointMeta
    shapes: dict[str, tuple[int, int]]  # tensor name -> (out, in)
    grads: Mapping[str, torch.Tensor] = field(default_factory=dict)  # exact: (out, in) float32
    factors: Mapping[str, LowRankGradient] = field(default_factory=dict)  # sketch, or exact + reduce
    snapshots: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)  # samples -> name -> G

    def provider(self) -> Mapping[str, Any]:
        """Tensor name -> gradient (exact) or its top factors (sketch), in nn.Linear layout (out, in)."""
        return self.grads if self.grads else self.factors


def _peak_rss() -> int:
    try:
        import resource
    except ImportError:  # not on Windows
        return 0
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024  # Linux reports KiB


def estimate_gradients(
    req: GradientRequest,
    progress: Progress | None = None,
    reduce: Callable[[str, torch.Tensor], Any] | None = None,
    on_result: Callable[[str, Any], None] | None = None,
    owners: Owners | None = None,
) -> GradientEstimate:
    """Run the calibration data through the model and return the target gradients (or their top factors).

    ``reduce(name, G)``, exact mode only, replaces each mean gradient while it is still on the device (for
    ``init``, its top factors); it is not used when the gradients come from, or go to, ``--grad-cache``.
    ``on_result(name, value)`` receives each result as soon as it exists (not when read from a cache).

    Under torchrun (:mod:`svdtool.gradients.sharded`) every rank must call this; the weights are sharded over
    the ranks and each target's result exists only on its owner (``owners``: tensor name -> rank, or a function
    of the target shapes that returns that; default: the engine's plan), so ``grads`` / ``factors`` hold this
    rank's targets only. ``shapes`` lists them all.
    """
    import torch

    progress = progress or SilentProgress()
    world = current()
    if req.mode not in ("exact", "sketch"):
        raise SvdtoolError(f"--gradient {req.mode!r}: expected exact or sketch")
    if world.distributed:
        sharded.refuse_unsupported(req.cache, req.snapshots, req.groups)
    if req.cache is not None and req.cache.exists():
        from svdtool.gradients.cache import read_cache

        progress.message(f"reusing gradients from {req.cache}")
        return read_cache(req.cache, req)
    device = world.device(req.device) if world.distributed else resolve_device(req.device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    timer = Timer()
    phases: dict[str, float] = {}
    lap = Laps(phases)
    with world.phase():  # under torchrun: an input that fails on one rank only stops every rank here
        src, calib, infos, shape, multiple = _prepare(req, device, progress, lap, world)
        want = mesh_choice.requested() if world.distributed else "auto"
    bs = req.calib.batch_size
    width = max(-(-len(e.input_ids) // multiple) * multiple for e in calib.items)
    budget = int(torch.cuda.mem_get_info(device)[0]) if device.type == "cuda" else None
    if world.distributed and budget is not None:
        budget = min(world.all_gather(budget))  # one plan (micro-batch size, so step count) on every rank

    def plan_for(ranks: int) -> MemoryPlan:  # a rank's share when the weights are split over ``ranks``
        return plan_memory(
            sharded.per_rank(shape, ranks),
            mode=req.mode,
            offload=req.offload,
            batch_size=bs,
            width=width,
            n_batches=-(-len(calib.items) // bs),
            budget=budget,
            groups=1 if world.distributed else req.groups,
            micro_batch_size=req.micro_batch_size,
            sketch_bytes=_sketch_bytes(infos or [], req) // ranks if req.mode == "sketch" else 0,  # sharded: 1/L
        )

    mesh, plan = mesh_choice.choose(world, want, plan_for)  # one process: Mesh(1, 1)
    world.agree(f"the weight mesh ({mesh_choice.MESH_ENV}, LOCAL_WORLD_SIZE)", mesh.as_dict())
    line = f"gradient passes: {plan.groups} group(s), micro-batch {plan.micro_batch_size} ({plan.reason})"
    progress.message(line + (f"; {mesh.describe()}" if world.distributed else ""))
    if world.distributed:
        model = load_sharded(src, device, world, mesh)  # checks its rows for NaN or ±Inf on every rank
    else:
        model = load_weights(src, device)
        check_weights(model)  # NaN or ±Inf in a weight: refused before any pass
    lap("load")
    targets = find_targets(model, req.targets, {i.name for i in infos} if infos else None)
    micro = micro_batches(calib.items, bs, plan.micro_batch_size, pad_id(src.tokenizer), multiple)
    settings = ComputeSettings(
        mode=req.mode,
        groups=plan.groups,
        offload=req.offload,
        sketch_rank=req.sketch_rank,
        sketch_oversample=req.sketch_oversample,
        seed=req.seed,
        snapshots=[c // bs for c in req.snapshots],
    )
    use_reduce = reduce if req.mode == "exact" and req.cache is None else None
    shapes = {t.name: (t.out_features, t.in_features) for t in targets}
    try:
        if world.distributed:
            owned = (owners(shapes) if callable(owners) else owners) or sharded.default_owners(targets, world.size)
            done = sharded.compute_sharded(
                model, targets, micro, settings, device, world, owned, mesh, progress, use_reduce, on_result
            )
        else:
            done = compute_gradients(model, targets, micro, settings, device, progress, use_reduce, on_result)
    except torch.OutOfMemoryError:
        raise SvdtoolError(_oom_message(plan, req)) from None
    phases["passes"] = round(done.seconds - done.finish_seconds, 4)
    phases["reduce" if use_reduce else "finish"] = round(done.finish_seconds, 4)
    info = GradientInfo(
        mode=req.mode,
        model=src.meta.description,
        model_sha=src.meta.sha,
        dtype=src.dtype,
        device=world.label(describe_device(device)),
        targets=[t.name for t in targets],
        batches=done.batches,
        micro_batch_size=plan.micro_batch_size,
        groups=done.groups,
        offload=req.offload,
        accumulation="fp32",
        seconds=round(timer(), 4),
        tokens_per_second=round(done.tokens_per_second, 1),
        peak_device_memory=int(torch.cuda.max_memory_allocated(device)) if device.type == "cuda" else None,
        peak_host_rss=_peak_rss(),
        sketch=_sketch_info(targets, req) if req.mode == "sketch" else {},
        cache=str(req.cache) if req.cache else None,
        transposed=[t.name for t in targets if t.transposed],
        cuda_graphs=dataclasses.asdict(done.graph_stats) if device.type == "cuda" else {},
        dtype_reason=src.dtype_reason,
        plan=plan.as_dict(),
        phases=phases,
    )
    if world.distributed:
        info.plan.update(ranks=world.size, mesh=mesh.as_dict(), accumulator_bytes_per_rank=done.accumulator_bytes)
    ordered = {t.name: done.results[t.name] for t in targets if t.name in done.results}  # torchrun: this rank's
    snaps = {b * bs: v for b, v in done.snapshots.items()}
    est = GradientEstimate(info, calib.info, src.meta, shapes, snapshots=snaps)
    if req.mode == "exact" and use_reduce is None:
        est.grads = ordered
    else:
        est.factors = ordered
    del model
    if req.cache is not None:
        from svdtool.gradients.cache import write_cache

        write_cache(req.cache, est, req)
        progress.message(f"wrote {req.cache}")
    return est


def _prepare(
    req: GradientRequest, device: torch.device, progress: Progress, lap: Laps, world: World
) -> tuple[ModelSource, CalibrationSet, list[TensorInfo] | None, ModelShape, int]:
    """Model source, encoded calibration data, headers, the shape for the memory plan, and the width multiple.

    Under torchrun a Hub model is downloaded into the HF cache by each node's local rank 0 first.
    """
    src = world.first_locally(
        lambda: open_model(
            req.model, revision=req.revision, token=req.token, dtype=req.dtype, device=device, tokenizer=req.tokenizer
        )
    )
    if src.dtype_reason:
        progress.message(f"computing in {src.dtype}: {src.dtype_reason}")
    if src.max_positions is not None and req.calib.max_length > src.max_positions:
        raise SvdtoolError(
            f"--max-length {req.calib.max_length} is longer than the model's maximum sequence length "
            f"{src.max_positions}: lower --max-length"
        )
    bs = req.calib.batch_size
    if req.micro_batch_size is not None and req.micro_batch_size > bs:
        raise SvdtoolError(f"--micro-batch-size {req.micro_batch_size} is larger than --batch-size {bs}")
    lap("open")
    calib = prepare_calibration(req.calib, src.tokenizer)  # data errors surface before the weights load
    lap("calibration")
    infos = _checkpoint_infos(src.folder)
    shape = model_shape(src.meta.config, infos or [], req.targets, src.dtype)
    return src, calib, infos, shape, width_multiple(device, req.offload)


def _checkpoint_infos(folder: Path) -> list[TensorInfo] | None:
    from svdtool.loading import open_checkpoint

    try:
        with open_checkpoint(str(folder)) as ckpt:
            return ckpt.tensors()
    except SvdtoolError:
        return None


def _sketch_bytes(infos: list[TensorInfo], req: GradientRequest) -> int:
    """The float32 sketches Y (out, k) and W (l, in) of every target, for the memory plan."""
    total = 0
    for i in header_targets(infos, req.targets):
        out_f, in_f = i.shape  # (in, out) for Conv1D: the sum is the same to within the cap
        k, l_ = sketch_sizes(req.sketch_rank, out_f, in_f, req.sketch_oversample)
        total += 4 * (out_f * k + l_ * in_f)
    return total


def _oom_message(plan: MemoryPlan, req: GradientRequest) -> str:
    advice = ["--grad-groups N with a larger N", "--micro-batch-size 1"]
    if req.mode == "exact":
        advice += ["--gradient sketch", "--offload"]
    return (
        f"the device ran out of memory during the gradient passes ({plan.groups} layer group(s), micro-batch "
        f"{plan.micro_batch_size}, estimated {plan.need / 2**30:.1f} GiB); try {', '.join(advice)}, or more GPUs"
    )


def _sketch_info(targets: list[Target], req: GradientRequest) -> dict[str, int]:
    t0 = targets[0]
    k, l_ = sketch_sizes(req.sketch_rank, t0.out_features, t0.in_features, req.sketch_oversample)
    return {"rank": req.sketch_rank, "range": k, "corange": l_, "oversample": req.sketch_oversample}


def select(names: list[str], targets: list[str]) -> list[str]:
    """The tensor names among ``names`` that ``targets`` selects (used when reading a cache)."""
    return [n for n in names if naming.is_adapter_target(n, targets)]
