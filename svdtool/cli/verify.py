"""``svdtool verify``: check an init folder against the original model."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from svdtool.cli import app
from svdtool.cli.console import RichProgress, emit_json, out
from svdtool.cli.options import DeviceOpt, FormatOpt, OutputFormat, RevisionOpt, TokenOpt

if TYPE_CHECKING:
    from svdtool.results.init import VerifyResult

FolderArg = Annotated[Path, typer.Argument(help="A folder written by `svdtool init`.", show_default=False)]
OriginalOpt = Annotated[
    str | None,
    typer.Option("--model", help="The original model (default: the source recorded in DIR/svdtool.json)."),
]
NoLogitsOpt = Annotated[
    bool, typer.Option("--no-logits", help="Only the tensor checks: skip loading both models with transformers.")
]


@app.command()
def verify(
    folder: FolderArg,
    model: OriginalOpt = None,
    revision: RevisionOpt = None,
    token: TokenOpt = None,
    device: DeviceOpt = "auto",
    no_logits: NoLogitsOpt = False,
    fmt: FormatOpt = OutputFormat.table,
) -> None:
    """Check that residual + adapter reproduces the original: per layer, and on the model's outputs.

    Exits 1 when a value is past its tolerance (tolerances depend on the residual's dtype: see docs/init.md).

    \b
    Examples:
      svdtool verify llama2-pissa-r16
      svdtool verify ./mi --model ./my-model --format json
    """
    from svdtool.commands.verify import VerifyRequest, run_verify
    from svdtool.errors import CheckFailed

    result = run_verify(
        VerifyRequest(folder=folder, model=model, revision=revision, token=token, device=device, logits=not no_logits),
        RichProgress(),
    )
    if fmt is OutputFormat.json:
        from svdtool.results import to_dict

        emit_json(to_dict(result))
    else:
        print_verify(result)
    if not result.passed:
        raise CheckFailed(f"verify failed for {folder}: {failure_summary(result)}")


def failure_summary(r: VerifyResult) -> str:
    parts = []
    bad = [x for x in r.layers if not x.ok]
    if bad:
        worst = max(bad, key=lambda x: x.error / x.tol)
        parts.append(f"{len(bad)} layers past tolerance (worst {worst.name}: {worst.error:.1e} > {worst.tol:g})")
    if r.untouched_mismatched:
        parts.append(f"{len(r.untouched_mismatched)} non-target tensors differ (e.g. {r.untouched_mismatched[0]})")
    if r.missing:
        parts.append(f"{len(r.missing)} tensors missing (e.g. {r.missing[0]})")
    if not r.layers:
        parts.append("no initialised layer found")
    if r.logits is not None and not r.logits.ok:
        parts.append(f"{r.logits.output} differ by {r.logits.rel_error:.1e} > {r.logits.tol:g}")
    return "; ".join(parts) or "unknown"


def print_verify(r: VerifyResult) -> None:
    from rich.table import Table

    t = Table(title=f"{r.folder} ({r.method}, residual {r.residual_dtype}) vs {r.original}", title_justify="left")
    for col in ("check", "n", "worst", "tolerance", "result"):
        t.add_column(col, justify="left" if col in ("check", "result") else "right")

    def verdict(ok: bool) -> str:
        return "[green]pass[/]" if ok else "[bold red]FAIL[/]"

    if r.layers:
        worst = max(r.layers, key=lambda x: x.error / x.tol)
        what = "‖W − (W_res + s·B·A)‖/‖W‖"
        if r.base == "original":
            what = "‖s·B·A‖/‖W‖ vs its recorded value" if r.changes_output else "‖s·B·A‖/‖W‖ (base kept)"
        t.add_row(
            what,
            str(len(r.layers)),
            f"{worst.error:.2e}",
            f"{worst.tol:g}",
            verdict(all(x.ok for x in r.layers)),
        )
    if r.base != "original":  # an adapter on the original has no copied tensors
        t.add_row(
            "other tensors bit for bit",
            str(r.untouched_checked),
            str(len(r.untouched_mismatched)),
            "0",
            verdict(not r.untouched_mismatched),
        )
    if r.missing:
        t.add_row("missing tensors", str(len(r.missing)), r.missing[0], "0", verdict(False))
    if r.logits is not None:
        lg = r.logits
        extra = f", top-1 agree {lg.top1_agreement:.3f}" if lg.top1_agreement is not None else ""
        t.add_row(
            f"{lg.output} rel. error ({lg.tokens} tokens{extra})",
            str(len(lg.prompts)),
            f"{lg.rel_error:.2e}",
            f"{lg.tol:g}",
            verdict(lg.ok),
        )
    out.print(t)
    for note in r.notes:
        out.print(f"[dim]{note}[/dim]", highlight=False)
    out.print("[bold green]verify passed[/]" if r.passed else "[bold red]verify failed[/]")
