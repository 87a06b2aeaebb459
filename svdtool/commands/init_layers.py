"""Per-layer work of ``svdtool init``: which weights ``--targets`` selects, and one layer's init."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from svdtool import naming
from svdtool.adapters import layout as lay
from svdtool.errors import SvdtoolError
from svdtool.loading import FLOAT_DTYPES, TensorInfo
from svdtool.methods import InitOptions, MethodSpec
from svdtool.results.init import LayerInit

if TYPE_CHECKING:
    import torch

#: What a needs_gradient method's gradients come from: a mapping or a callable keyed by tensor name.
GradientSource = Callable[[str], Any] | Mapping[str, Any]


@dataclass(frozen=True)
class Target:
    info: TensorInfo
    module: str  # path in the model (PEFT key stem)
    transposed: bool  # stored (in, out): GPT-2 Conv1D
    out_features: int
    in_features: int
    rank: int  # this layer's adapter rank (--rank, or what --rank-alloc gave it)


def select_targets(layout: lay.ModelLayout, infos: list[TensorInfo], tokens: list[str], rank: int) -> list[Target]:
    """The weights ``--targets`` selects, in checkpoint order; raises SvdtoolError on bad input."""
    linear = (lay.LINEAR, lay.CONV1D)
    weights = layout.weights
    if naming.ALL_LINEAR in tokens:
        if len(tokens) > 1:
            raise SvdtoolError("--targets all-linear cannot be combined with other targets")
        # PEFT's all-linear, restricted to the transformer blocks (as `svdtool coverage` counts them).
        hits = [
            w
            for w in weights.values()
            if w.kind in linear and w.module != layout.output_module and naming.layer_index(w.tensor) is not None
        ]
        if not hits:
            raise SvdtoolError("no linear layers inside transformer blocks match --targets all-linear")
    else:
        hits = []
        for tok in tokens:
            found = [w for w in weights.values() if naming.target_matches(w.module, tok)]
            if not found:
                raise SvdtoolError(_no_match(tok, infos, weights))
            odd = next((w for w in found if w.kind not in linear), None)
            if odd is not None:
                raise SvdtoolError(
                    f"target {tok!r} selects {odd.module} ({odd.class_name}): only linear layers can be targets"
                )
            if layout.tied_output and any(w.module == layout.output_module for w in found):
                raise SvdtoolError(
                    f"target {tok!r} selects {layout.output_module}, which is tied to the input embeddings: "
                    "its residual would change them too"
                )
            hits += found
    by_name = {w.tensor: w for w in hits}
    out = []
    for info in infos:
        w = by_name.get(info.name)
        if w is None:
            continue
        if info.dtype not in FLOAT_DTYPES:
            raise SvdtoolError(f"{info.name} is stored as {info.dtype}: init needs float weights (dequantize first)")
        transposed = w.kind == lay.CONV1D
        rows, cols = info.shape
        o, i = (cols, rows) if transposed else (rows, cols)
        if rank > min(o, i):
            raise SvdtoolError(
                f"--rank {rank} is larger than min(out, in) = {min(o, i)} of {info.name} {list(info.shape)}"
            )
        out.append(Target(info, w.module, transposed, o, i, rank))
    return out


def _no_match(tok: str, infos: list[TensorInfo], weights: Mapping[str, lay.WeightModule]) -> str:
    flat = [i.name for i in infos if len(i.shape) == 1 and naming.target_matches(naming.module_path(i.name), tok)]
    if flat:
        return f"target {tok!r} selects 1-D tensors such as {flat[0]}: only matrices (linear layers) can be targets"
    kinds = sorted({naming.module_type(w.tensor) for w in weights.values() if w.kind in (lay.LINEAR, lay.CONV1D)})
    return f"unknown target {tok!r}: no module matches it; linear module types here: {', '.join(kinds) or 'none'}"


def lookup_gradient(source: GradientSource | None, t: Target, what: str = "gradient") -> Any:
    """The gradient (or ``what``: activation statistics) of ``t`` as the source holds it (a read may wait for the
    estimate to produce it)."""
    try:
        if source is None:
            raise KeyError(t.info.name)
        return source[t.info.name] if isinstance(source, Mapping) else source(t.info.name)
    except KeyError:
        raise SvdtoolError(f"no {what} for {t.info.name}") from None


def gradient_for(g: Any, t: Target, device: torch.device) -> torch.Tensor:
    """A looked-up gradient (as stored) as float32 (out, in) on ``device``, its shape checked."""
    import torch

    g = g.to(device=device, dtype=torch.float32)
    if t.transposed:
        g = g.T
    if tuple(g.shape) != (t.out_features, t.in_features):
        raise SvdtoolError(f"gradient of {t.info.name} has shape {list(g.shape)}, expected {list(t.info.shape)}")
    return g.contiguous()


def layer_options(opts: InitOptions, rank: int) -> InitOptions:
    """``opts`` at another rank with the same scaling s: α_l = s·r_l (s·√r_l with rsLoRA), as PEFT's alpha_pattern."""
    if rank == opts.rank:
        return opts
    alpha = opts.scaling * (rank**0.5 if opts.use_rslora else rank)
    return replace(opts, rank=rank, alpha=alpha)


