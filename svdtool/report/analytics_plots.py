"""Figures of the spectral analytics: WeightWatcher's α per layer, the ESD with its power-law fit and MP edge,
and the Spectrum SNR per module type with the selected layers marked.

They draw saved numbers and the saved σ of the sidecar; nothing is recomputed from the weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from svdtool.report.figures import PALETTE, Figure, log_axis, plotting, render
from svdtool.report.plots import layer_lines, module_types
from svdtool.snr import top_by_type

if TYPE_CHECKING:
    from svdtool.results.spectrum import MatrixSpectrum, SpectrumResult

ESD_BINS_PER_DECADE = 10
SELECTED = "#a4001d"  # selected layers: filled red markers (and the word "selected" in the text)


def alpha_per_layer(result: SpectrumResult) -> list[Figure]:
    """WW's α against layer, one line per module type, with the α = 2 and α = 6 warning levels."""
    fig = layer_lines(
        [m for m in result.matrices if m.ww is not None and m.ww.status == "success"],
        lambda m: m.ww.alpha,
        id="layer-alpha",
        title="Power-law exponent α per layer (WeightWatcher)",
        ylabel="α of the ESD tail",
        limit=(2.0, "α = 2: WW's over-trained"),
    )
    return [fig] if fig is not None else []


def chosen_matrices(result: SpectrumResult) -> list[MatrixSpectrum]:
    """Per module type, the matrix whose α is the type's median: a typical fit to look at."""
    chosen = []
    for t in module_types(result.matrices):
        ms = sorted(
            (m for m in result.matrices if m.module_type == t and m.ww is not None and m.ww.status == "success"),
            key=lambda m: m.ww.alpha,  # type: ignore[union-attr]
        )
        if ms:
            chosen.append(ms[len(ms) // 2])
    return chosen


def esd_fits(result: SpectrumResult, sigmas: dict[str, np.ndarray]) -> list[Figure]:
    """The ESD of λ = σ² on log–log axes, the fitted power law from xmin, xmin and the MP bulk edge²."""
    figures = []
    with plotting() as plt:
        for i, m in enumerate(chosen_matrices(result)):
            if m.name not in sigmas or m.ww is None:
                continue
            lam = np.square(sigmas[m.name])
            lam = lam[lam > 0]
            lo, hi = np.floor(np.log10(lam.min())), np.ceil(np.log10(lam.max()))
            edges = 10.0 ** np.linspace(lo, hi, max(2, int(hi - lo) * ESD_BINS_PER_DECADE + 1))
            density, _ = np.histogram(lam, bins=edges, density=True)
            fig, ax = plt.subplots(figsize=(4.2, 3.0), layout="constrained")
            ax.stairs(density, edges, color=PALETTE[0], lw=1.2, label="ESD (density of λ)")
            w = m.ww
            tail = np.geomspace(w.xmin, lam.max(), 50)
            share = w.num_pl_spikes / lam.size  # the fit describes this share of all λ
            fitted = share * (w.alpha - 1) / w.xmin * (tail / w.xmin) ** (-w.alpha)
            ax.plot(tail, fitted, color=SELECTED, lw=1.4, ls="--", label=f"power law, α = {w.alpha:.2f}")
            ax.axvline(w.xmin, color="#555555", lw=0.9, ls=":", label=f"xmin = {w.xmin:.3g}")
            edge2 = m.mp.edge**2 if m.mp is not None else None
            spikes = m.mp.spikes if m.mp is not None else 0
            if edge2:
                ax.axvline(edge2, color="#2a7d2a", lw=0.9, ls="-.", label=f"MP edge² = {edge2:.3g}")
            ax.set_xscale("log")
            ax.set_yscale("log")
            log_axis(ax.xaxis)
            ax.set_xlabel("eigenvalue λ = σ² (log scale)")
            ax.set_ylabel("density (log scale)")
            ax.set_title(f"{m.module_type}: {m.name}", loc="left", fontsize=8)
            ax.legend(fontsize=6.5, loc="lower left")
            desc = (
                f"Histogram density of the {lam.size} eigenvalues λ = σ² of {m.name} on log–log axes. "
                f"The power law fitted above xmin = {w.xmin:.4g} has α = {w.alpha:.3f} (KS distance {w.D:.3f}) "
                f"and covers {w.num_pl_spikes} values"
                + (f"; the MP bulk edge is at λ = {edge2:.4g} with {spikes} σ above it." if edge2 else ".")
            )
            figures.append(render(fig, f"esd-{i}", f"ESD and power-law fit: {m.module_type}", desc))
    return figures


def snr_per_type(result: SpectrumResult) -> list[Figure]:
    """Spectrum's SNR against layer, one panel per module type; with --top-percent the selected layers filled."""
    percent = result.options.top_percent
    scored = [m for m in result.matrices if m.snr is not None and m.layer is not None]
    chosen: set[str] = set()
    if percent is not None:
        rows = [(m.name, m.module_type, float(m.snr)) for m in scored]  # type: ignore[arg-type]
        chosen = {n for names in top_by_type(rows, percent).values() for n in names}
    figures = []
    with plotting() as plt:
        for i, t in enumerate(module_types(scored)):
            ms = sorted((m for m in scored if m.module_type == t), key=lambda m: m.layer)  # type: ignore[arg-type,return-value]
            xs = [m.layer for m in ms]
            ys = [float(m.snr or 0.0) for m in ms]
            fig, ax = plt.subplots(figsize=(4.2, 2.6), layout="constrained")
            ax.plot(xs, ys, color=PALETTE[0], lw=1.0, marker="o", ms=4, mfc="white", label="SNR")
            picked = [m for m in ms if m.name in chosen]
            if picked:
                ax.plot(
                    [m.layer for m in picked], [m.snr for m in picked], "o", color=SELECTED, ms=5,
                    label=f"selected (top {percent}%)",
                )  # fmt: skip
            ax.set_xlabel("layer")
            ax.set_ylabel("Spectrum SNR")
            ax.set_title(t, loc="left")
            ax.legend(fontsize=7)
            desc = f"Spectrum SNR of the {len(ms)} {t} matrices against layer, from {min(ys):.4g} to {max(ys):.4g}." + (
                f" Selected by --top-percent {percent}: layers {', '.join(str(m.layer) for m in picked) or 'none'}."
                if percent is not None
                else " No --top-percent was given, so no layer is marked."
            )
            figures.append(render(fig, f"snr-{i}", f"Spectrum SNR: {t}", desc))
    return figures
