"""``svdtool init``: an SVD-initialised LoRA adapter written beside an exact residual base checkpoint.

The source is streamed tensor by tensor. Target weights go to the device, through the method
(:mod:`svdtool.methods`), and out as W_res in the source dtype plus float32 A and B; every other
tensor is copied bit for bit. Everything lands in a temporary folder beside DIR that is renamed
onto DIR only when complete (:mod:`svdtool.adapters.output`).

Methods with ``needs_gradient`` (LoRA-GA) receive ``gradient=`` (out, in) float32 for each target,
taken from ``InitRequest.gradients``: a mapping or a callable keyed by the checkpoint tensor name
(``model.layers.0.self_attn.q_proj.weight``) that returns the gradient *as the parameter is stored*
(GPT-2 Conv1D: (in, out)); it is transposed here like the weight.

Methods with ``keeps_base`` (MiCA, orthogonal, LoRA-One) leave W alone: only the targets are read and only the
adapter is written, with ``base_model_name_or_path`` pointing at the original model; DIR holds no weights.
``rank_alloc`` other than ``uniform`` gives each layer its own rank under the budget of rank r everywhere
(:mod:`svdtool.commands.init_alloc`), written as PEFT's ``rank_pattern``/``alpha_pattern``.
"""

from __future__ import annotations

import time
from contextlib import ExitStack
from dataclasses import replace
from typing import TYPE_CHECKING

from svdtool.adapters import layout as lay
from svdtool.adapters import layout_process
from svdtool.adapters.folder import aux_source, write_folder
from svdtool.adapters.layout_process import guess
from svdtool.adapters.output import check_target, copy_aux_files, ensure_space
from svdtool.adapters.peft_format import adapter_dirname
from svdtool.commands.common import Progress, SilentProgress, utc_now
from svdtool.commands.init_alloc import GainContext, allocate, rank_cap
from svdtool.commands.init_distributed import finish, shard_jobs, target_owners
from svdtool.commands.init_gradients import lora_ga_gradients, method_extra
from svdtool.commands.init_layers import (
    select_targets,
)
from svdtool.commands.init_request import InitRequest, validate
from svdtool.commands.init_result import build_result
from svdtool.commands.init_stream import estimate_and_stream, planned_bytes, plans, stream
from svdtool.commands.snr_targets import snr_percent, snr_targets
from svdtool.engine.staging import shared_staging
from svdtool.engine.work import Share, request_fields
from svdtool.engine.world import World, current
from svdtool.errors import SvdtoolError
from svdtool.loading import Checkpoint, open_checkpoint
from svdtool.loading.checks import check_config_shapes
from svdtool.methods import InitOptions
from svdtool.results.init import InitResult

if TYPE_CHECKING:
    import torch


def _open(req: InitRequest) -> Checkpoint:
    ckpt = open_checkpoint(req.model, revision=req.revision, token=req.token, stream=req.stream)
    if ckpt.meta.kind == "gguf":
        ckpt.close()
        raise SvdtoolError(f"{req.model} is a GGUF file: init reads and writes safetensors checkpoints")
    if not ckpt.meta.config:
        ckpt.close()
        raise SvdtoolError(f"{req.model} has no config.json: init writes a full Hugging Face checkpoint and needs it")
    try:
        check_config_shapes(ckpt.meta.config, ckpt.tensors(), req.model)
    except SvdtoolError:
        ckpt.close()
        raise
    return ckpt


class _Relayout(Exception):
    """The model class's layout selects other targets than the tensor names' guess the work started from."""

    def __init__(self, layout: lay.ModelLayout) -> None:
        super().__init__("layout differs")
        self.layout = layout


def run_init(req: InitRequest, progress: Progress | None = None, world: World | None = None) -> InitResult:
    """Write the init folder ``req.out`` and return what ``svdtool.json`` holds.

    Under ``torchrun`` each rank computes and writes whole residual shard files (its share of the plan,
    :mod:`svdtool.commands.init_distributed`); rank 0 writes the adapter, index, ``svdtool.json`` and card,
    and publishes the folder once every rank has succeeded. Every rank returns the same result.

    Methods without statistics or gradients start from the tensor names' layout while a child process builds
    the model class's (:mod:`svdtool.adapters.layout_process`); if the two select different targets, the
    staging folder is dropped and the run starts over with the model class's layout.
    """
    progress = progress or SilentProgress()
    world = world or current()
    try:
        return _run_init(req, progress, world, None)
    except _Relayout as again:
        return _run_init(req, progress, world, again.layout)


