"""NaN and ±Inf in gradient work: the weights before any pass, the folded gradients after each group.

Nothing here runs per step (no host sync in the hot loop): a non-finite value in a step makes the folded
sum non-finite, which one reduction per target finds when its group ends. Only then, on the failure path,
are the batches' losses recomputed (forward only) to name the batch that went wrong.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from svdtool.errors import SvdtoolError
from svdtool.nonfinite import NonFinite, first_nonfinite, refusal

if TYPE_CHECKING:
    import torch
    from torch import nn

    from svdtool.gradients.passes import MicroBatch


def check_weights(model: nn.Module) -> None:
    """Refuse a model with NaN or ±Inf in any parameter (one reduction each on the device, one sync), naming it."""
    found = first_nonfinite((name, p.detach()) for name, p in model.named_parameters())
    if found is not None:
        raise refusal(*found)


def check_folded(states: Mapping[str, Any], model: nn.Module, micro: list[MicroBatch], device: torch.device) -> None:
    """After a group's pass: refuse when a target's folded gradient (exact accumulator or sketches) is not finite.

    The message names the layer and the first calibration batch whose loss is NaN or ±Inf.
    """
    found = folded_nonfinite(states)
    if found is not None:
        raise folded_refusal(found, model, micro, device)


def folded_nonfinite(states: Mapping[str, Any]) -> tuple[str, NonFinite] | None:
    """The first target whose accumulator (exact, or its row shard) or sketches hold NaN or ±Inf."""
    parts = []
    for name, st in states.items():
        parts += [(name, st.acc)] if hasattr(st, "acc") else [(name, st.y), (name, st.w)]  # Exact | SketchFold
    return first_nonfinite(parts)


def folded_refusal(
    found: tuple[str, NonFinite], model: nn.Module, micro: list[MicroBatch], device: torch.device
) -> SvdtoolError:
    """The error for a non-finite folded gradient; it runs forward passes (every rank of a sharded model must)."""
    name, bad = found
    return SvdtoolError(f"the gradient of {name} has non-finite values ({bad}): {_culprit(model, micro, device)}")


def _culprit(model: nn.Module, micro: list[MicroBatch], device: torch.device) -> str:
    """Which batch made it: recompute the losses (forward only) up to the first one that is not finite."""
    import torch

    from svdtool.gradients.passes import loss_of

    with torch.no_grad():
        for mb in micro:
            value = float(loss_of(model, mb, device))
            if not math.isfinite(value):
                return (
                    f"the loss of calibration batch {mb.batch + 1} is {value} (the model's activations overflow "
                    "on it): try --dtype fp32, or leave that sample out"
                )
    return "every batch's loss is finite, so the backward pass overflowed: try --dtype fp32"
