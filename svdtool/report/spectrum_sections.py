"""The sections a spectrum result contributes: the claim, σ histograms, rank coverage, energy, per layer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from svdtool.report import spectrum_plots as plots
from svdtool.report.analytics_sections import analytics_section
from svdtool.report.model import Block, Callout, Section
from svdtool.report.tables import AUX_LABELS, Cell, Column, Table, record_table, text
from svdtool.spectrum import PER_HEAD

if TYPE_CHECKING:
    from svdtool.results.spectrum import MatrixSpectrum, SpectrumResult


def _group_columns(ranks: list[int]) -> list[tuple[str, str | None, str]]:
    return [
        ("matrices", None, "int:matrices"),
        ("σ count", "number of singular values", "int:singular_values"),
        ("in band", "fraction of raw σ inside [LO, HI], pooled", "fraction:in_range_fraction"),
        ("σ₁ mean", "mean spectral norm", "sigma:sigma_max_mean"),
        ("stable rank", "mean ‖W‖²_F/σ₁²", "rank:stable_rank_mean"),
        ("eff. rank", "mean Roy–Vetterli effective rank", "rank:effective_rank_mean"),
        *[(f"E({r})", f"mean energy of the top {r}", f"fraction:energy_at_rank_mean.{r}") for r in ranks],
    ]


_PER_HEAD_NOTE = (
    ", or split q/k/v/o into one matrix per attention head as a Keras/JAX checkpoint stores them (per-head"
    " row; other matrices as stored)"
)


def _matrix_label(m: MatrixSpectrum) -> list[Cell]:
    return [text(m.name), text(m.module_type), text(m.layer), text("×".join(str(d) for d in m.shape))]


_MATRIX_LABELS = ("name", "type", "layer", "shape")


def claim_section(result: SpectrumResult, sigmas: dict[str, np.ndarray] | None) -> Section:
    c = result.claim
    holds = c.holds_with_embeddings
    per_head = _PER_HEAD_NOTE if any(f.normalisation == PER_HEAD for f in c.fractions) else ""
    callout = Callout(
        status="pass" if holds else "fail",
        label=f"The claim {'holds' if holds else 'does NOT hold'}",
        text=c.verdict,
    )
    fractions = record_table(
        "claim-fractions",
        f"Fraction of σ in [{c.lo:g}, {c.hi:g}] under each normalisation",
        "spectrum.claim.fractions",
        c.fractions,
        "normalisation",
        [
            ("with embeddings", "pooled over all matrices", "fraction:with_embeddings"),
            ("without embeddings", "pooled, embeddings left out", "fraction:without_embeddings"),
            ("mean per matrix", "mean of each matrix's own fraction, with embeddings", "fraction:per_matrix_mean_with"),
            ("mean per matrix w/o emb.", None, "fraction:per_matrix_mean_without"),
            ("σ with", None, "int:count_with"),
            ("σ without", None, "int:count_without"),
        ],
        label=lambda f: [text(f.normalisation)],
        label_columns=("normalisation",),
        open=True,
    )
    groups = record_table(
        "by-module-type",
        "Per module type",
        "spectrum.by_module_type",
        result.by_module_type,
        "key",
        _group_columns(result.options.ranks),
        label=lambda g: [text(g.key)],
        label_columns=("module type",),
    )
    section = Section(
        id="claim",
        title="The claim",
        intro=[
            f"Claim checked: at least {100 * c.claimed:g}% of all singular values lie in [{c.lo:g}, {c.hi:g}]. "
            f"Raw σ are the singular values of the weights as stored; the other rows rescale each matrix first "
            f"(by its σ₁, or by √max(n, m)){per_head}. "
            f"Embeddings: {', '.join(c.embeddings) or 'none'}."
        ],
        callout=callout,
        tables=[fractions, groups],
    )
    if sigmas is None:
        section.notes.append(
            f"No {result.SIDECAR} next to {result.JSON}: the histograms need the raw singular values and are left out."
        )
    else:
        figures = plots.sigma_histograms(result, sigmas)
        section.blocks = [Block(figures[:1], "wide"), Block(figures[1:], "grid", "One panel per module type.")]
    return section


def coverage_section(result: SpectrumResult) -> Section:
    ranks = result.options.ranks
    energy = record_table(
        "matrix-energy",
        "Energy captured by the top r, per matrix",
        "spectrum.matrices",
        result.matrices,
        "name",
        [
            *[(f"E({r})", f"Σ_(i≤{r}) σᵢ² / Σσᵢ²", f"fraction:energy_at_rank.{r}") for r in ranks],
            *[
                (f"r for {100 * float(level):g}%", f"smallest r with E(r) ≥ {level}", f"int:rank_for_energy.{level}")
                for level in (result.matrices[0].rank_for_energy if result.matrices else {})
            ],
        ],
        label=_matrix_label,
        label_columns=_MATRIX_LABELS,
        aux=AUX_LABELS,
    )
    layer_groups = record_table(
        "by-layer",
        "Per layer (means over the layer's matrices)",
        "spectrum.by_layer",
        result.by_layer,
        "key",
        _group_columns(ranks),
        label=lambda g: [text(g.key)],
        label_columns=("layer",),
    )
    return Section(
        id="rank-coverage",
        title="Rank coverage",
        intro=[
            "Each cell is E(r) = Σ_(i≤r) σᵢ² / Σσᵢ², the share of a matrix's squared Frobenius norm held by its "
            "top r singular directions: what a rank-r adapter initialised from the top of the spectrum (PiSSA) "
            "starts with, and 1 − E(r) is the squared relative error of the best rank-r approximation."
        ],
        blocks=[Block(plots.coverage_heatmaps(result), "grid")],
        tables=[energy, layer_groups],
    )


def energy_section(result: SpectrumResult, sigmas: dict[str, np.ndarray] | None) -> Section | None:
    if sigmas is None:
        return None
    figures = plots.energy_curves(result, sigmas)
    return Section(
        id="energy",
        title="Cumulative energy",
        intro=[
            "E(r) against r for every r from 1 to k, per module type. A curve that rises steeply concentrates its "
            "energy in few directions (low-rank friendly); a straight diagonal on this log axis means a flat spectrum."
        ],
        blocks=[Block(figures[:1], "wide"), Block(figures[1:], "grid")],
    )


def layer_section(result: SpectrumResult) -> Section:
    metrics = record_table(
        "matrix-metrics",
        "Spectrum metrics, per matrix",
        "spectrum.matrices",
        result.matrices,
        "name",
        [
            ("k", "number of singular values, min(n, m)", "int:count"),
            ("σ₁", "largest singular value (spectral norm)", "sigma:sigma_max"),
            ("σ_k", "smallest singular value", "sigma:sigma_min"),
            ("‖W‖_F", "Frobenius norm", "sigma:frobenius"),
            ("‖W‖_*", "nuclear norm Σσ", "sigma:nuclear"),
            ("stable rank", "‖W‖²_F/σ₁²", "rank:stable_rank"),
            ("eff. rank", "Roy–Vetterli effective rank", "rank:effective_rank"),
            ("cond.", "σ₁/σ_k (∞ when numerically rank-deficient)", "sigma:condition_number"),
            ("num. rank", "#σ above σ₁·max(n,m)·eps", "int:numerical_rank"),
            ("in band", "fraction of raw σ in [LO, HI]", "fraction:in_range_fraction"),
        ],
        label=lambda m: [*_matrix_label(m), text(m.dtype), text(m.method)],
        label_columns=(*_MATRIX_LABELS, "dtype", "method"),
        aux=AUX_LABELS,
    )
    return Section(
        id="per-layer",
        title="σ₁, stable rank and effective rank per layer",
        intro=[
            "σ₁ is the spectral norm. The stable rank ‖W‖²_F/σ₁² counts how many directions carry energy comparable "
            "to the largest; the effective rank exp(H(σ/Σσ)) is the exponential of the entropy of the normalised "
            "spectrum. Both lie between 1 and k; a lower value means a more concentrated spectrum."
        ],
        blocks=[Block(plots.layer_metrics(result), "grid")],
        tables=[metrics],
    )


def skipped_table(result: SpectrumResult) -> Table | None:
    if not result.skipped:
        return None
    table = Table(
        id="skipped",
        caption=f"Tensors not analysed ({len(result.skipped)})",
        source="spectrum.skipped",
        key_field="name",
        columns=[Column("name"), Column("shape"), Column("reason")],
    )
    for s in result.skipped:
        table.rows.append((s.name, [text(s.name), text("×".join(str(d) for d in s.shape)), text(s.reason)]))
    return table


def spectrum_sections(result: SpectrumResult, sigmas: dict[str, np.ndarray] | None) -> list[Section]:
    sections = [claim_section(result, sigmas), coverage_section(result)]
    if (energy := energy_section(result, sigmas)) is not None:
        sections.append(energy)
    layers = layer_section(result)
    if (skipped := skipped_table(result)) is not None:
        layers.tables.append(skipped)
    sections.append(layers)
    if (analytics := analytics_section(result, sigmas)) is not None:
        sections.append(analytics)
    return sections


def spectrum_facts(result: SpectrumResult) -> list[tuple[str, str]]:
    m = result.manifest
    params = sum(int(np.prod(x.shape)) for x in result.matrices)
    return [
        ("model", m.model),
        ("revision", m.revision or "—"),
        ("commit", m.sha or "—"),
        ("source", m.source_kind),
        ("dtype", ", ".join(f"{k} ({v} matrices)" for k, v in m.dtypes.items()) or "—"),
        ("parameters", f"{params:,} in {len(result.matrices)} matrices (2-D weights analysed)"),
        ("singular values", f"{sum(x.count for x in result.matrices):,}"),
        ("computed on", f"{m.device}; " + ", ".join(f"{k} ×{v}" for k, v in m.methods.items())),
        ("run time", f"{m.timings.get('total', 0.0):.1f} s"),
    ]
