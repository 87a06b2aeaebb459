"""The gradient computation proper, on a loaded model and prepared micro-batches (no I/O).

``compute_gradients`` installs the folds (:mod:`svdtool.gradients.fold`) on one group of targets at a
time, runs the passes (:mod:`svdtool.gradients.passes`), and turns each group's accumulators into the
mean gradient (exact) or its top factors (sketch) as soon as the group is done. ``reduce`` lets a caller
shrink each exact gradient while it is still on the device (``svdtool init`` keeps only its top 2r
singular triplets), so the float32 gradients of earlier groups never pile up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from svdtool.gradients import fold as folds
from svdtool.gradients.finite import check_folded
from svdtool.gradients.graphed import GraphStats
from svdtool.gradients.model import Target, blocks
from svdtool.gradients.passes import MicroBatch, PassPlan, Timer, check_chain, run_pass, stage
from svdtool.gradients.plan import partition
from svdtool.linalg.sketch import LowRankGradient, gaussian, recover, sketch_sizes
from svdtool.runtime import Progress, SilentProgress

if TYPE_CHECKING:
    import torch
    from torch import nn

#: Keep the stored boundary gradients on the device while they take at most this many bytes.
DELTA_DEVICE_BYTES = 2 << 30
#: Default range-sketch oversampling: k = 8t columns for t triplets (see :func:`svdtool.linalg.sketch.sketch_sizes`).
SKETCH_OVERSAMPLE = 8


@dataclass
class ComputeSettings:
    mode: str = "exact"  # exact | sketch
    groups: int = 1  # layer groups (passes), chosen by svdtool.gradients.plan
    offload: bool = False
    sketch_rank: int = 16
    sketch_oversample: int = SKETCH_OVERSAMPLE
    seed: int = 0
    snapshots: list[int] = field(default_factory=list)  # logical-batch counts at which to copy the running mean
    keep_on_device: bool = False  # leave every exact gradient on the device (else the last group's only)


@dataclass
class Computed:
    results: dict[str, Any]  # tensor name -> G (out, in) float32, LowRankGradient, or reduce(...)'s value
    snapshots: dict[int, dict[str, torch.Tensor]]  # logical batches -> name -> running mean (CPU)
    groups: int
    batches: int
    seconds: float
    tokens_per_second: float
    graph_stats: GraphStats = field(default_factory=GraphStats)
    finish_seconds: float = 0.0  # of ``seconds``: turning accumulators into results (reduce, recovery, copies)
    accumulator_bytes: int = 0  # torchrun: this rank's float32 accumulators or sketches (the sharded passes)


def micro_batches(items: list[Any], batch_size: int, micro: int, pad: int, multiple: int = 1) -> list[MicroBatch]:
    """Logical batches of ``batch_size`` examples, split into micro-batches of at most ``micro``.

    Each micro-batch is padded to its longest item, rounded up to ``multiple`` tokens.
    """
    from svdtool.calibration.encode import batches, collate

    out = []
    for b, group in enumerate(batches(items, batch_size)):
        norm = float(sum(e.loss_tokens for e in group))
        for start in range(0, len(group), micro):
            part = group[start : start + micro]
            tokens = sum(len(e.input_ids) for e in part)
            last = start + micro >= len(group)
            out.append(MicroBatch(b, collate(part, pad, multiple), norm, len(part), tokens, last))
    return out


def split_groups(targets: list[Target], k: int) -> list[list[Target]]:
    """Contiguous groups of blocks with about equal accumulator bytes, top group first."""
    by_block: dict[int, list[Target]] = {}
    for t in targets:
        by_block.setdefault(t.block, []).append(t)
    order = sorted(by_block, reverse=True)
    sizes = [sum(t.out_features * t.in_features for t in by_block[b]) for b in order]
    return [[t for i in run for t in by_block[order[i]]] for run in partition(sizes, k)]


def test_matrices(
    targets: list[Target], s: ComputeSettings, dtype: torch.dtype, device: torch.device
) -> dict[str, Any]:
    """Ω (in, k) per input width and Ψ (l, out) per output width, seeded, in the model dtype."""
    out: dict[str, Any] = {}
    for t in targets:
        k, l_ = sketch_sizes(s.sketch_rank, t.out_features, t.in_features, s.sketch_oversample)
        key_o, key_p = f"omega:{t.in_features}:{k}", f"psi:{l_}:{t.out_features}"
        if key_o not in out:
            out[key_o] = gaussian(t.in_features, k, s.seed).to(device=device, dtype=dtype)
        if key_p not in out:
            out[key_p] = gaussian(l_, t.out_features, s.seed + 1).to(device=device, dtype=dtype)
        out[t.name] = (out[key_o], out[key_p])
    return out


def _states(
    group: list[Target], s: ComputeSettings, device: torch.device, tm: dict[str, Any], cache: folds.XOmegaCache
) -> dict[str, Any]:
    import torch

    out: dict[str, Any] = {}
    for t in group:
        if s.mode == "sketch":
            omega, psi = tm[t.name]
            out[t.name] = folds.SketchFold(t, omega, psi, cache)
            continue
        st = folds.ExactFold(t, torch.device("cpu") if s.offload else device)
        if s.offload and device.type == "cuda":
            st.acc = st.acc.pin_memory()
        out[t.name] = st
    return out


def _hidden_size(model: nn.Module) -> int:
    cfg = model.config
    return int(getattr(cfg, "hidden_size", None) or getattr(cfg, "n_embd", 0) or 0)


def compute_gradients(
    model: nn.Module,
    targets: list[Target],
    micro: list[MicroBatch],
    settings: ComputeSettings,
    device: torch.device,
    progress: Progress | None = None,
    reduce: Callable[[str, torch.Tensor], Any] | None = None,
    on_result: Callable[[str, Any], None] | None = None,
) -> Computed:
    """Fold every micro-batch's target gradients; returns G = (1/n_batches) Σ_b ∇ mean-loss(b) per target.

    ``on_result(name, value)`` is called as soon as each target's result exists (its group's pass is done),
    so a consumer on another thread can start on it while later passes run.
    """
    import torch

    progress = progress or SilentProgress()
    n_batches = micro[-1].batch + 1
    param = next(model.parameters())
    all_blocks = dict(blocks(model))
    groups = split_groups(targets, settings.groups)
    stage(micro, device)
    if len(groups) > 1:
        check_chain(model, list(all_blocks.values()), micro[0], device)
    tm = test_matrices(targets, settings, param.dtype, device) if settings.mode == "sketch" else {}
    snapshots: dict[int, dict[str, torch.Tensor]] = {c: {} for c in settings.snapshots}
    delta_bytes = sum(mb.inputs["input_ids"].numel() for mb in micro) * _hidden_size(model) * param.element_size()
    delta_device = device if delta_bytes <= DELTA_DEVICE_BYTES else torch.device("cpu")
    results: dict[str, Any] = {}
    total_tokens = sum(mb.tokens for mb in micro)
    progress.start("gradients", sum(mb.samples for mb in micro) * len(groups))
    timer = Timer()
    done = 0
    deltas: list[torch.Tensor] | None = None
    prev_low = 0
    live: dict[str, Any] = {}  # the group being folded: {"states", "index"}
    xo_cache = folds.XOmegaCache()
    stats = GraphStats()
    finish_s = 0.0

    def on_step(mb: MicroBatch) -> None:
        nonlocal done
        xo_cache.clear()
        done += mb.tokens
        rate = done / max(timer(), 1e-9)
        for _ in range(mb.samples):
            progress.advance(f"pass {live['index'] + 1}/{len(groups)} · {rate:,.0f} tok/s")
        if mb.last_of_batch and (mb.batch + 1) in snapshots and settings.mode == "exact":
            for name, st in live["states"].items():
                snapshots[mb.batch + 1][name] = (st.acc / (mb.batch + 1)).cpu()

    try:
        for gi, group in enumerate(groups):
            live["index"] = gi
            states = _states(group, settings, device, tm, xo_cache)
            handles = [folds.install(t, states[t.name]) for t in group]
            # A pass folds its group and stops right below the previous group's lowest block, whose input
            # gradient the previous pass stored (blocks without targets in between are back-propagated too).
            low = min(t.block for t in group)
            high = max(t.block for t in group) if gi == 0 else prev_low - 1
            prev_low = low
            plan = PassPlan(all_blocks[low], all_blocks[high], top=gi == 0, bottom=gi == len(groups) - 1)

            live["states"] = states

            try:
                deltas = run_pass(model, plan, micro, device, deltas, delta_device, on_step, settings.offload, stats)
            finally:
                for h in handles:
                    h.remove()
                live.clear()  # the step callback must not keep this group's accumulators alive
            check_folded(states, model, micro, device)  # one reduction per target; names layer and batch
            keep = settings.keep_on_device or gi == len(groups) - 1
            t_finish = timer()
            for name, st in states.items():
                results[name] = finish(name, st, n_batches, settings, keep, reduce)
                if on_result is not None:
                    on_result(name, results[name])
            del states
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            finish_s += timer() - t_finish
    finally:
        progress.finish()
    seconds = timer()
    rate = total_tokens * len(groups) / max(seconds, 1e-9)
    return Computed(results, snapshots, len(groups), n_batches, seconds, rate, stats, finish_s)


def finish(
    name: str,
    state: Any,
    n_batches: int,
    s: ComputeSettings,
    keep_on_device: bool,
    reduce: Callable[[str, torch.Tensor], Any] | None,
) -> Any:
    """The mean gradient (exact), reduce(name, G) while G is on the device, or the recovered top factors."""
    if isinstance(state, folds.SketchFold):
        lr = recover(state.y, state.w, state.psi, s.sketch_rank)
        return LowRankGradient(lr.U, lr.S / n_batches, lr.Vh)
    acc = state.acc.div_(n_batches)
    if reduce is not None:
        return reduce(name, acc)
    return acc if keep_on_device else acc.cpu()
