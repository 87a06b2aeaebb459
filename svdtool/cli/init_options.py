"""The options of ``svdtool init`` that no other command takes (shared ones live in :mod:`svdtool.cli.options`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

MethodOpt = Annotated[
    str,
    typer.Option(
        "--method",
        help="pissa | milora | svd-lora-fa | lora-ga | olora | mica | orthogonal | lora-one | loftq | qpissa | "
        "corda | eva (see docs/init.md).",
        show_default=False,
    ),
]
#: Methods that need the gradient of the loss on calibration data (--calib or --grad-cache).
GRADIENT_METHODS = ("lora-ga", "lora-one")
#: Methods that take activation statistics of the calibration data (--calib).
STATISTICS_METHODS = ("corda", "eva")
RankOpt = Annotated[
    int, typer.Option("--rank", "-r", help="Adapter rank r (the mean rank with --rank-alloc).", show_default=False)
]
RankAllocOpt = Annotated[
    str,
    typer.Option(
        "--rank-alloc",
        help="uniform | energy (pissa, svd-lora-fa, qpissa; loftq: of W − Q(W)) | coverage (lora-ga, lora-one): "
        "per-layer ranks within the "
        "parameter budget of rank r everywhere, by greedy marginal gain (rank_pattern/alpha_pattern). eva always "
        "redistributes its ranks by explained variance (--eva-rho).",
    ),
]
InitOutOpt = Annotated[
    Path,
    typer.Option(
        "--out",
        help="Output folder: the residual model plus the adapter in <method>_init/ (mica, orthogonal, lora-one: "
        "the adapter only).",
    ),
]
# CorDA / EVA (see docs/init.md)
CordaModeOpt = Annotated[
    str | None,
    typer.Option(
        "--corda-mode",
        help="corda: ipm (instruction-previewed: the largest components of W·C) | kpm (knowledge-preserved: "
        "the smallest; calibrate on the knowledge to keep). Default ipm.",
        show_default=False,
    ),
]
EvaRhoOpt = Annotated[
    float | None,
    typer.Option(
        "--eva-rho",
        help="eva: ρ ≥ 1, each layer offers its top round(r·ρ) components to the global rank redistribution "
        "(1: uniform ranks). Default 2.",
        show_default=False,
    ),
]
AlphaOpt = Annotated[float | None, typer.Option("--alpha", help="LoRA alpha α (default: r, so s = α/r = 1).")]
RsloraOpt = Annotated[bool, typer.Option("--rslora", help="rsLoRA scaling s = α/√r instead of α/r.")]
SvdOpt = Annotated[
    str | None,
    typer.Option(
        "--svd",
        help="exact (certified) | randomized (pissa, lora-ga). Default: exact; lora-ga: randomized "
        "(the reference's svd_lowrank q = 4r, niter = 4, seeded).",
        show_default=False,
    ),
]
# LoRA-GA only (see docs/lora_ga.md)
DirectionOpt = Annotated[str, typer.Option("--direction", help="lora-ga: ArB2r | A2rBr | ArBr | random.")]
GammaOpt = Annotated[
    float | None,
    typer.Option(
        "--gamma",
        help="lora-ga: stable scale γ (A, B × d_out^¼/√γ; default 16). lora-one: B, A ÷ √(σ₁γ) (default 128).",
        show_default=False,
    ),
]
ConventionOpt = Annotated[
    str,
    typer.Option(
        "--convention",
        help="lora-ga: reference (the authors' code) | peft (PEFT ≥ 0.19's lora_ga: S in B, only B scaled).",
    ),
]
OversampleOpt = Annotated[
    int | None, typer.Option("--oversample", help="--svd randomized: extra block columns (default 48).")
]
NiterOpt = Annotated[
    int | None,
    typer.Option("--niter", help="--svd randomized: products with WᵀW, as svd_lowrank's niter (default 24)."),
]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace DIR if it exists and is not empty.")]
# LoftQ / QPiSSA only (see docs/init.md)
QuantOpt = Annotated[
    str | None,
    typer.Option(
        "--quant",
        help="loftq, qpissa: the 4-bit type the trainer loads the residual with; nf4 only (default), fp4 is refused.",
        show_default=False,
    ),
]
DoubleQuantOpt = Annotated[
    bool,
    typer.Option("--double-quant", help="loftq, qpissa: the trainer loads with bnb_4bit_use_double_quant=True."),
]
QuantBackendOpt = Annotated[
    str | None,
    typer.Option(
        "--quant-backend",
        help="loftq, qpissa: where the trainer quantises: cuda (GPU trainers; default) | cpu (bitsandbytes' CPU path, "
        "whose double quantisation rounds a few scales differently).",
        show_default=False,
    ),
]
QuantItersOpt = Annotated[
    int | None,
    typer.Option(
        "--quant-iters",
        help="loftq, qpissa: quantise/fit alternations (default 5; PEFT's loftq_iter defaults to 1).",
        show_default=False,
    ),
]
