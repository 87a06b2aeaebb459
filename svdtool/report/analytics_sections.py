"""The section the spectral analytics contribute: WeightWatcher's α, the ESD fits and MP edge, Spectrum's SNR."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from svdtool.report import analytics_plots as plots
from svdtool.report.model import Block, Section
from svdtool.report.tables import AUX_LABELS, record_table, text

if TYPE_CHECKING:
    from svdtool.results.spectrum import SpectrumResult

_COLUMNS = [
    ("α", "WW power-law exponent of the ESD tail", "sigma:ww.alpha"),
    ("xmin", "λ where the fitted tail starts", "sigma:ww.xmin"),
    ("D", "Kolmogorov–Smirnov distance of the fit", "sigma:ww.D"),
    ("PL spikes", "#λ ≥ xmin", "int:ww.num_pl_spikes"),
    ("α weighted", "α · log10 λ_max", "sigma:ww.alpha_weighted"),
    ("log α-norm", "log10 Σ λᵢ^α", "sigma:ww.log_alpha_norm"),
    ("log spectral norm", "log10 σ₁²", "sigma:ww.log_spectral_norm"),
    ("entropy", "WW's normalised σ² entropy", "sigma:ww.entropy"),
    ("MP edge", "σ̂_e(√N + √M), σ units", "sigma:mp.edge"),
    ("MP spikes", "#σ above the MP edge", "int:mp.spikes"),
    ("SNR", "the Spectrum tool's score", "sigma:snr"),
    ("SNR (MP)", "Σσ above the MP edge / Σσ below", "sigma:snr_mp"),
]


def analytics_section(result: SpectrumResult, sigmas: dict[str, np.ndarray] | None) -> Section | None:
    """None for results written before the analytics existed (their matrices carry no ``ww``)."""
    if not result.matrices or any(m.ww is None for m in result.matrices):
        return None
    table = record_table(
        "matrix-analytics",
        "WeightWatcher columns, MP bulk and SNR, per matrix",
        "spectrum.matrices",
        result.matrices,
        "name",
        _COLUMNS,
        label=lambda m: [text(m.name), text(m.module_type), text(m.layer), text(m.ww.warning or "—")],
        label_columns=("name", "type", "layer", "warning"),
        aux=AUX_LABELS,
    )
    blocks = [Block(plots.alpha_per_layer(result), "grid")]
    if sigmas is not None:
        blocks.append(Block(plots.esd_fits(result, sigmas), "grid", "One matrix per module type: its median α."))
    blocks.append(Block(plots.snr_per_type(result), "grid", "One panel per module type."))
    percent = result.options.top_percent
    return Section(
        id="analytics",
        title="Heavy tails, MP bulk and SNR",
        intro=[
            "α is WeightWatcher's power-law exponent of the tail of the eigenvalues λ = σ² (same fit and names "
            "as WeightWatcher 0.7.7): WW reads α < 2 as over-trained and α > 6 as under-trained, and 2–6 as "
            "well trained. The MP edge is where pure noise of the same entry scale would end; σ above it are "
            "spikes. The SNR is the Spectrum tool's score, comparable within a module type only; "
            + (
                f"the layers marked were selected by --top-percent {percent} (the top {percent}% of each type)."
                if percent is not None
                else "run with --top-percent P to mark the layers Spectrum would select."
            )
        ],
        blocks=blocks,
        tables=[table],
    )
