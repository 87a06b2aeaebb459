"""``svdtool coverage``: how much of each target gradient a rank-r / rank-2r adapter covers."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated

import typer

from svdtool.cli import app
from svdtool.cli.console import RichProgress, deliver, is_main, out
from svdtool.cli.gradient_args import passes_line
from svdtool.cli.options import (
    BatchSizeOpt,
    CalibOpt,
    ChatTemplateOpt,
    DeviceOpt,
    FormatOpt,
    GradCacheOpt,
    GradGroupsOpt,
    MaxLengthOpt,
    MicroBatchOpt,
    ModelArg,
    ModelDtypeOpt,
    OffloadOpt,
    OutOpt,
    OutputFormat,
    PromptFieldOpt,
    RanksOpt,
    ReportOpt,
    ResponseFieldOpt,
    RevisionOpt,
    SamplesOpt,
    SeedOpt,
    TargetsOpt,
    TextFieldOpt,
    TokenizerOpt,
    TokenOpt,
)

if TYPE_CHECKING:
    from svdtool.results.coverage import CoverageGroup, CoverageResult

BatchSizesOpt = Annotated[
    str | None,
    typer.Option(
        "--batch-sizes",
        help="Also compare gradients of these many samples (e.g. 8,32,128) with the --ref-batch gradient: "
        "sign and magnitude similarity (svdtool's definitions).",
    ),
]
RefBatchOpt = Annotated[int, typer.Option("--ref-batch", min=2, help="Reference samples for --batch-sizes.")]


@app.command()
def coverage(
    model: ModelArg,
    calib: CalibOpt = None,
    ranks: RanksOpt = "8,32,128",
    samples: SamplesOpt = 128,
    max_length: MaxLengthOpt = 1024,
    batch_size: BatchSizeOpt = 2,
    seed: SeedOpt = 0,
    prompt_field: PromptFieldOpt = None,
    response_field: ResponseFieldOpt = None,
    text_field: TextFieldOpt = None,
    chat_template: ChatTemplateOpt = None,
    targets: TargetsOpt = "all-linear",
    batch_sizes: BatchSizesOpt = None,
    ref_batch: RefBatchOpt = 512,
    tokenizer: TokenizerOpt = None,
    revision: RevisionOpt = None,
    token: TokenOpt = None,
    dtype: ModelDtypeOpt = "auto",
    device: DeviceOpt = "auto",
    grad_groups: GradGroupsOpt = None,
    micro_batch_size: MicroBatchOpt = None,
    offload: OffloadOpt = False,
    grad_cache: GradCacheOpt = None,
    out_dir: OutOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    report: ReportOpt = None,
) -> None:
    """Gradient coverage: the share of each target gradient's energy in its top r and 2r singular directions.

    The gradient is the LoRA-GA estimate (mean over batches of the mean-loss gradient, float32) on the
    calibration data; the table gives the mean and minimum over matrices, as in the LoRA-GA paper.

    \b
    Examples:
      svdtool coverage meta-llama/Llama-2-7b-hf --calib metamathqa --ranks 8,32,128
      svdtool coverage ./my-model --calib data.jsonl --prompt-field question --response-field answer
      svdtool coverage ./my-model --calib wikitext2 --batch-sizes 8,32,128 --ref-batch 512 --out cov
      torchrun --nproc-per-node 8 -m svdtool coverage meta-llama/Llama-3.1-70B --calib metamathqa --out cov

    Under torchrun the frozen weights are sharded over the ranks (FSDP2), each rank runs its share of the
    calibration batches into row-sharded float32 gradients, and each gradient's coverage is computed on one
    rank; rank 0 prints and writes the result (docs/distributed.md).
    """
    from svdtool.cli.gradient_args import gradient_request
    from svdtool.commands.common import parse_ranks
    from svdtool.commands.coverage import CoverageRequest, run_coverage

    request = CoverageRequest(
        gradient=gradient_request(
            model,
            calib=calib,
            samples=samples,
            max_length=max_length,
            batch_size=batch_size,
            seed=seed,
            prompt_field=prompt_field,
            response_field=response_field,
            text_field=text_field,
            chat_template=chat_template,
            tokenizer=tokenizer,
            revision=revision,
            token=token,
            targets=targets,
            dtype=dtype,
            device=device,
            mode="exact",
            groups=grad_groups,
            micro_batch_size=micro_batch_size,
            offload=offload,
            grad_cache=grad_cache,
        ),
        ranks=parse_ranks(ranks),
        batch_sizes=parse_ranks(batch_sizes) if batch_sizes else [],
        ref_batch=ref_batch if batch_sizes else None,
        command=["svdtool", *sys.argv[1:]],
    )
    run = run_coverage(request, RichProgress())
    written = []
    if out_dir is not None and is_main():  # every rank holds the run; rank 0 writes and prints it
        from svdtool.commands.coverage import write_coverage

        written = write_coverage(run, out_dir)
    deliver(run.result, fmt=fmt, table=print_summary, written=written, report=report, sigmas=run.sigmas)


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def print_summary(result: CoverageResult) -> None:
    """The paper-style table (mean / min coverage per rank) per module type, then similarity if measured."""
    from rich.table import Table

    ranks = result.options.ranks
    m, c, g = result.manifest, result.calibration, result.gradient
    src = f"{c.source}" + (f"@{c.sha[:10]}" if c.sha else "")
    out.print(
        f"[bold]{m.model}[/]  {len(result.matrices)} gradients from {c.used} samples of {src} "
        f"({c.loss_tokens:,} target tokens, ≤{c.max_length} tokens each, batch {c.batch_size}), "
        f"{g.dtype} on {g.device}, {m.timings.get('total', 0):.1f} s"
        + (f", peak {g.peak_device_memory / 2**30:.1f} GiB" if g.peak_device_memory else "")
        + (" [dim](from --grad-cache)[/]" if g.from_cache else ""),
        highlight=False,
    )
    if not g.from_cache:
        line = passes_line(g.groups, g.micro_batch_size, g.plan.get("reason"), g.dtype, g.dtype_reason)
        out.print(line, highlight=False, markup=False)
    t = Table(title="Gradient coverage by a rank-r / rank-2r adapter: mean (min) over matrices", title_justify="left")
    t.add_column("type", justify="left")
    t.add_column("n", justify="right")
    t.add_column("‖G‖_F mean", justify="right")
    for r in ranks:
        t.add_column(f"r={r}", justify="right")
        t.add_column(f"2r={2 * r}", justify="right")
    for grp in result.by_module_type:
        t.add_row(*_row(grp, ranks), end_section=grp.key == "all")
    out.print(t)
    if result.options.batch_sizes:
        _similarity_table(result)


def _row(grp: CoverageGroup, ranks: list[int]) -> list[str]:
    cells = [grp.key, str(grp.matrices), f"{grp.frobenius_mean:.3g}"]
    for r in ranks:
        for k in (r, 2 * r):
            cells.append(f"{_pct(grp.coverage_mean[str(k)])} ({_pct(grp.coverage_min[str(k)])})")
    return cells


def _similarity_table(result: CoverageResult) -> None:
    from rich.table import Table

    sizes = result.options.batch_sizes
    t = Table(
        title=f"Small batches vs the {result.options.ref_batch}-sample reference gradient "
        "(svdtool's definitions: equal sign; magnitude ratio in [0.1, 10])",
        title_justify="left",
    )
    t.add_column("type", justify="left")
    for b in sizes:
        t.add_column(f"sign b={b}", justify="right")
        t.add_column(f"mag b={b}", justify="right")
    for grp in result.by_module_type:
        cells = [grp.key]
        for b in sizes:
            cells += [_pct(grp.sign_similarity_mean[str(b)]), _pct(grp.magnitude_similarity_mean[str(b)])]
        t.add_row(*cells, end_section=grp.key == "all")
    out.print(t)
