"""The ``InitResult`` (what ``svdtool.json`` holds) of one ``svdtool init`` run, from its settings and layers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svdtool import naming
from svdtool.adapters import layout as lay
from svdtool.adapters.peft_format import adapter_dirname
from svdtool.adapters.safetensors_out import INDEX_NAME
from svdtool.commands.common import describe_device, manifest
from svdtool.commands.init_layers import Target
from svdtool.commands.init_request import InitRequest
from svdtool.engine.world import World
from svdtool.loading import Checkpoint, parse_model_spec
from svdtool.methods import InitOptions, MethodSpec
from svdtool.results.init import RECONSTRUCTION_TOL, InitResult, InitSettings, LayerInit

if TYPE_CHECKING:
    import torch


def build_result(
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
