"""Capture a fixed sequence of CUDA operations once and replay it. Pure compute: no I/O.

The two-stage eigen-solves and the small-σ refinement run hundreds of small kernels per matrix; on
hosts with slow cores the launches, not the GPU, set the pace (20–40 µs per torch call measured on an
H100 host, docs/benchmarks.md). A captured graph launches them all at once.

:func:`replay` captures ``fn`` on first use for a given key and replays it afterwards, copying the inputs
into the graph's own input tensors and returning clones of its outputs. Where capture fails (an
operation that cannot be captured on this setup) it returns None once and for all for that key, and the
caller runs ``fn`` eagerly. :func:`release` frees the captured graphs and the device memory they hold.
:func:`on_side_stream` and :func:`capture` are the two steps of a capture, for callers that keep their own
graphs (calibration steps, :mod:`svdtool.gradients.graphed`).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    import torch

T = TypeVar("T")

#: Switch for replaying captured graphs (tests and benchmarks turn it off to compare); the environment
#: variable ``SVDTOOL_CUDA_GRAPHS=0`` turns it off for a run.
ENABLED = os.environ.get("SVDTOOL_CUDA_GRAPHS", "1") != "0"


@dataclass
class _Captured:
    graph: Any  # torch.cuda.CUDAGraph
    inputs: tuple[torch.Tensor, ...]
    outputs: tuple[torch.Tensor, ...]


_captured: dict[tuple[Any, ...], _Captured | None] = {}


def replay(
    key: tuple[Any, ...], fn: Callable[..., Sequence[torch.Tensor]], inputs: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, ...] | None:
    """``fn(*inputs)`` through a graph captured for ``key``; None where graphs are off or capture failed.

    ``fn`` must launch the same operations for every input of the same shapes (no host synchronisation,
    no data-dependent control flow) and return tensors; it may overwrite its inputs, which are the
    graph's own slots, refilled before every replay. The key must pin everything the operations
    depend on besides the input values: shapes, dtypes, device, parameters.
    """
    if not ENABLED or not all(t.is_cuda for t in inputs):
        return None
    if key not in _captured:
        _captured[key] = _capture(fn, inputs)
    cap = _captured[key]
    if cap is None:
        return None
    for slot, value in zip(cap.inputs, inputs, strict=True):
        slot.copy_(value)
    cap.graph.replay()
    return tuple(t.clone() for t in cap.outputs)


def _capture(fn: Callable[..., Sequence[torch.Tensor]], inputs: Sequence[torch.Tensor]) -> _Captured | None:
    device = inputs[0].device
    slots = tuple(t.clone() for t in inputs)
    try:
        # warm-up: library handles and workspaces exist before capture
        on_side_stream(device, lambda: fn(*(t.clone() for t in slots)))
    except RuntimeError:  # an operation that cannot run here
        import torch

        torch.cuda.synchronize(device)
        return None
    # thread_local: other threads (the reader uploading the next tensor) may keep using CUDA during the
    # capture; only this thread's stream is being recorded.
    captured = capture(device, lambda: tuple(fn(*slots)), mode="thread_local")
    return None if captured is None else _Captured(captured[0], slots, captured[1])


def on_side_stream(device: torch.device, fn: Callable[[], T]) -> T:
    """``fn()`` on a fresh stream, as torch asks of the warm-up before a capture; later work waits for it."""
    import torch

    main = torch.cuda.current_stream(device)
    side = torch.cuda.Stream(device)
    side.wait_stream(main)
    with torch.cuda.stream(side):
        out = fn()
    main.wait_stream(side)  # everything after (frees and reuse of its memory included) waits for it
    return out


#: Held for the whole of every capture. Work on another thread that may make a call a capture forbids
#: (an allocation, a synchronous copy: LoRA-GA's init stream beside the calibration passes) takes it too.
_CAPTURING = threading.RLock()


def exclusive() -> contextlib.AbstractContextManager[Any]:
    """Hold this around CUDA work of another thread so that it never overlaps a capture."""
    return _CAPTURING


def capture(device: torch.device, fn: Callable[[], T], pool: Any = None, mode: str = "global") -> tuple[Any, T] | None:
    """(graph, what ``fn`` returned) with ``fn``'s kernels recorded, not run; None where capture fails.

    ``pool``: another graph's memory pool to share. Entering a capture synchronises and empties the cache.
    """
    import torch

    graph = torch.cuda.CUDAGraph()
    try:
        with _CAPTURING, torch.cuda.graph(graph, pool=pool, capture_error_mode=mode):
            out = fn()
    except RuntimeError:  # an operation that cannot be captured here
        torch.cuda.synchronize(device)
        return None
    return graph, out


def release() -> None:
    """Free every captured graph and the device memory it holds."""
    _captured.clear()
