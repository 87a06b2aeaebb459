"""``svdtool spectrum``: stream a checkpoint, compute every 2-D weight's singular values, check the claim."""

from __future__ import annotations

import time
from collections import Counter
from contextlib import closing
from dataclasses import astuple, dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from svdtool import naming
from svdtool.commands.common import (
    Progress,
    SilentProgress,
    describe_device,
    manifest,
    utc_now,
    write_result_with_sigmas,
)
from svdtool.commands.per_head import PerHeadSigmas
from svdtool.commands.snr_files import write_axolotl_files
from svdtool.engine.plan import Job, matrix_cost
from svdtool.engine.pool import Computed, compute_all, plan_workers
from svdtool.engine.work import Share, request_fields
from svdtool.engine.world import World, current
from svdtool.errors import SvdtoolError
from svdtool.loading import FLOAT_DTYPES, GGUF_PREFIX, Checkpoint, TensorInfo, open_checkpoint
from svdtool.nonfinite import ADVICE, TimedCheck
from svdtool.results.spectrum import SkippedTensor, SpectrumOptions, SpectrumResult
from svdtool.spectrum import claim_check, matrix_spectrum, summarize

if TYPE_CHECKING:
    import torch

    from svdtool.engine.pool import Worker


@dataclass
class SpectrumRequest:
    model: str
    revision: str | None = None
    token: str | None = None
    stream: bool = False
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    ranks: list[int] = field(default_factory=lambda: [8, 16, 32, 64, 128])
    lo: float = 0.1
    hi: float = 1.1
    claimed: float = 0.99
    device: str = "auto"
    cpu_workers: int | None = None  # None: as many as the cores allow (see engine.pool.plan_workers)
    top_percent: int | None = None  # write Spectrum's selection of the top P% per type for Axolotl
    power_law: bool = True  # WeightWatcher's power-law fit (α, xmin, D, …) per matrix
    command: list[str] = field(default_factory=list)


@dataclass
class SpectrumRun:
    """A result plus the raw singular values (name -> σ, float64, descending) for the sidecar."""

    result: SpectrumResult
    sigmas: dict[str, np.ndarray]


def _analysable(info: TensorInfo) -> str | None:
    """Why a tensor is not analysed, or None when it is a matrix we can decompose."""
    if len(info.shape) < 2:
        return "1-D"
    if len(info.shape) > 2:
        return f"{len(info.shape)}-D (not a matrix)"
    if min(info.shape) == 0:
        return "empty"
    # GGUF quantized types are dequantized by the reader; integer and fp8 tensors are not weights we model.
    if info.dtype not in FLOAT_DTYPES and not info.dtype.startswith(GGUF_PREFIX):
        return f"dtype {info.dtype} is not a float type"
    return None


def plan(ckpt: Checkpoint, include: list[str], exclude: list[str]) -> tuple[list[TensorInfo], list[SkippedTensor]]:
    """The matrices to analyse and the tensors skipped (with reasons). 1-D tensors are skipped quietly."""
    chosen, skipped = [], []
    for info in ckpt.tensors():
        if not naming.selected(info.name, include, exclude):
            continue
        reason = _analysable(info)
        if reason is None:
            chosen.append(info)
        elif reason != "1-D":
            skipped.append(SkippedTensor(info.name, list(info.shape), reason))
    return chosen, skipped


def vector_weights(ckpt: Checkpoint, include: list[str], exclude: list[str]) -> list[str]:
    """The selected 1-D ``.weight`` tensors (norms): Spectrum lists them with an SNR of Infinity."""
    return [
        i.name
        for i in ckpt.tensors()
        if len(i.shape) == 1 and i.name.endswith(".weight") and naming.selected(i.name, include, exclude)
    ]


def _device_label(device: torch.device, workers: list[Worker], helpers: int, world: World) -> str:
    if device.type == "cuda" and helpers:
        label = f"{describe_device(device)} + {helpers} CPU processes for band eigenvalues"
    elif device.type == "cpu":
        label = f"{describe_device(device)}, {len(workers)} workers"
    else:
        label = describe_device(device)
    return world.label(label)


