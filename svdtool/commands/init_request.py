"""What ``svdtool init`` is asked to do, and every check of it that needs no checkpoint."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svdtool import naming
from svdtool.adapters.safetensors_out import DEFAULT_SHARD_BYTES
from svdtool.commands.init_alloc import check_rank_alloc
from svdtool.errors import SvdtoolError
from svdtool.methods import InitOptions, MethodSpec, get_method

if TYPE_CHECKING:
    from svdtool.commands.init_layers import GradientSource
    from svdtool.gradients import GradientRequest
    from svdtool.statistics import ActivationRequest

#: Methods that accept ``--svd randomized`` (the others need exact components).
RANDOMIZED_METHODS = frozenset({"pissa", "lora-ga"})


@dataclass
class InitRequest:
    model: str
    method: str
    rank: int
    out: Path
    alpha: float | None = None  # default: α = r, so s = 1
    use_rslora: bool = False
    targets: list[str] = field(default_factory=lambda: [naming.ALL_LINEAR])
    svd: str = "exact"  # exact | randomized
    oversample: int | None = None
    niter: int | None = None
    seed: int = 0
    overwrite: bool = False
    revision: str | None = None
    token: str | None = None
    stream: bool = False
    device: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific options (InitOptions.extra)
    gradients: GradientSource | None = None  # for methods with needs_gradient (see the module docstring)
    # Or: how to estimate them (calibration data, model pass settings); run_init does it after validation.
    gradient_request: GradientRequest | None = None
    # Methods with a ``statistic`` (CorDA, EVA): tensor name -> statistics, or how to collect them.
    statistics: GradientSource | None = None
    activation_request: ActivationRequest | None = None
    max_shard_bytes: int = DEFAULT_SHARD_BYTES
    command: list[str] = field(default_factory=list)
    rank_alloc: str = "uniform"  # uniform | energy | coverage | eva: rank is then the mean rank


def validate(req: InitRequest) -> MethodSpec:
    """Every check that needs no checkpoint; returns the method."""
    spec = get_method(req.method)
    if req.rank < 1:
        raise SvdtoolError(f"--rank {req.rank}: the rank must be a positive integer")
    if req.alpha is not None and not req.alpha > 0:
        raise SvdtoolError(f"--alpha {req.alpha}: alpha must be positive")
    if req.svd not in ("exact", "randomized"):
        raise SvdtoolError(f"--svd {req.svd!r}: expected exact or randomized")
    if req.svd == "randomized" and spec.name not in RANDOMIZED_METHODS:
        raise SvdtoolError(
            f"--svd randomized applies to {', '.join(sorted(RANDOMIZED_METHODS))} only: {spec.name} needs exact "
            "singular components"
        )
    if req.svd == "exact" and (req.oversample is not None or req.niter is not None):
        raise SvdtoolError("--oversample and --niter apply to --svd randomized only")
    for name, value in (("--oversample", req.oversample), ("--niter", req.niter)):
        if value is not None and value < 0:
            raise SvdtoolError(f"{name} {value}: must be 0 or more")
    if spec.needs_gradient and req.gradients is None and req.gradient_request is None:
        raise SvdtoolError(f"method {spec.name} needs gradients of the loss (calibration data); none were given")
    if spec.statistic and req.statistics is None and req.activation_request is None:
        raise SvdtoolError(f"method {spec.name} needs calibration data (--calib) for its activation statistics")
    if not req.targets:
        raise SvdtoolError("--targets is empty: name module types (q_proj,v_proj) or all-linear")
    check_rank_alloc(req.rank_alloc, spec)
    _check_quant(spec, req.extra)
    if spec.check is not None:
        spec.check(InitOptions(rank=req.rank, alpha=float(req.alpha or req.rank), extra=req.extra))
    return spec


#: Request options that only a quantising method (LoftQ, QPiSSA) reads.
QUANT_OPTIONS = {
    "quant": "--quant",
    "double_quant": "--double-quant",
    "quant_iters": "--quant-iters",
    "quant_backend": "--quant-backend",
}


def _check_quant(spec: MethodSpec, extra: dict[str, Any]) -> None:
    given = [flag for key, flag in QUANT_OPTIONS.items() if extra.get(key) is not None and extra[key] is not False]
    if not spec.quantizes:
        if given:
            raise SvdtoolError(f"{', '.join(given)}: {spec.name} does not quantise the base; use loftq or qpissa")
        return
    quant = extra.get("quant") or "nf4"
    if quant == "fp4":
        raise SvdtoolError("--quant fp4 is not supported: svdtool simulates bitsandbytes NF4 only (use --quant nf4)")
    if quant != "nf4":
        raise SvdtoolError(f"--quant {quant!r}: expected nf4")
    backend = extra.get("quant_backend")
    if backend is not None and backend not in ("cuda", "cpu"):
        raise SvdtoolError(f"--quant-backend {backend!r}: expected cuda or cpu")
    iters = extra.get("quant_iters")
    if iters is not None and int(iters) < 1:
        raise SvdtoolError(f"--quant-iters {iters}: at least 1")
