"""Activation statistics of the target layers on calibration data (CorDA's and EVA's input covariances).

The model and the data come from the same places as for gradients (:mod:`svdtool.gradients.model`,
:mod:`svdtool.calibration`). One short forward pass finds the targets that receive one and the same
input (q/k/v, gate/up); only the first of each group is hooked. The representatives are split into
``passes`` contiguous ranges of blocks, so that one range's float64 (in, in) accumulators fit in
memory; each pass runs the data once and stops every forward once the range's layers have their inputs. When a range
is done, ``reduce(names, C, count)`` turns its covariance into what the method keeps (EVA: the top components;
CorDA: C itself, on the host) and every target of the group maps to that one value.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from svdtool.calibration import CalibRequest, prepare_calibration
from svdtool.calibration.encode import collate, pad_id
from svdtool.errors import SvdtoolError
from svdtool.gradients.estimate import _checkpoint_infos  # the checkpoint's tensors (GPT-2 prefixes)
from svdtool.gradients.model import find_targets, load_weights, open_model
from svdtool.results.gradients import CalibrationInfo
from svdtool.runtime import Progress, SilentProgress, describe_device, resolve_device
from svdtool.statistics.accumulate import STATISTICS, accumulator, shared_inputs

if TYPE_CHECKING:
    import torch

__all__ = ["STATISTICS", "ActivationRequest", "ActivationStats", "collect_statistics"]


@dataclass
class ActivationRequest:
    model: str
    calib: CalibRequest
    statistic: str = "centred"  # corda | centred (see svdtool.statistics.accumulate)
    revision: str | None = None
    token: str | None = None
    tokenizer: str | None = None
    targets: list[str] = field(default_factory=list)  # [] = all-linear
    dtype: str = "auto"
    device: str = "auto"
    passes: int | None = None  # None: as few as memory allows (1 on the CPU)


@dataclass
class ActivationStats:
    values: dict[str, Any]  # tensor name -> reduce(...) of its input's covariance (shared within a group)
    groups: list[list[str]]  # tensor names that share one input, hooked one first, in model order
    calibration: CalibrationInfo
    counts: dict[str, int]  # tensor name -> samples (corda) or tokens (centred) accumulated
    passes: int
    seconds: float
    device: str
    phases: dict[str, float] = field(default_factory=dict)  # open, tokenize, load, pass, reduce (seconds)


class _Stop(Exception):
    """Raised once every hooked layer of a pass has seen its input: nothing after it is needed."""


def _passes(req: ActivationRequest, widths: list[int], device: torch.device, n_blocks: int) -> int:
    import torch

    if req.passes is not None:
        if req.passes < 1:
            raise SvdtoolError(f"--passes {req.passes}: need at least 1")
        return min(req.passes, n_blocks)
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    need = sum(8 * w * w for w in widths)
    return max(1, min(n_blocks, math.ceil(need / max(0.5 * free, 1))))


def _ranges(reps: list[str], block: dict[str, int], k: int) -> list[list[str]]:
    """``reps`` (model order) in k contiguous ranges of blocks with about equal numbers of layers."""
    blocks = sorted({block[n] for n in reps})
    per = math.ceil(len(blocks) / k)
    chosen = [set(blocks[i : i + per]) for i in range(0, len(blocks), per)]
    return [[n for n in reps if block[n] in c] for c in chosen]


def _run_pass(
    statistic: str,
    modules: dict[str, Any],
    width: dict[str, int],
    batches: list[dict[str, torch.Tensor]],
    forward: Callable[[dict[str, torch.Tensor]], None],
    device: torch.device,
    progress: Progress,
) -> dict[str, Any]:
    """One pass over the data with pre-hooks on ``modules``: their filled accumulators."""
    import torch

    accs = {n: accumulator(statistic, width[n], device) for n in modules}
    mask: list[torch.Tensor | None] = [None]
    hit: set[str] = set()

    def hook_for(name: str) -> Callable[..., None]:
        def hook(_: Any, args: tuple[Any, ...]) -> None:
            accs[name].add(args[0].detach(), mask[0])
            hit.add(name)
            if len(hit) == len(accs):  # every layer of this pass has its input: skip the rest
                raise _Stop

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n)) for n, m in modules.items()]
    try:
        with torch.no_grad():
            for batch in batches:
                m = batch["attention_mask"].bool()
                if statistic == "centred":
                    m &= batch["labels"] != -100  # PEFT's use_label_mask, same positions (no shift)
                padded = not bool(m.all())
                mask[0] = m.to(device) if padded else None
                hit.clear()
                forward(batch)
                progress.advance(f"{int(m.sum())} tokens")
    finally:
        for h in handles:
            h.remove()
    return accs


def collect_statistics(
    req: ActivationRequest,
    reduce: Callable[[list[str], torch.Tensor, int], Any],
    progress: Progress | None = None,
) -> ActivationStats:
    """Run the calibration data through the model and return ``reduce(names, C, count)`` per target."""
    import torch

    progress = progress or SilentProgress()
    if req.statistic not in STATISTICS:
        raise ValueError(f"unknown statistic {req.statistic!r}")
    t0 = time.perf_counter()
    device = resolve_device(req.device)
    src = open_model(
        req.model, revision=req.revision, token=req.token, dtype=req.dtype, device=device, tokenizer=req.tokenizer
    )
    if src.max_positions is not None and req.calib.max_length > src.max_positions:
        raise SvdtoolError(
            f"--max-length {req.calib.max_length} is longer than the model's maximum sequence length "
            f"{src.max_positions}: lower --max-length"
        )
    phases = {"open": time.perf_counter() - t0}
    calib = prepare_calibration(req.calib, src.tokenizer)  # data errors surface before the weights load
    phases["tokenize"] = time.perf_counter() - t0 - sum(phases.values())
    model = load_weights(src, device)
    phases["load"] = time.perf_counter() - t0 - sum(phases.values())
    infos = _checkpoint_infos(src.folder)
    targets = find_targets(model, req.targets, {i.name for i in infos} if infos else None)
    modules = {t.name: t.module for t in targets}
    block = {t.name: t.block for t in targets}
    width = {t.name: t.in_features for t in targets}
    pad = pad_id(src.tokenizer)
    # CorDA is PEFT's batch-size-1 loop: one sample per forward pass, no padding.
    bs = 1 if req.statistic == "corda" else req.calib.batch_size
    batches = [collate(calib.items[i : i + bs], pad) for i in range(0, len(calib.items), bs)]

    def forward(batch: dict[str, torch.Tensor]) -> None:
        try:
            model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                  use_cache=False)  # fmt: skip
        except _Stop:
            pass

    probe = {k: v[:1, : min(16, v.shape[1])] for k, v in batches[0].items()}
    with torch.no_grad():
        groups = shared_inputs(model, modules, lambda: forward(probe))
    reps = [g[0] for g in groups]
    group_of = {g[0]: g for g in groups}
    k = _passes(req, [width[n] for n in reps], device, len({block[n] for n in reps}))
    values: dict[str, Any] = {}
    counts: dict[str, int] = {}
    prev_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the float32 products must be float32
    phases.update({"pass": 0.0, "reduce": 0.0})
    try:
        for p, names in enumerate(_ranges(reps, block, k)):
            progress.start(f"{req.statistic} statistics, pass {p + 1}/{k}", len(batches))
            t_pass = time.perf_counter()
            try:
                accs = _run_pass(
                    req.statistic, {n: modules[n] for n in names}, width, batches, forward, device, progress
                )
            finally:
                progress.finish()
            if device.type == "cuda":
                torch.cuda.synchronize(device)  # the pass's queued products belong to the pass, not the reduce
            t_reduce = time.perf_counter()
            phases["pass"] += t_reduce - t_pass
            for n, acc in accs.items():
                value = reduce(group_of[n], acc.result(), acc.count)
                for member in group_of[n]:
                    values[member] = value
                    counts[member] = acc.count
            phases["reduce"] += time.perf_counter() - t_reduce
    finally:
        torch.backends.cuda.matmul.allow_tf32 = prev_tf32
    seconds = round(time.perf_counter() - t0, 4)
    rounded = {name: round(v, 4) for name, v in phases.items()}
    return ActivationStats(values, groups, calib.info, counts, k, seconds, describe_device(device), rounded)
