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
    )
    if result.base == "original":
        text_ += (
            f"The adapter is in {result.adapter_dir}/ and belongs on the original model "
            f"({result.base_model_name_or_path}), which the method leaves untouched."
        )
    else:
        text_ += (
            f"The adapter is in {result.adapter_dir}/ and the residual base weights W_res are stored in "
            f"{result.residual_dtype}."
        )
    if s.rank_alloc != "uniform":
        a = result.allocation
        rule = (
            f"PEFT's EVA redistribution, ρ = {s.extra.get('eva_rho')}"
            if s.rank_alloc == "eva"
            else f"greedy marginal gain per parameter, at most {a.get('rank_cap')} per layer"
        )
        text_ += (
            f" Ranks are allocated by {s.rank_alloc} ({rule}) within the budget of r = {s.rank} everywhere: "
            f"{a.get('rank_params', 0):,} of {a.get('rank_budget', 0):,} parameters, gain "
            f"{a.get('rank_gain', 0):.4g} against {a.get('rank_gain_uniform', 0):.4g} at uniform rank; "
            f"layers with no adapter (rank 0): {a.get('rank_dropped', 0)}."
        )
    if result.frozen:
        text_ += f" Keep {', '.join(result.frozen)} frozen while training."
    return text_


def init_sections(result: InitResult) -> list[Section]:
    s = result.settings
    ok = result.max_reconstruction_error <= result.reconstruction_tol
    q = result.quantization
    what, headline = "‖W − (W_res + s·B·A)‖_F / ‖W‖_F", "W_res + s·B·A reproduces W"
    if q:  # Q: the trainer's 4-bit NF4 load of the residual
        what, headline = "‖W − (Q(W_res) + s·B·A)‖_F / ‖W‖_F", "Q(W_res) + s·B·A reproduces W"
    elif result.base == "original" and not result.changes_output:
        what, headline = "‖s·B·A‖_F / ‖W‖_F (base untouched)", "s·B·A = 0: training starts from the original"
    elif result.base == "original":
        headline = "The original base is untouched; the adapter starts one gradient step away"
    callout = Callout(
        status="pass" if ok else "fail",
        label=headline if ok else "Reconstruction error above tolerance",
        text=(
            f"Largest relative error {what} over {len(result.layers)} layers: "
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
    if s.rank_alloc != "uniform":
        figures.append(
            layer_lines(
                result.layers,
                lambda x: x.rank,
                id="init-ranks",
                title=f"Allocated rank per layer ({s.rank_alloc})",
                ylabel="rank",
                limit=(float(s.rank), f"mean rank {s.rank}"),
            )
        )
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
            *([("rank", "this layer's adapter rank", "int:rank")] if s.rank_alloc != "uniform" else []),
            ("energy", "‖s·B·A‖²_F / ‖W‖²_F", "fraction:energy_share"),
            ("recon. error", "‖W − (W_res + s·B·A)‖_F / ‖W‖_F", "error:reconstruction_error"),
            ("top-r error", "randomized SVD only: error against the exact top r", "error:topr_error"),
            *([("NF4 ratio", "‖W − (Q(W_res) + s·B·A)‖_F / ‖W − Q(W)‖_F", "sigma:extra.quant_ratio")] if q else []),
            ("residual", "certified maxᵢ ‖W vᵢ − σᵢ uᵢ‖/σ₁", "error:certified_residual"),
            *(_sigma_columns(result) if all(x.sigma for x in result.layers) else []),
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


def _sigma_columns(result: InitResult) -> list[tuple[str, str | None, str]]:
    """σ₁ and σ_r of the layers' records (OLoRA and orthogonal have none; under --rank-alloc r varies)."""
    last = "-1" if result.settings.rank_alloc != "uniform" else str(result.settings.rank - 1)
    return [
        ("σ₁", "largest singular value held by the adapter", "sigma:sigma.0"),
        ("σ_r", "smallest singular value held by the adapter", f"sigma:sigma.{last}"),
    ]


def init_facts(result: InitResult) -> list[tuple[str, str]]:
    m, s = result.manifest, result.settings
    params = sum(math.prod(x.shape) for x in result.layers)
    adapter = sum((x.rank or s.rank) * sum(x.shape) for x in result.layers)
    return [
        ("model", m.model),
        ("revision", m.revision or "—"),
        ("commit", m.sha or "—"),
        ("source", m.source_kind),
        ("dtype", result.residual_dtype),
        ("parameters", f"{params:,} in {len(result.layers)} target matrices; adapter {adapter:,}"),
        (
            "method",
            f"{s.method}, r = {s.rank}"
            + (f" (mean; --rank-alloc {s.rank_alloc})" if s.rank_alloc != "uniform" else ""),
        ),
        ("computed on", m.device),
        ("run time", f"{m.timings.get('total', 0.0):.1f} s"),
    ]
