"""Forward/backward passes over the calibration micro-batches, one group of blocks at a time.

With K groups the data is run K times, top group first. Pass 1 runs the whole model, computes the loss
and back-propagates down to the input of its lowest block, where it stores the hidden-state gradient δ
of every micro-batch. Each later pass runs the forward only up to the top of its group (a forward hook
stops it), back-propagates the stored δ through the group, and stores the δ at the group's bottom for
the next pass. So only one group's float32 accumulators (and activations) exist at a time, at the cost of
re-running the lower part of the forward: 3 + (K−1)/2 forward-equivalents instead of 3.

The loss of a micro-batch m inside logical batch b is Σ_{t∈m} CE_t / N_b (N_b = target tokens in b), so
the folded sum over all micro-batches is Σ_b ∇ mean-loss(b), whatever the micro-batch size.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from svdtool.errors import SvdtoolError
from svdtool.gradients import graphed
from svdtool.gradients.graphed import GraphStats, StepInputs, StepRunner

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class MicroBatch:
    batch: int  # logical batch index
    inputs: dict[str, torch.Tensor]  # input_ids, attention_mask, labels (CPU)
    norm: float  # N_b: target tokens of the logical batch
    samples: int
    tokens: int  # non-pad input tokens
    last_of_batch: bool
    staged: StepInputs | None = None  # the inputs already on the device (see :func:`stage`)


class _Stop(Exception):  # noqa: N818 - control flow, not an error
    def __init__(self, output: Any) -> None:
        super().__init__()
        self.output = output


def _hidden(value: Any) -> torch.Tensor:
    """The hidden states in a block's output (a tensor, or a tuple whose first item is one)."""
    import torch

    h = value[0] if isinstance(value, (tuple, list)) else value
    if not isinstance(h, torch.Tensor):
        raise SvdtoolError(
            "grouped gradient passes do not support this architecture's block outputs; use --grad-groups 1"
        )
    return h