def run_spectrum(req: SpectrumRequest, progress: Progress | None = None, world: World | None = None) -> SpectrumRun:
    """Compute the spectrum of every selected 2-D weight of ``req.model``.

    Under ``torchrun`` each rank computes its share of the matrices (:mod:`svdtool.engine.work`); the
    σ of every matrix are gathered on every rank, so every rank returns the same run (only rank 0 prints).
    """
    progress = progress or SilentProgress()
    world = world or current()
    started = utc_now()
    t_start = time.perf_counter()
    with world.phase():
        device = world.device(req.device)
    ckpt = world.first_locally(
        lambda: open_checkpoint(req.model, revision=req.revision, token=req.token, stream=req.stream)
    )
    t_open = time.perf_counter() - t_start
    with ckpt:
        with world.phase():
            infos, skipped = _selection(ckpt, req)
            vectors = vector_weights(ckpt, req.include, req.exclude)
        share = Share.of(world, [Job(i.name, matrix_cost(i.shape, i.nbytes)) for i in infos], request_fields(req))
        mine = share.mine
        for s in skipped:
            progress.message(f"skipping {s.name} {tuple(s.shape)}: {s.reason}")
        label = "spectra" if not world.distributed else f"spectra, rank 0's {len(mine)} of {len(infos)}"
        progress.start(label, len(mine), sum(infos[i].nbytes for i in mine))
        workers, helpers = plan_workers(device, req.cpu_workers, world.cores())
        check = TimedCheck()
        heads = PerHeadSigmas(ckpt.meta.config)  # per-head σ of q/k/v/o from the same single read of each tensor
        with world.phase():
            done, broken = _compute(ckpt, [infos[i] for i in mine], workers, helpers, progress, check, heads)
        # Back to positions in ``infos``: the results are ordered as in one process.
        local = [replace(c, index=mine[c.index]) for c in done]
        everything = share.collect([(local, broken, check.seconds, heads.sigmas)])
    done = [c for part, _, _, _ in everything for c in part]
    per_head = {k: v for _, _, _, heads in everything for k, v in heads.items()}
    order = {info.name: k for k, info in enumerate(infos)}
    damaged = sorted((x for _, part, _, _ in everything for x in part), key=lambda s: order[s.name])
    skipped = damaged + skipped  # the damaged ones first
    if not done:
        raise SvdtoolError(f"every selected matrix of {req.model} has non-finite values (NaN or ±Inf): {ADVICE}")
    label = _device_label(device, workers, helpers, world)
    check_s = sum(x for _, _, x, _ in everything)
    computed = _Computed(done, skipped, per_head, vectors, check_s)
    return SpectrumRun(*_result(req, ckpt, computed, device, label, started, t_open, t_start))


def _selection(ckpt: Checkpoint, req: SpectrumRequest) -> tuple[list[TensorInfo], list[SkippedTensor]]:
    infos, skipped = plan(ckpt, req.include, req.exclude)
    if not infos:
        raise SvdtoolError(
            f"no 2-D weight in {req.model} matches the selection"
            + (f" (--include {','.join(req.include)})" if req.include else "")
            + (f" (--exclude {','.join(req.exclude)})" if req.exclude else "")
        )
    return infos, skipped


def _compute(
    ckpt: Checkpoint,
    infos: list[TensorInfo],
    workers: list[Worker],
    helpers: int,
    progress: Progress,
    check: TimedCheck,
    heads: PerHeadSigmas,
) -> tuple[list[Computed], list[SkippedTensor]]:
    """The local pool over ``infos``: one Computed per finite matrix (completion order), and the damaged ones.

    Each finite weight also goes to ``heads`` on the reader thread, on the device (the per-head claim reading).
    """
    done: list[Computed] = []
    broken: list[SkippedTensor] = []
    if not infos:
        progress.finish()
        return done, broken

    def keep(info: TensorInfo, w: torch.Tensor) -> bool:
        """Before any math: a matrix with NaN or ±Inf is skipped, with its counts (reader thread)."""
        bad = check.counts(w)
        if bad is None:
            heads.take(info, w)
            return True
        broken.append(SkippedTensor(info.name, list(info.shape), f"non-finite values: {bad}", *astuple(bad)))
        progress.advance(info.name, info.nbytes)
        return False

    try:
        on_done = lambda c: progress.advance(c.info.name, c.info.nbytes)  # noqa: E731
        # closing(): an interrupt between two items must still stop and join the threads, here and now.
        with closing(compute_all(ckpt, infos, workers, on_done, helpers, keep)) as computed:
            done = list(computed)
    finally:
        progress.finish()
    return done, broken


