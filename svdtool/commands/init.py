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
from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svdtool import naming
from svdtool.adapters import layout as lay
from svdtool.adapters.folder import aux_source, write_folder
from svdtool.adapters.output import check_target, copy_aux_files, ensure_space
from svdtool.adapters.peft_format import adapter_dirname
from svdtool.adapters.safetensors_out import (
    INDEX_NAME,
)
from svdtool.commands.common import Progress, SilentProgress, describe_device, manifest, utc_now
from svdtool.commands.init_alloc import GainContext, allocate, rank_cap
from svdtool.commands.init_distributed import finish, shard_jobs, target_owners
from svdtool.commands.init_gradients import lora_ga_gradients, method_extra
from svdtool.commands.init_layers import (
    Target,
    select_targets,
)
from svdtool.commands.init_request import InitRequest, validate
from svdtool.commands.init_stream import estimate_and_stream, planned_bytes, plans, stream
from svdtool.commands.snr_targets import snr_percent, snr_targets
from svdtool.engine.staging import shared_staging
from svdtool.engine.work import Share, request_fields
from svdtool.engine.world import World, current
from svdtool.errors import SvdtoolError
from svdtool.loading import Checkpoint, open_checkpoint, parse_model_spec
from svdtool.loading.checks import check_config_shapes
from svdtool.methods import InitOptions, MethodSpec
from svdtool.results.init import RECONSTRUCTION_TOL, InitResult, InitSettings, LayerInit

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


def run_init(req: InitRequest, progress: Progress | None = None, world: World | None = None) -> InitResult:
    """Write the init folder ``req.out`` and return what ``svdtool.json`` holds.

    Under ``torchrun`` each rank computes and writes whole residual shard files (its share of the plan,
    :mod:`svdtool.commands.init_distributed`); rank 0 writes the adapter, index, ``svdtool.json`` and card,
    and publishes the folder once every rank has succeeded. Every rank returns the same result.
    """
    progress = progress or SilentProgress()
    world = world or current()
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
    with ckpt:
        with world.phase():
            infos = ckpt.tensors()
            layout = lay.resolve_layout(ckpt.meta.config, infos)
            percent = snr_percent(req.targets)
            tokens = req.targets if percent is None else snr_targets(ckpt, infos, percent, device, progress)
            targets = select_targets(layout, infos, tokens, req.rank)
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
            result = _result(req, spec, opts, ckpt, layout, targets, layers, files, device, started, world)
            result.allocation = allocation
            result.manifest.timings.update(timings)
            with world.phase():
                if world.main:
                    if not spec.keeps_base:
                        result.copied_files = copy_aux_files(aux_source(ckpt, req.token), tmp)
                    result.manifest.timings["total"] = round(time.perf_counter() - t_start, 4)
                    write_folder(result, tmp, req.out.name)
    return result


def _result(
    req: InitRequest,
    spec: MethodSpec,
    opts: InitOptions,
    ckpt: Checkpoint,
    layout: lay.ModelLayout,
    targets: list[Target],
    layers: list[LayerInit],
    files: list[str],
    device: torch.device,
    started: str,
    world: World,
) -> InitResult:
    chosen = [t.module for t in targets]
    alloc = req.rank_alloc != "uniform"
    dtypes = Counter(t.info.dtype for t in targets)
    residual_dtype = dtypes.most_common(1)[0][0]
    tol = max(RECONSTRUCTION_TOL.get(d, 1e-2) for d in dtypes)
    notes = list(layout.notes)
    if len(dtypes) > 1:
        notes.append(f"targets have several dtypes: {dict(dtypes)}")
    settings = InitSettings(
        method=spec.name,
        rank=opts.rank,
        alpha=opts.alpha,
        use_rslora=opts.use_rslora,
        scaling=opts.scaling,
        targets=list(req.targets),
        target_modules=naming.peft_target_modules(chosen, layout.all_modules),
        svd=req.svd,
        oversample=opts.extra.get("oversample") if req.svd == "randomized" else None,
        niter=opts.extra.get("niter") if req.svd == "randomized" else None,
        seed=req.seed,
        device=req.device,
        extra={k: v for k, v in req.extra.items() if isinstance(v, (int, float, str, bool)) or v is None},
        rank_alloc=req.rank_alloc,
        rank_pattern={x.module: int(x.rank or opts.rank) for x in layers} if alloc else {},
        alpha_pattern={x.module: float(x.alpha or opts.alpha) for x in layers} if alloc else {},
    )
    if req.svd == "randomized":
        from svdtool.methods.pissa import NITER, OVERSAMPLE

        if spec.name == "lora-ga":  # the reference's svd_lowrank(q = 4r, niter = 4)
            from svdtool.methods.lora_ga import NITER

            OVERSAMPLE = 2 * opts.rank  # noqa: N806
        settings.oversample = settings.oversample if settings.oversample is not None else OVERSAMPLE
        settings.niter = settings.niter if settings.niter is not None else NITER
    quantization = None
    if spec.quantizes:
        quantization = _quantization(opts, residual_dtype, layers)
        tol = max(float(x.extra["nf4_error"]) for x in layers)
        notes.append(
            "the residual is quantised to NF4 when loaded: the error is ‖W − (Q(W_res) + s·B·A)‖/‖W‖, and the "
            "tolerance the largest plain-NF4 error ‖W − Q(W)‖/‖W‖"
        )
    return InitResult(
        manifest=manifest(
            "init",
            req.command,
            ckpt.meta,
            device=world.label(describe_device(device)),
            dtypes=dict(dtypes),
            methods=dict(Counter(x.algorithm for x in layers)),
            started=started,
            timings={},
            extra_versions=("transformers", "peft"),
        ),
        settings=settings,
        method_summary=spec.summary,
        paper=spec.paper,
        frozen=list(spec.frozen),
        adapter_dir=adapter_dirname(spec.name),
        base_model_name_or_path=_original_ref(req, ckpt) if spec.keeps_base else str(req.out.expanduser().resolve()),
        model_class=layout.model_class,
        task_type=layout.task_type,
        residual_dtype=residual_dtype,
        residual_files=[*files, INDEX_NAME] if files else [],
        copied_files=[],
        layers=layers,
        reconstruction_tol=tol,
        max_reconstruction_error=max((x.reconstruction_error for x in layers), default=0.0),
        notes=notes,
        base="original" if spec.keeps_base else "residual",
        changes_output=spec.changes_output,
        init_lora_weights=spec.init_lora_weights,
        quantization=quantization,
    )


def _quantization(opts: InitOptions, dtype: str, layers: list[LayerInit]) -> dict[str, Any]:
    from svdtool.methods.quantized import settings
    from svdtool.quant.load_config import quantization_record

    q = settings(opts.extra)
    return quantization_record(
        quant=q.quant,
        double_quant=q.config.double_quant,
        iters=q.iters,
        backend=q.config.backend,
        dtype=dtype,
        ratios=[float(x.extra["quant_ratio"]) for x in layers],
    )


def _original_ref(req: InitRequest, ckpt: Checkpoint) -> str:
    """What a trainer passes to ``from_pretrained`` for the original: its absolute folder, or its repo id."""
    if ckpt.meta.kind in ("folder", "file"):
        path = Path(req.model).expanduser().resolve()
        return str(path if path.is_dir() else path.parent)
    parsed = parse_model_spec(req.model, req.revision)
    return parsed[0] if parsed else req.model