def stage(micro: list[MicroBatch], device: torch.device) -> None:
    """Upload every micro-batch's inputs once, before the passes (a few MB of token ids).

    A copy from pageable host memory inside the loop would make the host wait for the GPU to drain at every
    step, so the next step's kernels could not be queued while the current one runs.
    """
    import torch

    for mb in micro:
        mb.staged = to_device(mb, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_device(mb: MicroBatch, device: torch.device, delta: torch.Tensor | None = None) -> StepInputs:
    """The micro-batch's tensors on ``device``; the mask is dropped when nothing is padded (same result)."""
    import dataclasses

    import torch

    if mb.staged is not None and mb.staged.ids.device == device:
        return dataclasses.replace(mb.staged, delta=None if delta is None else delta.to(device, non_blocking=True))
    mask = mb.inputs["attention_mask"]
    return StepInputs(
        ids=mb.inputs["input_ids"].to(device, non_blocking=True),
        mask=None if bool(mask.all()) else mask.to(device, non_blocking=True),
        labels=mb.inputs["labels"].to(device, non_blocking=True),
        norm=torch.tensor(mb.norm, dtype=torch.float32).to(device, non_blocking=True),
        delta=None if delta is None else delta.to(device, non_blocking=True),
    )


def loss(model: nn.Module, io: StepInputs) -> torch.Tensor:
    """Σ over target tokens of the next-token cross-entropy, divided by N_b (float32)."""
    import torch

    logits = model(input_ids=io.ids, attention_mask=io.mask, use_cache=False).logits  # (B, T, V)
    shift = logits[:, :-1].float()
    target = io.labels[:, 1:]
    ce = torch.nn.functional.cross_entropy(
        shift.reshape(-1, shift.shape[-1]), target.reshape(-1), ignore_index=-100, reduction="sum"
    )
    return ce / io.norm


def loss_of(model: nn.Module, mb: MicroBatch, device: torch.device) -> torch.Tensor:
    """:func:`loss` of a micro-batch still on the host."""
    return loss(model, to_device(mb, device))


@dataclass
class PassPlan:
    """One pass: which blocks it folds, and where it starts and stops."""

    low_block: nn.Module  # lowest block of the group (its input gradient is stored for the next pass)
    high_block: nn.Module  # where the forward stops (not used by the top pass, which runs the whole model)
    top: bool
    bottom: bool


def run_pass(
    model: nn.Module,
    plan: PassPlan,
    micro: list[MicroBatch],
    device: torch.device,
    deltas_in: list[torch.Tensor] | None,
    delta_device: torch.device,
    on_step: Callable[[MicroBatch], None],
    offload: bool = False,
    stats: GraphStats | None = None,
) -> list[torch.Tensor]:
    """Run every micro-batch through the pass; returns the stored δ at the group's bottom (empty for the last pass).

    On CUDA, steps may be replayed as captured graphs (:mod:`svdtool.gradients.graphed`; never with host-offloaded
    accumulators); the folds' results are the same either way.
    """
    import torch

    deltas_out: list[torch.Tensor] = []
    captured: dict[str, Any] = {}
    handles = []

    def capture_input(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        h = args[0] if args else kwargs["hidden_states"]
        leaf = h.detach().requires_grad_(True)
        captured["leaf"] = leaf
        if args:
            return (leaf, *args[1:]), kwargs
        return args, {**kwargs, "hidden_states": leaf}

    def stop(module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        raise _Stop(output)

    def input_leaf(module: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
        # The lowest pass back-propagates from the embedding output, so that every target output requires grad.
        return output.detach().requires_grad_(True)

    def step(io: StepInputs) -> torch.Tensor | None:
        """One micro-batch: forward, backward (the folds run inside it), and the δ at the group's bottom."""
        if plan.top:
            loss(model, io).backward()
        else:
            try:
                model(input_ids=io.ids, attention_mask=io.mask, use_cache=False)
                raise SvdtoolError("the forward pass never reached the group's top block; use --grad-groups 1")
            except _Stop as s:
                h = _hidden(s.output)
            assert io.delta is not None
            if io.delta.shape != h.shape:
                raise SvdtoolError("block outputs changed shape between passes; use --grad-groups 1")
            torch.autograd.backward(h, io.delta)
        if plan.bottom:
            return None
        leaf = captured.pop("leaf")
        return leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)

    if plan.bottom:
        embed = model.get_input_embeddings()  # type: ignore[operator]
        handles.append(embed.register_forward_hook(input_leaf))
    else:
        handles.append(plan.low_block.register_forward_pre_hook(capture_input, with_kwargs=True))
    if not plan.top:
        handles.append(plan.high_block.register_forward_hook(stop))
    runner = StepRunner(device, graphed.usable(device, offload), stats)
    try:
        for i, mb in enumerate(micro):
            # Every pass but the top one back-propagates the δ the previous pass stored.
            io = to_device(mb, device, None if deltas_in is None else deltas_in[i])
            if deltas_in is not None:
                deltas_in[i] = None  # type: ignore[call-overload]  # free it as soon as it is used
            out = runner.run(io, step)
            del io
            if out is not None:
                deltas_out.append(out.to(delta_device, non_blocking=True))
            on_step(mb)
    finally:
        runner.close()
        for hd in handles:
            hd.remove()
    return deltas_out


def check_chain(model: nn.Module, blocks: list[nn.Module], micro: MicroBatch, device: torch.device) -> None:
    """Grouped passes need each block to take the previous block's output unchanged; check it once, forward only."""
    import torch

    outputs: dict[int, torch.Tensor] = {}
    bad: list[int] = []
    handles = []
    for i, blk in enumerate(blocks):

        def pre(module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any], i: int = i) -> None:
            h = args[0] if args else kwargs.get("hidden_states")
            prev = outputs.get(i - 1)
            if i > 0 and (prev is None or h is None or not (h is prev or torch.equal(h, prev))):
                bad.append(i)

        def post(module: nn.Module, args: tuple[Any, ...], output: Any, i: int = i) -> None:
            outputs[i] = _hidden(output)

        handles.append(blk.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(blk.register_forward_hook(post))
    try:
        with torch.no_grad():
            io = to_device(micro, device)
            model(input_ids=io.ids, attention_mask=io.mask, use_cache=False)
    finally:
        for hd in handles:
            hd.remove()
    if bad:
        raise SvdtoolError(
            f"block {bad[0]} does not take block {bad[0] - 1}'s output unchanged, so layer groups cannot be "
            "chained for this architecture; use --grad-groups 1"
        )


class Timer:
    def __init__(self) -> None:
        self.t0 = time.perf_counter()

    def __call__(self) -> float:
        return time.perf_counter() - self.t0


class Laps:
    """Named wall-clock phases: ``lap(name)`` records the seconds since the previous lap."""

    def __init__(self, into: dict[str, float]) -> None:
        self.into = into
        self.t = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.into[name] = round(now - self.t, 4)
        self.t = now
