"""NaN and ±Inf in a tensor: one fused reduction per tensor, and exact counts only when it finds something.

A sum is non-finite whenever any element is NaN or ±Inf (NaN propagates, +Inf + −Inf is NaN), so one
reduction in the tensor's own dtype answers "all finite?" at memory speed on any device. A non-finite
sum of finite values (an overflow) is told apart by the exact counts, taken only on that rare path.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from svdtool.errors import SvdtoolError

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class NonFinite:
    """How many elements of a tensor are NaN, +Inf and −Inf."""

    nan: int
    pos_inf: int
    neg_inf: int

    def __str__(self) -> str:
        parts = [(self.nan, "NaN"), (self.pos_inf, "+Inf"), (self.neg_inf, "−Inf")]
        return ", ".join(f"{n:,} {what}" for n, what in parts if n)


def nonfinite(t: torch.Tensor) -> NonFinite | None:
    """None when every element of ``t`` is finite (integer tensors always are); else the counts.

    One reduction on ``t``'s device and one host sync; ``t`` is not copied.
    """
    import torch

    if not t.is_floating_point() or t.numel() == 0:
        return None
    if bool(torch.isfinite(t.sum())):
        return None
    counts = NonFinite(int(torch.isnan(t).sum()), int(torch.isposinf(t).sum()), int(torch.isneginf(t).sum()))
    return counts if counts.nan or counts.pos_inf or counts.neg_inf else None  # the sum overflowed


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor]]) -> tuple[str, NonFinite] | None:
    """The first (name, counts) among many tensors with NaN or ±Inf, or None: one reduction per tensor and a
    single host sync per device for all of them (exact counts only for a tensor whose sum is not finite)."""
    import torch

    items = [(n, t) for n, t in named if t.is_floating_point() and t.numel()]
    by_device: dict[torch.device, list[int]] = {}
    for k, (_, t) in enumerate(items):
        by_device.setdefault(t.device, []).append(k)
    suspects: list[int] = []
    for ks in by_device.values():
        sums = torch.stack([items[k][1].sum().float() for k in ks])
        suspects += [ks[j] for j in torch.nonzero(~torch.isfinite(sums)).flatten().tolist()]
    for k in sorted(suspects):
        bad = nonfinite(items[k][1])
        if bad is not None:
            return items[k][0], bad
    return None


#: What a user can do about a checkpoint with NaN or Inf in it.
ADVICE = (
    "the checkpoint is damaged (an fp16 overflow in a merge or conversion, an interrupted download): "
    "re-download or re-convert it; `svdtool spectrum` lists every affected tensor"
)


def require_finite(t: torch.Tensor, label: str, advice: str = ADVICE) -> None:
    """Raise a one-line :class:`SvdtoolError` naming ``label`` and the counts when ``t`` has NaN or ±Inf."""
    bad = nonfinite(t)
    if bad is not None:
        raise refusal(label, bad, advice)


def refusal(label: str, bad: NonFinite, advice: str = ADVICE) -> SvdtoolError:
    return SvdtoolError(f"{label} has non-finite values ({bad}): {advice}")


class TimedCheck:
    """:func:`nonfinite` with its time summed into ``seconds`` (a run's timings); safe from several threads."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._lock = threading.Lock()

    def counts(self, t: torch.Tensor) -> NonFinite | None:
        t0 = time.perf_counter()
        try:
            return nonfinite(t)
        finally:
            with self._lock:
                self.seconds += time.perf_counter() - t0

    def require(self, t: torch.Tensor, label: str) -> None:
        """:func:`require_finite`, timed."""
        bad = self.counts(t)
        if bad is not None:
            raise refusal(label, bad)
