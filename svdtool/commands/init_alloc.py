"""``svdtool init --rank-alloc``: per-layer ranks under the parameter budget of a uniform rank-r adapter.

The gains come from a pass over the targets before the init itself (:mod:`svdtool.allocation` has the rule):
``energy`` reads each weight and takes its top singular values, ``coverage`` takes the top singular values of
each gradient (already reduced to its top triplets during estimation). A method names the statistic it is
allocated by (``MethodSpec.rank_gain``); ``GAIN_SOURCES`` maps each statistic to the function that computes it,
so a method that brings its own statistic adds one entry. EVA (``rank_gain="eva"``) keeps PEFT's own
redistribution instead (:func:`svdtool.commands.init_statistics.eva_targets`); only the record and the
``rank_pattern``/``alpha_pattern`` output are shared.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from svdtool.allocation import STATS, greedy, rank_gains
from svdtool.commands.common import Progress
from svdtool.commands.init_layers import GradientSource, Target, gradient_for, lookup_gradient
from svdtool.errors import SvdtoolError
from svdtool.linalg import factorize
from svdtool.linalg.sketch import LowRankGradient
from svdtool.loading import Checkpoint
from svdtool.methods import METHODS, MethodSpec

if TYPE_CHECKING:
    import torch

#: A layer's rank is at most this many times the mean rank (and what its shape allows).
MAX_FACTOR = 4


@dataclass
class GainContext:
    """What a gain source may read: the checkpoint, the gradients (coverage), the device."""

    ckpt: Checkpoint
    gradients: GradientSource | None
    device: torch.device
    directions: int  # singular directions per rank (LoRA-GA: 2)
    extra: dict[str, Any] = field(default_factory=dict)  # the method's options (LoftQ: the NF4 load)
    energy_sigma: Callable[[Any, Any, dict[str, Any], int], Any] | None = None  # MethodSpec.energy_sigma


def check_rank_alloc(stat: str, spec: MethodSpec) -> None:
    """Refuse a statistic that is unknown or that this method cannot be allocated by (exit 2)."""
    if stat not in STATS:
        raise SvdtoolError(f"--rank-alloc {stat!r}: expected one of {', '.join(STATS)}")
    if stat != "uniform" and spec.rank_gain != stat:
        fits = sorted(m.name for m in METHODS.values() if m.rank_gain == stat)
        own = f"; {spec.name} allocates by {spec.rank_gain}" if spec.rank_gain else ""
        raise SvdtoolError(f"--rank-alloc {stat} applies to {', '.join(fits) or 'no method'} only{own}")


def rank_cap(mean_rank: int, targets: list[Target], directions: int) -> int:
    """The largest rank any layer may get: MAX_FACTOR·r̄, within every target's shape."""
    return max(1, min([MAX_FACTOR * mean_rank] + [min(t.out_features, t.in_features) // directions for t in targets]))


def energy_gains(ctx: GainContext, t: Target, cap: int) -> list[float]:
    """σ_k(M)² / ‖W‖²_F for k = 1..cap, M the matrix the adapter fits: W itself, or what the method's
    ``energy_sigma`` names (LoftQ: the quantisation error W − Q(W))."""
    import torch

    stored = ctx.ckpt.read(t.info).to(device=ctx.device)
    w = stored.to(torch.float64)
    w = w.T.contiguous() if t.transposed else w  # (out, in)
    if ctx.energy_sigma is None:
        sigma = factorize.top_svd(w, cap).s
    else:
        sigma = ctx.energy_sigma(w, stored.dtype, ctx.extra, cap)
    return rank_gains(sigma.tolist(), 1, float(w.square().sum().item()), cap)


def coverage_gains(ctx: GainContext, t: Target, cap: int) -> list[float]:
    """σ_k(G)², summed over each rank's directions, for ranks 1..cap."""
    if ctx.gradients is None:
        raise SvdtoolError("--rank-alloc coverage needs the gradients (pass --calib or --grad-cache)")
    g = gradient_for(lookup_gradient(ctx.gradients, t), t, ctx.device)
    k = cap * ctx.directions
    sigma = g.S[:k].tolist() if isinstance(g, LowRankGradient) else factorize.top_svd(g, k).s.tolist()
    return rank_gains(sigma, ctx.directions, 1.0, cap)


GAIN_SOURCES: dict[str, Callable[[GainContext, Target, int], list[float]]] = {
    "energy": energy_gains,
    "coverage": coverage_gains,
}


def allocate(
    stat: str, targets: list[Target], mean_rank: int, ctx: GainContext, progress: Progress
) -> tuple[list[Target], dict[str, Any]]:
    """Targets with their allocated ranks (rank-0 layers dropped), and what to record about the allocation."""
    if stat == "uniform":
        return targets, {}
    source = GAIN_SOURCES.get(stat)
    if source is None:
        raise SvdtoolError(f"--rank-alloc {stat} is not available in this build")
    cap = rank_cap(mean_rank, targets, ctx.directions)
    progress.start(f"rank allocation by {stat}", len(targets), sum(t.info.nbytes for t in targets))
    gains = []
    for t in targets:
        gains.append(source(ctx, t, cap))
        progress.advance(t.info.name, t.info.nbytes)
    progress.finish()
    costs = [t.in_features + t.out_features for t in targets]
    ranks = greedy(gains, costs, mean_rank)
    kept = [replace(t, rank=r) for t, r in zip(targets, ranks, strict=True) if r > 0]
    if not kept:
        raise SvdtoolError(f"--rank-alloc {stat} gave every layer rank 0 (all gains are zero)")
    total = sum(r * c for r, c in zip(ranks, costs, strict=True))
    captured = sum(sum(g[:r]) for g, r in zip(gains, ranks, strict=True))
    uniform = sum(sum(g[:mean_rank]) for g in gains)
    record = {
        "rank_alloc": stat,
        "rank_cap": cap,
        "rank_budget": mean_rank * sum(costs),
        "rank_params": total,
        "rank_gain": captured,
        "rank_gain_uniform": uniform,
        "rank_dropped": len(targets) - len(kept),
    }
    return kept, record
