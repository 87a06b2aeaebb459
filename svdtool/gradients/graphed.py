"""Replay calibration steps (forward + backward of one micro-batch) as CUDA graphs where that is faster.

A step launches thousands of small kernels (norms, rotary embeddings, activations, our folds besides the
GEMMs). On hosts with slow cores each launch costs 20–40 µs of Python and dispatch. On small models, or
small micro-batches, the GPU then waits on the host, and a graph, which launches the whole step at once,
is several times faster (4.8× per step on SmolLM2-135M shapes on an H100). On a 7B model at 2 × 1024
tokens the GPU itself is the bottleneck and a graph gains nothing (benchmarks/probe_step_graphs.py).
So :class:`StepRunner` measures before it commits, once per pass:

1. step 1 runs eagerly on a side stream, as the torch documentation asks before a capture (the autograd
   thread's cuBLAS handle and workspaces, our mixed-dtype GEMM probe);
2. step 2 runs eagerly and is timed twice: when the host has queued its last kernel, and when the GPU has
   finished. If the GPU still had more than :data:`GPU_BOUND_SHARE` of the step to run when the host was
   done, the GPU sets the pace and a graph cannot help: the pass goes on eagerly without a capture (a
   capture and its memory pool cost ≈ 0.9 s on a 7B model, where graphs were always dropped);
3. otherwise step 3 is captured and replayed, and timed. Graphs stay on for the pass only if the replay took
   at most :data:`KEEP_RATIO` of the eager step's time per token; otherwise they are freed and the pass goes
   on eagerly.

Every step is real work: its gradient is folded like any other. With graphs on, each new input shape is
captured once (a capture records the kernels without running them) and replayed after copying the inputs
in. Calibration widths are padded to a multiple of :data:`WIDTH_MULTIPLE` to keep the shapes few (pads carry
no loss and, in a causal model, reach no real token, so they add nothing to any gradient). The graphs of a
pass share one memory pool; everything a capture allocates is dead when it ends except the δ handed to the
next pass, so replaying graphs in any order is safe. A capture that fails (an operation that cannot be
captured on this setup) leaves that shape eager.

A step is capturable because it has no host synchronisation and no data-dependent control flow: the folds of
:mod:`svdtool.gradients.fold` update accumulators that exist before the capture, in place, and the loss
divides by N_b held in a device tensor. Host-offloaded accumulators synchronise, so ``--offload`` runs
eagerly. ``SVDTOOL_CUDA_GRAPHS=0`` turns graphs off (:mod:`svdtool.linalg.cuda_graphs`).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from svdtool.linalg import cuda_graphs

if TYPE_CHECKING:
    import torch

#: Calibration widths are padded up to a multiple of this where steps may be graphed.
WIDTH_MULTIPLE = 64
#: Keep graphs for a pass when a replay takes at most this share of an eager step's time (per token).
KEEP_RATIO = 0.9
#: Skip the capture when the GPU still had this share of the timed eager step to run once the host was done.
GPU_BOUND_SHARE = 0.15
#: Decide by timing (True), or replay every step after the first whatever the timing (tests set False).
ADAPTIVE = True


def usable(device: torch.device, offload: bool) -> bool:
    """Whether steps may be graphed: on CUDA, graphs not turned off, accumulators not in host memory (they sync),
    and not under torch.distributed (the sharded passes run collectives inside the hooks)."""
    return cuda_graphs.ENABLED and device.type == "cuda" and not offload and not _in_process_group()


def _in_process_group() -> bool:
    if "torch.distributed" not in sys.modules:
        return False
    import torch.distributed as dist

    return bool(dist.is_available() and dist.is_initialized())


def width_multiple(device: torch.device, offload: bool) -> int:
    """Pad calibration widths to this multiple: :data:`WIDTH_MULTIPLE` where steps may be graphed, else 1."""
    return WIDTH_MULTIPLE if usable(device, offload) else 1


@dataclass
class StepInputs:
    """One micro-batch on the device: everything a step reads."""

    ids: torch.Tensor  # (B, T) token ids
    mask: torch.Tensor | None  # (B, T); None when nothing is padded (SDPA then runs causal, without a mask)
    labels: torch.Tensor  # (B, T), −100 where no loss
    norm: torch.Tensor  # () float32: N_b, the target tokens of the logical batch
    delta: torch.Tensor | None  # (B, T, H): the gradient at the group's top, stored by the previous pass

    def key(self) -> tuple[Any, ...]:
        """What a captured graph is specific to, besides the pass: the shapes, and whether there is a mask."""
        return (tuple(self.ids.shape), self.mask is None, None if self.delta is None else tuple(self.delta.shape))

    def _tensors(self) -> list[torch.Tensor | None]:
        return [self.ids, self.mask, self.labels, self.norm, self.delta]

    def clone(self) -> StepInputs:
        return StepInputs(*(None if t is None else t.clone() for t in self._tensors()))  # type: ignore[arg-type]

    def fill(self, other: StepInputs) -> None:
        """Copy ``other``'s values into these tensors (a graph's inputs), in place."""
        for slot, value in zip(self._tensors(), other._tensors(), strict=True):
            if slot is not None and value is not None:
                slot.copy_(value, non_blocking=True)


Body = Callable[[StepInputs], "torch.Tensor | None"]


@dataclass
class _Graph:
    graph: Any  # torch.cuda.CUDAGraph
    inputs: StepInputs
    output: torch.Tensor | None  # lives in the pool; cloned after every replay


@dataclass
class GraphStats:
    """Steps by how they ran, summed over passes; ``dropped``: passes where replays were not faster."""

    captured: int = 0
    replayed: int = 0
    eager: int = 0
    failed: int = 0
    dropped: int = 0
    skipped: int = 0  # passes where the timed eager step showed the GPU setting the pace: no capture tried
    gpu_behind_pct: int = 0  # share of the (last) timed eager step the GPU still had to run when the host was done


class StepRunner:
    """Runs ``body(inputs)`` for each micro-batch of one pass: eagerly, or by replaying a captured graph.

    ``body`` must launch the same kernels for every input of the same shapes and return a tensor (the δ
    for the next pass) or None. Call :meth:`close` when the pass ends, to free the graphs and their pool.
    """

    def __init__(self, device: torch.device, enabled: bool, stats: GraphStats | None = None) -> None:
        self.device = device
        self.enabled = enabled and device.type == "cuda"
        self.steps = 0
        self.eager_per_token: float | None = None  # seconds, step 2
        self.decided = not ADAPTIVE
        self.graphs: dict[tuple[Any, ...], _Graph | None] = {}
        self.pool: Any = None
        self.stats = stats if stats is not None else GraphStats()

    def run(self, io: StepInputs, body: Body) -> torch.Tensor | None:
        self.steps += 1
        if not self.enabled:
            return self._eager(io, body)
        if self.steps == 1:
            return self._eager(io, body, side_stream=True)
        if not self.decided and self.eager_per_token is None:
            out, seconds, queued = self._timed(lambda: self._eager(io, body))
            self.eager_per_token = seconds / io.ids.numel()
            self.stats.gpu_behind_pct = round(100 * (seconds - queued) / max(seconds, 1e-9))
            if seconds - queued > GPU_BOUND_SHARE * seconds:
                self.decided, self.enabled = True, False  # the GPU, not the host, sets the pace
                self.stats.skipped += 1
            return out
        key = io.key()
        if key not in self.graphs:
            self.graphs[key] = self._capture(io, body)
        g = self.graphs[key]
        if g is None:
            return self._eager(io, body)
        if self.decided:
            return self._replay(g, io)
        out, seconds, _ = self._timed(lambda: self._replay(g, io))
        self.decided = True
        assert self.eager_per_token is not None
        if seconds / io.ids.numel() > KEEP_RATIO * self.eager_per_token:
            self.enabled = False  # the GPU, not the host, sets the pace: free the graphs and go on eagerly
            self.stats.dropped += 1
            del g  # the last reference outside self.graphs: the pool can then be given back
            self.close()
        return out

    def _eager(self, io: StepInputs, body: Body, side_stream: bool = False) -> torch.Tensor | None:
        self.stats.eager += 1
        if not side_stream:
            return body(io)
        return cuda_graphs.on_side_stream(self.device, lambda: body(io))

    def _replay(self, g: _Graph, io: StepInputs) -> torch.Tensor | None:
        g.inputs.fill(io)
        g.graph.replay()
        self.stats.replayed += 1
        return None if g.output is None else g.output.clone()

    def _timed(self, fn: Callable[[], torch.Tensor | None]) -> tuple[torch.Tensor | None, float, float]:
        """(fn's output, seconds until the GPU finished it, seconds until the host had queued it all)."""
        import torch

        torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        out = fn()
        queued = time.perf_counter() - t0
        torch.cuda.synchronize(self.device)
        return out, time.perf_counter() - t0, queued

    def _capture(self, io: StepInputs, body: Body) -> _Graph | None:
        slots = io.clone()
        # Entering the capture empties the cache, so the eager steps' freed memory is given back before the
        # graph's pool grows.
        captured = cuda_graphs.capture(self.device, lambda: body(slots), pool=self.pool)
        if captured is None:  # this shape stays eager
            self.stats.failed += 1
            return None
        graph, out = captured
        if self.pool is None:
            self.pool = graph.pool()
        self.stats.captured += 1
        return _Graph(graph, slots, out)

    def close(self) -> None:
        """Free the graphs, their input tensors and their pool."""
        import torch

        had = bool(self.graphs)
        self.graphs.clear()
        self.pool = None
        if had:
            torch.cuda.empty_cache()