@dataclass
class _Computed:
    """What every rank returns: the finite matrices' σ, the tensors skipped, per-head σ, the 1-D weights."""

    done: list[Computed]
    skipped: list[SkippedTensor]
    per_head: dict[str, np.ndarray]
    vectors: list[str]
    check_s: float


def _result(
    req: SpectrumRequest,
    ckpt: Checkpoint,
    computed: _Computed,
    device: torch.device,
    device_label: str,
    started: str,
    t_open: float,
    t_start: float,
) -> tuple[SpectrumResult, dict[str, np.ndarray]]:
    done, skipped, check_s = computed.done, computed.skipped, computed.check_s
    done.sort(key=lambda c: c.index)
    matrices, sigmas, pairs = [], {}, []
    for c in done:
        m = matrix_spectrum(
            c.sigma,
            name=c.info.name,
            module_type=naming.module_type(c.info.name),
            layer=naming.layer_index(c.info.name),
            shape=c.info.shape,
            dtype=c.info.dtype,
            method=c.method,
            ranks=req.ranks,
            lo=req.lo,
            hi=req.hi,
            seconds=c.seconds,
            device=str(device),
            power_law=req.power_law,
        )
        matrices.append(m)
        sigmas[c.info.name] = c.sigma
        pairs.append((m, c.sigma))
    read_s = sum(c.read_seconds for c in done)
    math_s = sum(c.seconds for c in done)
    total = time.perf_counter() - t_start
    result = SpectrumResult(
        manifest=manifest(
            "spectrum",
            req.command,
            ckpt.meta,
            device=device_label,
            dtypes=dict(Counter(m.dtype for m in matrices)),
            methods=dict(Counter(m.method for m in matrices)),
            started=started,
            timings={"open": t_open, "read": read_s, "check": check_s, "math": math_s, "total": total},
        ),
        options=SpectrumOptions(
            ranks=list(req.ranks),
            lo=req.lo,
            hi=req.hi,
            include=list(req.include),
            exclude=list(req.exclude),
            device=req.device,
            top_percent=req.top_percent,
        ),
        matrices=matrices,
        by_module_type=summarize(matrices, "module_type", req.ranks, order=naming.type_sort_key),
        by_layer=summarize(matrices, "layer", req.ranks),
        claim=claim_check(
            pairs,
            lo=req.lo,
            hi=req.hi,
            claimed=req.claimed,
            is_embedding=naming.EMBEDDING_TYPES,
            per_head=computed.per_head,
        ),
        skipped=skipped,
        vectors=computed.vectors,
    )
    return result, sigmas


def write_spectrum(run: SpectrumRun, out_dir: Path) -> list[Path]:
    """Write ``spectrum.json`` and the ``spectra.safetensors`` sidecar into ``out_dir``, each atomically,
    and with ``top_percent`` set the Spectrum tool's SNR JSON and unfrozen-parameters YAML for Axolotl."""
    written = write_result_with_sigmas(
        run.result, run.sigmas, out_dir, json_name=SpectrumResult.JSON, sidecar_name=SpectrumResult.SIDECAR,
        tag="svdtool-spectra",
    )  # fmt: skip
    if run.result.options.top_percent is not None:
        written += write_axolotl_files(run.result, out_dir, run.result.options.top_percent)
    return written


def load_sigmas(out_dir: Path) -> dict[str, np.ndarray]:
    """The raw singular values saved by ``write_spectrum``."""
    from safetensors.numpy import load_file

    return dict(load_file(str(Path(out_dir) / SpectrumResult.SIDECAR)))
