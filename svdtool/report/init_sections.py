"""The section an init result (``svdtool.json``) contributes: reconstruction error and adapter energy per layer."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from svdtool.report.model import Block, Callout, Section
from svdtool.report.plots import layer_heatmap, layer_lines
from svdtool.report.tables import AUX_LABELS, fmt, record_table, text

if TYPE_CHECKING:
    from svdtool.results.init import InitResult, LayerInit


def _settings(result: InitResult) -> str:
    s = result.settings
    svd = s.svd if s.svd == "exact" else f"{s.svd} (oversample {s.oversample}, {s.niter} power iterations)"
    text_ = (
        f"Rank r = {s.rank}, α = {s.alpha:g}, scaling s = {s.scaling:g}"
        + (" (rsLoRA: α/√r)" if s.use_rslora else " (α/r)")
        + f"; target modules: {', '.join(s.target_modules)}; SVD: {svd}; seed {s.seed}. "
        f"The adapter is in {result.adapter_dir}/ and the residual base weights W_res are stored in "
        f"{result.residual_dtype}."
    )
    if result.frozen:
        text_ += f" Keep {', '.join(result.frozen)} frozen while training."
    return text_


def init_sections(result: InitResult) -> list[Section]:
    s = result.settings
    ok = result.max_reconstruction_error <= result.reconstruction_tol
    q = result.quantization
    base = "Q(W_res)" if q else "W_res"  # Q: the trainer's 4-bit NF4 load of the residual
    callout = Callout(
        status="pass" if ok else "fail",
        label=f"{base} + s·B·A reproduces W" if ok else "Reconstruction error above tolerance",
        text=(
            f"Largest relative error ‖W − ({base} + s·B·A)‖_F / ‖W‖_F over {len(result.layers)} layers: "
            f"{fmt(result.max_reconstruction_error, 'error')} "
            f"({'within' if ok else 'above'} the "
            + ("plain-NF4 error ‖W − Q(W)‖/‖W‖" if q else f"{result.residual_dtype} tolerance")
            + f" {fmt(result.reconstruction_tol, 'error')})."
            + (f" Median ‖W − (Q(W_res) + s·B·A)‖/‖W − Q(W)‖: {q['median_ratio']:.4f}." if q else "")
        ),
    )
    figures = [
        layer_lines(
            result.layers,
            lambda x: x.reconstruction_error,
            id="init-error",
            title="Reconstruction error per layer",
            ylabel="‖W − (W_res + s·B·A)‖_F / ‖W‖_F",
            log=True,
            limit=(result.reconstruction_tol, f"tolerance {fmt(result.reconstruction_tol, 'error')}"),
        ),
        layer_heatmap(
            result.layers,
            lambda x: x.energy_share,
            id="init-energy",
            title="Adapter energy per layer",
            heading=f"‖s·B·A‖²_F / ‖W‖²_F at r = {s.rank}: %",
            what="the share of each weight's squared Frobenius norm held by the adapter",
        ),
    ]
    if any(x.topr_error is not None for x in result.layers):
        figures.append(
            layer_lines(
                result.layers,
                lambda x: x.topr_error,
                id="init-topr",
                title="Randomized SVD: error against the exact top r",
                ylabel="‖s·B·A − U_r S_r V_rᵀ‖_F / ‖U_r S_r V_rᵀ‖_F",
                log=True,
            )
        )

    def label(x: LayerInit) -> list:  # type: ignore[type-arg]
        return [text(x.name), text(x.module_type), text(x.layer), text("×".join(map(str, x.shape))), text(x.algorithm)]

    layers = record_table(
        "init-layers",
        "Initialised weights",
        "init.layers",
        result.layers,
        "name",
        [
            ("energy", "‖s·B·A‖²_F / ‖W‖²_F", "fraction:energy_share"),
            ("recon. error", "‖W − (W_res + s·B·A)‖_F / ‖W‖_F", "error:reconstruction_error"),
            ("top-r error", "randomized SVD only: error against the exact top r", "error:topr_error"),
            *([("NF4 ratio", "‖W − (Q(W_res) + s·B·A)‖_F / ‖W − Q(W)‖_F", "sigma:extra.quant_ratio")] if q else []),
            ("residual", "certified maxᵢ ‖W vᵢ − σᵢ uᵢ‖/σ₁", "error:certified_residual"),
            ("σ₁", "largest singular value held by the adapter", "sigma:sigma.0"),
            ("σ_r", "smallest singular value held by the adapter", f"sigma:sigma.{s.rank - 1}"),
        ],
        label=label,
        label_columns=("name", "type", "layer", "shape", "algorithm"),
        aux=AUX_LABELS,
    )
    return [
        Section(
            id="init",
            title=f"Adapter initialisation: {s.method}",
            intro=[f"{s.method}: {result.method_summary}. {result.paper}.", _settings(result), *result.notes],
            callout=callout,
            blocks=[Block([f for f in figures if f is not None], "grid")],
            tables=[layers],
        )
    ]


def init_facts(result: InitResult) -> list[tuple[str, str]]:
    m, s = result.manifest, result.settings
    params = sum(math.prod(x.shape) for x in result.layers)
    adapter = sum(s.rank * sum(x.shape) for x in result.layers)
    return [
        ("model", m.model),
        ("revision", m.revision or "—"),
        ("commit", m.sha or "—"),
        ("source", m.source_kind),
        ("dtype", result.residual_dtype),
        ("parameters", f"{params:,} in {len(result.layers)} target matrices; adapter {adapter:,}"),
        ("method", f"{s.method}, r = {s.rank}"),
        ("computed on", m.device),
        ("run time", f"{m.timings.get('total', 0.0):.1f} s"),
    ]
