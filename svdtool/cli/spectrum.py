"""``svdtool spectrum`` and ``svdtool demo``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from svdtool.cli import app
from svdtool.cli.console import RichProgress, deliver, err, out
from svdtool.cli.options import (
    DeviceOpt,
    ExcludeOpt,
    FormatOpt,
    IncludeOpt,
    ModelArg,
    OutOpt,
    OutputFormat,
    RanksOpt,
    ReportOpt,
    RevisionOpt,
    StreamOpt,
    TokenOpt,
)

if TYPE_CHECKING:
    from svdtool.commands.spectrum import SpectrumRun
    from svdtool.results.spectrum import SpectrumResult

RangeOpt = Annotated[str, typer.Option("--range", help="LO,HI band for the claim check (raw σ).")]
TopPercentOpt = Annotated[
    int | None,
    typer.Option(
        "--top-percent",
        min=1,
        max=100,
        help="With --out: also write the Spectrum tool's snr_results_<model>.json and the unfrozen-parameters"
        " YAML of the top P% of layers per module type, for Axolotl's spectrum plugin.",
    ),
]
ClaimOpt = Annotated[float, typer.Option("--claim", help="Claimed fraction of σ inside the band.")]
StrictOpt = Annotated[
    bool,
    typer.Option("--strict", help="Exit 1 when a matrix was skipped for NaN or ±Inf values (default: warn, exit 0)."),
]
PowerLawOpt = Annotated[
    bool,
    typer.Option(
        "--power-law/--no-power-law",
        help="WeightWatcher's power-law fit per matrix (alpha, xmin, D, alpha_weighted, …). --no-power-law leaves"
        " those columns out; the other metrics, MP bulk and SNR stay.",
    ),
]
CpuWorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--cpu-workers",
        min=0,
        help="CPU workers: eigen-solves on CPU (default one per core); beside a GPU without Triton, processes"
        " finishing its two-stage eigen-solves (default cores - 2; 0 = GPU only).",
    ),
]


@app.command()
def spectrum(
    model: ModelArg,
    revision: RevisionOpt = None,
    token: TokenOpt = None,
    stream: StreamOpt = False,
    include: IncludeOpt = None,
    exclude: ExcludeOpt = None,
    ranks: RanksOpt = "8,16,32,64,128",
    range_: RangeOpt = "0.1,1.1",
    claim: ClaimOpt = 0.99,
    device: DeviceOpt = "auto",
    cpu_workers: CpuWorkersOpt = None,
    top_percent: TopPercentOpt = None,
    power_law: PowerLawOpt = True,
    out_dir: OutOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    report: ReportOpt = None,
    strict: StrictOpt = False,
) -> None:
    """Singular values of every 2-D weight, their metrics, and the "99% in [0.1, 1.1]" claim check.

    \b
    Examples:
      svdtool spectrum google/gemma-2-9b --stream --out gemma-spectrum
      svdtool spectrum ./my-model --include '*mlp*' --format json
      svdtool spectrum model.gguf --ranks 8,64 --range 0.05,2
      svdtool spectrum Qwen/Qwen2.5-0.5B --top-percent 25 --out model_snr_results
      torchrun --nproc-per-node 8 -m svdtool spectrum meta-llama/Llama-3.1-405B --stream --out spec405

    Under torchrun (or any launcher setting WORLD_SIZE) each rank computes its share of the matrices
    on its own GPU and rank 0 prints; see docs/distributed.md.
    """
    from svdtool.commands.common import parse_range, parse_ranks
    from svdtool.commands.spectrum import SpectrumRequest, run_spectrum
    from svdtool.errors import SvdtoolError

    lo, hi = parse_range(range_)
    if top_percent is not None and out_dir is None:
        raise SvdtoolError("--top-percent writes files: give --out DIR too")
    request = SpectrumRequest(
        model=model,
        revision=revision,
        token=token,
        stream=stream,
        include=include or [],
        exclude=exclude or [],
        ranks=parse_ranks(ranks),
        lo=lo,
        hi=hi,
        claimed=claim,
        device=device,
        cpu_workers=cpu_workers,
        top_percent=top_percent,
        power_law=power_law,
        command=["svdtool", *sys.argv[1:]],
    )
    run = run_spectrum(request, RichProgress())
    _finish(run, out_dir, fmt, report, strict)


def _finish(run: SpectrumRun, out_dir: Path | None, fmt: OutputFormat, report: Path | None, strict: bool) -> None:
    from svdtool.cli.console import is_main
    from svdtool.commands.spectrum import write_spectrum
    from svdtool.errors import CheckFailed

    if is_main():  # every rank holds the run; rank 0 writes and prints it
        written = write_spectrum(run, out_dir) if out_dir is not None else []
        deliver(run.result, fmt=fmt, table=print_summary, written=written, report=report, sigmas=run.sigmas)
    broken = [s for s in run.result.skipped if s.nonfinite]
    if not broken:
        return
    listing = "; ".join(f"{s.name} ({s.reason.removeprefix('non-finite values: ')})" for s in broken[:3])
    more = f" and {len(broken) - 3} more" if len(broken) > 3 else ""
    line = f"{len(broken)} matrices with NaN or ±Inf values were skipped: {listing}{more}"
    if strict:
        raise CheckFailed(line + " (--strict)")
    if is_main():
        err.print(f"[bold yellow]warning:[/] {line}", highlight=False)


def print_summary(result: SpectrumResult) -> None:
    """Rich tables on stdout: per module type, the claim under each normalisation, the verdict."""
    from rich.table import Table

    ranks = result.options.ranks
    m = result.manifest
    out.print(
        f"[bold]{m.model}[/]  {len(result.matrices)} matrices, "
        f"{sum(x.count for x in result.matrices):,} singular values, "
        f"{', '.join(f'{k}×{v}' for k, v in m.methods.items())} on {m.device}, {m.timings.get('total', 0):.1f} s",
        highlight=False,
    )
    t = Table(title="Per module type", title_justify="left")
    cols = ("type", "n", "σ₁ mean", "stable rank", "eff. rank", *[f"E({r})" for r in ranks], "in band", "α mean", "SNR")
    for col in cols:
        t.add_column(col, justify="left" if col == "type" else "right")
    for g in result.by_module_type:
        t.add_row(
            g.key,
            str(g.matrices),
            f"{g.sigma_max_mean:.3g}",
            f"{g.stable_rank_mean:.1f}",
            f"{g.effective_rank_mean:.1f}",
            *[f"{g.energy_at_rank_mean[str(r)]:.3f}" for r in ranks],
            f"{g.in_range_fraction:.4f}",
            _mean(g.analytics_mean, "alpha", "{:.2f}"),
            _mean(g.analytics_mean, "snr", "{:.3g}"),
        )
    out.print(t)
    c = result.claim
    t2 = Table(title=f"Fraction of σ in [{c.lo:g}, {c.hi:g}] (pooled over matrices)", title_justify="left")
    for col in ("normalisation", "with embeddings", "without embeddings", "mean per matrix (w/o emb.)"):
        t2.add_column(col, justify="left" if col == "normalisation" else "right")
    for f in c.fractions:
        t2.add_row(
            f.normalisation,
            f"{f.with_embeddings:.4f}",
            f"{f.without_embeddings:.4f}",
            f"{f.per_matrix_mean_without:.4f}",
        )
    out.print(t2)
    if result.skipped:
        out.print(
            f"skipped {len(result.skipped)} tensors: "
            + ", ".join(s.name + (f" ({s.reason})" if s.nonfinite else "") for s in result.skipped[:5]),
            highlight=False,
        )
    colour = "green" if c.holds_with_embeddings else "red"
    out.print(f"[bold {colour}]verdict:[/] {c.verdict}", highlight=False)


def _mean(means: dict[str, float], key: str, pattern: str) -> str:
    return pattern.format(means[key]) if key in means else "—"


DemoModelOpt = Annotated[str, typer.Option("--model", help="Packaged checkpoint: smollm2 or minilm.")]


@app.command()
def demo(
    model: DemoModelOpt = "smollm2",
    device: DeviceOpt = "auto",
    out_dir: OutOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    report: ReportOpt = None,
) -> None:
    """Run `spectrum` on a real checkpoint shipped on PyPI (no Hub access needed).

    smollm2 (SmolLM2-135M-Instruct) comes as a GGUF and is converted once into an HF folder under
    ~/.cache/svdtool (or $SVDTOOL_CACHE); minilm (all-MiniLM-L6-v2) is used in place.
    """
    from svdtool.commands.spectrum import SpectrumRequest, run_spectrum
    from svdtool.loading.packaged import PACKAGED, packaged_model

    err.print(f"preparing {PACKAGED[model].title if model in PACKAGED else model} …", highlight=False)
    folder = packaged_model(model)
    err.print(f"checkpoint: {folder}", highlight=False)
    request = SpectrumRequest(model=str(folder), device=device, command=["svdtool", *sys.argv[1:]])
    run = run_spectrum(request, RichProgress())
    _finish(run, out_dir, fmt, report, strict=False)