def init_layer(
    t: Target,
    w: torch.Tensor,
    spec: MethodSpec,
    opts: InitOptions,
    gradient: torch.Tensor | None,
    statistics: Any = None,
) -> tuple[LayerInit, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run the method on one stored weight: (record, A (r,in) fp32, B (out,r) fp32, W_res as stored).

    ``opts`` holds the mean rank; the layer runs at its own ``t.rank``. For ``keeps_base`` methods the returned
    W_res is W itself (not written); the recorded error is then ‖s·B·A‖/‖W‖, the distance of the start from W,
    except for ``changes_output`` methods (LoRA-One), whose start is W + s·B·A by design.
    """
    import torch

    t0 = time.perf_counter()
    opts = layer_options(opts, t.rank)
    w64 = w.to(torch.float64)
    if t.transposed:
        w64 = w64.T.contiguous()  # (out, in)
    if spec.needs_gradient:  # the layout and dtype as stored (LoRA-GA's PEFT convention reproduces PEFT's use of them)
        res = spec.fn(w64, opts, gradient=gradient, transposed=t.transposed, source_dtype=w.dtype, name=t.info.name)
    elif spec.quantizes:  # the trainer quantises the residual as stored
        res = spec.fn(w64, opts, source_dtype=w.dtype)
    elif spec.statistic:  # CorDA's covariance, EVA's components (keyed by tensor name)
        res = spec.fn(w64, opts, name=t.info.name, statistics=statistics)
    else:
        res = spec.fn(w64, opts, name=t.info.name)
    a, b = res.lora_A.to(torch.float32).contiguous(), res.lora_B.to(torch.float32).contiguous()
    r = opts.rank
    if a.shape != (r, t.in_features) or b.shape != (t.out_features, r) or res.residual.shape != w64.shape:
        raise RuntimeError(f"{spec.name} returned A {tuple(a.shape)}, B {tuple(b.shape)} for {t.info.name}")
    stored = res.residual.to(w.dtype)  # one rounding, float64 -> source dtype
    a64, b64 = a.double(), b.double()
    s = opts.scaling
    start = torch.addmm(w64, b64, a64, alpha=s) if spec.changes_output else w64  # the model training starts from
    recon = torch.addmm(stored.double(), b64, a64, alpha=s).sub_(start).norm()
    w_norm = w64.norm()
    energy = s * s * ((b64.T @ b64) * (a64 @ a64.T)).sum() / w_norm.square()
    stored = stored.T if t.transposed else stored
    meta = dict(res.meta)
    sigma = meta.pop("sigma", [])
    error = float((recon / w_norm).item()) if float(w_norm.item()) > 0 else 0.0
    if spec.quantizes:  # what the trainer's model computes: ‖W − (Q(W_res) + s·B·A)‖ / ‖W‖
        error = float(meta["quant_error"])
    record = LayerInit(
        name=t.info.name,
        module=t.module,
        module_type=naming.module_type(t.info.name),
        layer=naming.layer_index(t.info.name),
        shape=list(t.info.shape),
        transposed=t.transposed,
        algorithm=str(meta.pop("algorithm", spec.name)),
        certified_residual=meta.pop("certified_residual", None),
        sigma=[float(x) for x in sigma],
        energy_share=float(energy.item()),
        reconstruction_error=error,
        topr_error=meta.pop("topr_error", None),
        seconds=time.perf_counter() - t0,
        rank=r,
        alpha=opts.alpha,
        extra={k: v for k, v in meta.items() if isinstance(v, (int, float, str, bool)) or v is None},
    )
    return record, a, b, stored.contiguous()