def _run_init(req: InitRequest, progress: Progress, world: World, known: lay.ModelLayout | None) -> InitResult:
    with world.phase():
        spec = validate(req)
        collects = spec.statistic and req.statistics is None
        if world.distributed and (spec.keeps_base or collects):
            what = "estimates its statistics" if collects else "writes only an adapter"
            raise SvdtoolError(
                f"--method {spec.name} {what} in one process: run it without torchrun (see docs/distributed.md)"
            )
        if world.distributed and spec.needs_gradient and req.gradients is None and req.rank_alloc != "uniform":
            raise SvdtoolError(
                f"--rank-alloc {req.rank_alloc} with estimated gradients runs in one process: under torchrun each "
                "rank holds only the gradients of the files it writes"
            )
        check_target(req.out, req.overwrite)
        device = world.device(req.device)
    started = utc_now()
    t_start = time.perf_counter()
    ckpt = world.first_locally(lambda: _open(req))
    with ckpt, ExitStack() as stack:
        with world.phase():
            infos = ckpt.tensors()
            t_layout = time.perf_counter()
            # The model class's layout imports transformers (seconds on a cold start): a plain decoder's follows
            # from its names; otherwise it is built beside the work where the method needs nothing else from
            # transformers, else here.
            background = None
            plain = None if known else lay.plain_decoder_layout(ckpt.meta.config, infos)
            if known is None and plain is None and not (spec.statistic or spec.needs_gradient or world.distributed):
                background = layout_process.background(req.model, ckpt.meta.config, infos)
                stack.callback(background.close)
            else:
                layout_process.discard(req.model)  # a child the CLI started that this run does not use
            child = background is not None and background.started
            layout = guess(ckpt.meta.config, infos) if child else None
            layout = layout or known or plain or lay.resolve_layout(ckpt.meta.config, infos)
            layout_seconds = time.perf_counter() - t_layout
            percent = snr_percent(req.targets)
            tokens = req.targets if percent is None else snr_targets(ckpt, infos, percent, device, progress)
            try:
                targets = select_targets(layout, infos, tokens, req.rank)
            except SvdtoolError:
                if background is None or not background.started:
                    raise
                layout, background = background.result(), None  # the error, if any, is the real layout's
                targets = select_targets(layout, infos, tokens, req.rank)
            selected = targets
        if background is None:
            for note in layout.notes:
                progress.message(note)
        # Before minutes of gradient work: room for the output on the target file system.
        ensure_space(req.out, planned_bytes([] if spec.keeps_base else infos, targets))
        alpha = float(req.alpha if req.alpha is not None else req.rank)
        estimate = spec.needs_gradient and req.gradients is None and req.gradient_request is not None
        # With uniform ranks the init stream can start beside the estimate (init_stream.estimate_and_stream); an
        # allocation needs every gradient first.
        overlap = estimate and req.rank_alloc == "uniform" and not world.distributed
        agreed = request_fields(req)  # what the ranks compare: before the estimate adds its per-rank timings
        if estimate and not overlap:
            # Only now that the method, rank and targets are known to be valid: the estimate takes minutes.
            # Under --rank-alloc each G keeps enough triplets for the largest rank a layer may get.
            assert req.gradient_request is not None
            gradients, provenance = lora_ga_gradients(
                req.gradient_request,
                rank=req.rank if req.rank_alloc == "uniform" else rank_cap(req.rank, targets, spec.directions),
                method_options=method_extra(req.rank, req.svd, req.seed, req.oversample, req.niter, req.extra),
                progress=progress,
                make_reducer=spec.reducer,
                owners=target_owners(world, plans(infos, targets, req.max_shard_bytes)[0], targets)
                if world.distributed
                else None,
            )
            req = replace(req, gradients=gradients, extra={**req.extra, **provenance})
        if spec.statistic and req.statistics is None and req.activation_request is not None:
            from svdtool.commands.init_statistics import activation_statistics

            stats, prov = activation_statistics(
                req.activation_request, spec.statistic, rank=req.rank, extra=req.extra, progress=progress
            )
            req = replace(req, statistics=stats, extra={**req.extra, **prov})
        if spec.rank_gain == "eva":  # EVA's own redistribution (PEFT's), already in its statistics
            from svdtool.commands.init_statistics import eva_targets

            targets, allocation = eva_targets(targets, req.statistics)
            req = replace(req, rank_alloc="eva")
        extra = method_extra(req.rank, req.svd, req.seed, req.oversample, req.niter, req.extra)
        if spec.rank_gain != "eva":
            ctx = GainContext(ckpt, req.gradients, device, spec.directions, extra, spec.energy_sigma)
            targets, allocation = allocate(req.rank_alloc, targets, req.rank, ctx, progress)
        opts = InitOptions(rank=req.rank, alpha=alpha, use_rslora=req.use_rslora, extra=extra)
        shards, _ = plans([] if spec.keeps_base else infos, targets, req.max_shard_bytes)
        share = Share.of(world, shard_jobs(shards, targets), agreed)
        with shared_staging(world, req.out, req.overwrite, progress.message) as tmp:
            if world.distributed:
                kept: list[tuple[str, torch.Tensor]] = []
                with world.phase():
                    layers, timings, files = stream(
                        ckpt, infos, targets, spec, opts, req, device, tmp, progress, share=share, kept=kept
                    )
                adapter_dir = tmp / adapter_dirname(spec.name)
                _, adapter_plan = plans([], targets, req.max_shard_bytes)
                layers, timings = finish(share, targets, layers, timings, kept, adapter_dir, adapter_plan, shards)
            elif overlap:
                prepare = round(time.perf_counter() - t_start, 4)
                req, (layers, timings, files) = estimate_and_stream(
                    ckpt, infos, targets, spec, opts, req, device, tmp, progress
                )
                timings["prepare"] = prepare
            else:
                layers, timings, files = stream(ckpt, infos, targets, spec, opts, req, device, tmp, progress)
            if background is not None:  # the work ran on the names' guess: check it against the model class
                layout = background.result()
                layout_seconds += background.waited
                if select_targets(layout, infos, tokens, req.rank) != selected:
                    raise _Relayout(layout)
                for note in layout.notes:
                    progress.message(note)
            result = build_result(req, spec, opts, ckpt, layout, targets, layers, files, device, started, world)
            result.allocation = allocation
            result.manifest.timings.update(timings)
            # "layout": seconds the run waited for the model class's layout; "layout_child": 1 when a child built it
            result.manifest.timings["layout"] = round(layout_seconds, 4)
            result.manifest.timings["layout_child"] = int(child)
            with world.phase():
                if world.main:
                    if not spec.keeps_base:
                        result.copied_files = copy_aux_files(aux_source(ckpt, req.token), tmp)
                    result.manifest.timings["total"] = round(time.perf_counter() - t_start, 4)
                    write_folder(result, tmp, req.out.name)
    return result
