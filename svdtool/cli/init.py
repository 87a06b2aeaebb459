"""``svdtool init``: write an SVD-initialised LoRA adapter beside its residual base model."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

from svdtool.cli import app
from svdtool.cli.console import RichProgress, deliver, err, out
from svdtool.cli.init_options import (
    GRADIENT_METHODS,
    STATISTICS_METHODS,
    AlphaOpt,
    ConventionOpt,
    CordaModeOpt,
    DirectionOpt,
    DoubleQuantOpt,
    EvaRhoOpt,
    GammaOpt,
    InitOutOpt,
    MethodOpt,
    NiterOpt,
    OversampleOpt,
    OverwriteOpt,
    QuantBackendOpt,
    QuantItersOpt,
    QuantOpt,
    RankAllocOpt,
    RankOpt,
    RsloraOpt,
    SvdOpt,
)
from svdtool.cli.options import (
    BatchSizeOpt,
    CalibOpt,
    ChatTemplateOpt,
    DeviceOpt,
    FormatOpt,
    GradCacheOpt,
    GradGroupsOpt,
    GradientModeOpt,
    MaxLengthOpt,
    MicroBatchOpt,
    ModelArg,
    ModelDtypeOpt,
    OffloadOpt,
    OutputFormat,
    PromptFieldOpt,
    ReportOpt,
    ResponseFieldOpt,
    RevisionOpt,
    SamplesOpt,
    SeedOpt,
    StreamOpt,
    TargetsOpt,
    TextFieldOpt,
    TokenizerOpt,
    TokenOpt,
)

if TYPE_CHECKING:
    from svdtool.results.init import InitResult


@app.command()
def init(
    model: ModelArg,
    method: MethodOpt,
    rank: RankOpt,
    out_dir: InitOutOpt,
    alpha: AlphaOpt = None,
    rslora: RsloraOpt = False,
    targets: TargetsOpt = "all-linear",
    svd: SvdOpt = None,
    oversample: OversampleOpt = None,
    niter: NiterOpt = None,
    seed: SeedOpt = 0,
    overwrite: OverwriteOpt = False,
    revision: RevisionOpt = None,
    token: TokenOpt = None,
    stream: StreamOpt = False,
    device: DeviceOpt = "auto",
    fmt: FormatOpt = OutputFormat.table,
    report: ReportOpt = None,
    calib: CalibOpt = None,
    samples: SamplesOpt = 128,
    max_length: MaxLengthOpt = 1024,
    batch_size: BatchSizeOpt = 2,
    prompt_field: PromptFieldOpt = None,
    response_field: ResponseFieldOpt = None,
    text_field: TextFieldOpt = None,
    chat_template: ChatTemplateOpt = None,
    tokenizer: TokenizerOpt = None,
    dtype: ModelDtypeOpt = "auto",
    gradient: GradientModeOpt = "exact",
    grad_groups: GradGroupsOpt = None,
    micro_batch_size: MicroBatchOpt = None,
    offload: OffloadOpt = False,
    grad_cache: GradCacheOpt = None,
    direction: DirectionOpt = "ArB2r",
    gamma: GammaOpt = None,
    convention: ConventionOpt = "reference",
    rank_alloc: RankAllocOpt = "uniform",
    quant: QuantOpt = None,
    double_quant: DoubleQuantOpt = False,
    quant_iters: QuantItersOpt = None,
    quant_backend: QuantBackendOpt = None,
    corda_mode: CordaModeOpt = None,
    eva_rho: EvaRhoOpt = None,
) -> None:
    """SVD- and data-initialised LoRA adapter (PiSSA, MiLoRA, SVD-LoRA-FA, LoRA-GA, OLoRA, MiCA, orthogonal,
    LoRA-One, LoftQ, QPiSSA, CorDA, EVA), precomputed for PEFT.

    Methods that change the base (pissa, milora, svd-lora-fa, lora-ga, olora, loftq, qpissa, corda) write the residual
    model W − s·B·A to DIR (same config, dtype and tokenizer as the source) and the adapter to DIR/<method>_init/:
    load the adapter on DIR, never on the original. Methods that keep the base (mica, orthogonal, lora-one, eva) write
    only DIR/<method>_init/, whose base_model_name_or_path is the original model. LoftQ and QPiSSA fit the adapter
    to the residual as the trainer's 4-bit NF4 load will quantise it (bit-exact with bitsandbytes): load DIR with
    the BitsAndBytesConfig that DIR/README.md gives.

    \b
    Examples:
      svdtool init meta-llama/Llama-2-7b-hf --method pissa --rank 16 --out llama2-pissa-r16
      svdtool init ./my-model --method milora -r 64 --targets q_proj,k_proj,v_proj,up_proj,down_proj --out mi
      svdtool init ./my-model --method svd-lora-fa -r 8 --alpha 16 --out fa
      svdtool init ./my-model --method pissa -r 16 --svd randomized --niter 8 --seed 1 --out fast
      svdtool init ./my-model --method lora-ga -r 8 --alpha 16 --calib metamathqa --out ga
      svdtool init ./my-model --method olora -r 16 --out ol
      svdtool init ./my-model --method mica -r 16 --out mi     # needs PEFT >= 0.20 to train (B frozen)
      svdtool init ./my-model --method orthogonal -r 16 --seed 0 --out orth
      svdtool init ./my-model --method lora-one -r 16 --calib metamathqa --out one
      svdtool init ./my-model --method pissa -r 16 --rank-alloc energy --out pe
      svdtool init ./my-model --method corda --corda-mode ipm -r 16 --calib metamathqa --out corda
      svdtool init ./my-model --method eva -r 16 --calib data.jsonl --text-field text --out eva
      svdtool init ./my-model --method qpissa --quant nf4 --double-quant --quant-iters 5 -r 64 --out qp
      svdtool init ./my-model --method loftq --quant nf4 -r 64 --alpha 16 --out lq
      torchrun --nproc-per-node 8 -m svdtool init BIG --method pissa -r 16 --out /shared/out
      torchrun --nproc-per-node 8 -m svdtool init BIG --method lora-ga -r 16 --calib metamathqa --out /shared/ga

    Under torchrun each rank writes whole residual shard files and rank 0 the adapter; DIR appears only
    when every rank succeeded. LoRA-GA's gradients are estimated with the weights sharded over the ranks
    (FSDP2), each on the rank that writes it. Methods that keep the base (lora-one, mica, orthogonal) or
    collect activation statistics (corda, eva) run in one process (docs/distributed.md).
    """
    if method not in GRADIENT_METHODS + STATISTICS_METHODS:  # they need transformers here anyway
        from svdtool.adapters.layout_process import prefetch

        prefetch(model)  # the model class's layout, built beside this process's own start-up
    from svdtool import naming
    from svdtool.commands.init import run_init
    from svdtool.commands.init_request import InitRequest
    from svdtool.errors import SvdtoolError

    svd = svd or ("randomized" if method == "lora-ga" else "exact")
    extra: dict = {
        "quant": quant,
        "double_quant": double_quant,
        "quant_iters": quant_iters,
        "quant_backend": quant_backend,
    }
    extra = {k: v for k, v in extra.items() if v is not None and v is not False}
    grad_req = act_req = None
    if method in GRADIENT_METHODS + STATISTICS_METHODS:
        from svdtool.cli.gradient_args import activation_request, gradient_request

        if method in STATISTICS_METHODS and grad_cache is not None:
            raise SvdtoolError(f"--grad-cache applies to --method {' and '.join(GRADIENT_METHODS)} only")

        if method == "lora-ga":
            extra |= {"direction": direction, "gamma": 16.0 if gamma is None else gamma, "convention": convention}
        elif method == "lora-one":
            extra |= {"gamma": 128.0 if gamma is None else gamma}
        grad_req = gradient_request(
            model, calib=calib, samples=samples, max_length=max_length, batch_size=batch_size, seed=seed,
            prompt_field=prompt_field, response_field=response_field, text_field=text_field,
            chat_template=chat_template, tokenizer=tokenizer, revision=revision, token=token, targets=targets,
            dtype=dtype, device=device, mode=gradient, groups=grad_groups, micro_batch_size=micro_batch_size,
            offload=offload, grad_cache=grad_cache, sketch_rank=2 * rank,
        )  # fmt: skip
        if method in STATISTICS_METHODS:  # the same model and data options, for activation statistics
            act_req, grad_req = activation_request(grad_req), None
    elif calib is not None or grad_cache is not None:
        raise SvdtoolError(
            f"--calib and --grad-cache apply to --method {' and '.join(GRADIENT_METHODS)} only "
            f"(--calib also to {' and '.join(STATISTICS_METHODS)})"
        )
    extra |= _statistics_options(method, corda_mode, eva_rho)

    request = InitRequest(
        model=model,
        method=method,
        rank=rank,
        out=out_dir,
        alpha=alpha,
        use_rslora=rslora,
        targets=naming.parse_targets(targets) or [naming.ALL_LINEAR],
        svd=svd,
        oversample=oversample,
        niter=niter,
        seed=seed,
        overwrite=overwrite,
        revision=revision,
        token=token,
        stream=stream,
        device=device,
        extra=extra,
        gradient_request=grad_req,
        activation_request=act_req,
        command=["svdtool", *sys.argv[1:]],
        rank_alloc=rank_alloc,
    )
    result = run_init(request, RichProgress())
    deliver(result, fmt=fmt, table=lambda r: print_init(r, out_dir), report=report)


def _statistics_options(method: str, corda_mode: str | None, eva_rho: float | None) -> dict:
    """--corda-mode and --eva-rho checked against the method, as InitOptions.extra entries."""
    from svdtool.errors import SvdtoolError

    extra: dict = {}
    if method == "corda":
        if corda_mode not in (None, "ipm", "kpm"):
            raise SvdtoolError(f"--corda-mode {corda_mode!r}: expected ipm or kpm")
        extra["corda_mode"] = corda_mode or "ipm"
    elif corda_mode is not None:
        raise SvdtoolError("--corda-mode applies to --method corda only")
    if method == "eva":
        if eva_rho is not None and not eva_rho >= 1:
            raise SvdtoolError(f"--eva-rho {eva_rho:g}: must be at least 1")
        extra["eva_rho"] = 2.0 if eva_rho is None else eva_rho
    elif eva_rho is not None:
        raise SvdtoolError("--eva-rho applies to --method eva only")
    return extra


def print_init(result: InitResult, folder: Path) -> None:
    """A table per module type on stdout, then where things are."""
    from rich.table import Table

    s = result.settings
    m = result.manifest
    t = Table(title=f"{s.method} r={s.rank} α={s.alpha:g} s={s.scaling:.4g} on {m.model}", title_justify="left")
    alloc = s.rank_alloc != "uniform"
    q = result.quantization
    if q:
        error = "max ‖W−(Q(W_res)+sBA)‖/‖W‖"
    elif result.base == "original" and not result.changes_output:
        error = "max ‖sBA‖/‖W‖"
    else:
        error = "max ‖W−(W_res+sBA)‖/‖W‖"
    cols = ["type", "n", "shape", *(["ranks"] if alloc else []), "algorithm", "energy share", error]
    quant_at = len(cols)  # the NF4 ratio column goes right after the reconstruction error
    cols += [*(["max ‖W−(Q(W_res)+sBA)‖/‖W−Q(W)‖"] if q else []), "max residual", "ms"]
    for col in cols:
        t.add_column(col, justify="left" if col in ("type", "algorithm") else "right")
    for mtype in dict.fromkeys(x.module_type for x in result.layers):
        xs = [x for x in result.layers if x.module_type == mtype]
        algos = ", ".join(sorted({x.algorithm for x in xs}))
        res = [x.certified_residual for x in xs if x.certified_residual is not None]
        ranks = [x.rank or s.rank for x in xs]
        row = [
            mtype,
            str(len(xs)),
            "×".join(str(d) for d in xs[0].shape),
            *([f"{min(ranks)}–{max(ranks)} (mean {sum(ranks) / len(ranks):.1f})"] if alloc else []),
            algos,
            f"{sum(x.energy_share for x in xs) / len(xs):.4f}",
            f"{max(x.reconstruction_error for x in xs):.1e}",
            f"{max(res):.1e}" if res else "-",
            f"{1000 * sum(x.seconds for x in xs) / len(xs):.1f}",
        ]
        if q:
            row.insert(quant_at, f"{max(float(x.extra['quant_ratio']) for x in xs):.4f}")
        t.add_row(*row)
    out.print(t)
    if s.svd == "randomized":
        errs = [x.topr_error for x in result.layers if x.topr_error is not None]
        if errs:
            out.print(
                f"randomized SVD: ‖sBA − U_rS_rV_rᵀ‖/‖U_rS_rV_rᵀ‖ median {sorted(errs)[len(errs) // 2]:.2e}, "
                f"max {max(errs):.2e}",
                highlight=False,
            )
    if alloc:
        a = result.allocation
        out.print(
            f"--rank-alloc {s.rank_alloc}: {a.get('rank_params', 0):,} of {a.get('rank_budget', 0):,} adapter "
            f"parameters; gain {a.get('rank_gain', 0):.4g} vs {a.get('rank_gain_uniform', 0):.4g} at uniform r={s.rank}"
            f"; layers at rank 0 (no adapter): {a.get('rank_dropped', 0)}",
            highlight=False,
        )
    if result.base == "original":
        what = f"adapter only (base: the original, {result.base_model_name_or_path})"
    else:
        what = f"residual ({result.residual_dtype}, {len(result.residual_files) - 1} shards)"
    out.print(
        f"wrote [bold]{folder}[/]: {what}, adapter {folder / result.adapter_dir}, svdtool.json, README.md "
        f"in {m.timings.get('total', 0):.1f} s",
        highlight=False,
    )
    x = s.extra
    if "gradient_groups" in x:
        from svdtool.cli.gradient_args import passes_line

        line = passes_line(
            int(x["gradient_groups"]),
            int(x.get("gradient_micro_batch_size") or 0),
            x.get("gradient_plan"),
            str(x.get("gradient_dtype")),
            x.get("gradient_dtype_reason"),
        )
        out.print(line, highlight=False, markup=False)
    if q:
        out.print(
            f"NF4 (double quant {'on' if q['double_quant'] else 'off'}, {q['iters']} alternations): "
            f"‖W − (Q(W_res) + s·B·A)‖/‖W − Q(W)‖ median {q['median_ratio']:.4f}, max {q['max_ratio']:.4f}. "
            f"Load {folder} in {q['load_dtype']} with the BitsAndBytesConfig in {folder / 'README.md'}.",
            highlight=False,
        )
    if result.frozen:
        err.print(
            f"[bold yellow]note:[/] {', '.join(result.frozen)} must stay frozen in training "
            f"(see {folder / 'README.md'})",
            highlight=False,
        )
