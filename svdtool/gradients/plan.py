"""Choose layer groups and the micro-batch size from the memory a device has (no I/O, no torch).

A calibration pass holds, besides the model weights:

* the float32 accumulators of the group it folds (exact mode: 4 bytes per target parameter; sketch mode:
  the sketches, a few MB; ``--offload``: none on the device);
* the activations autograd saves for the blocks of that group, for one micro-batch;
* the logits of one micro-batch in the model dtype, their float32 copy and its gradient (the top pass);
* with several groups, the boundary gradients δ handed from one pass to the next.

:func:`plan_memory` estimates that peak for K groups and micro-batch m, and takes the first (K, m) that
fits the budget with a margin: K = 1 first (each extra group re-runs part of the forward), and for each K
the largest micro-batch (a smaller one loses a little GEMM efficiency, far less than a pass). The
activation model was fitted to the peak measured on Llama-2-7B shapes (2 × 1024 tokens, one group:
48.2 GiB allocated = 12.6 GiB weights + 24.1 GiB accumulators + the rest), and errs high.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from svdtool.errors import SvdtoolError

GiB = 1 << 30
#: Saved activations per token and block, in elements of the model dtype: ≈ 12 hidden-wide tensors (norm
#: inputs and outputs, q/k/v/o inputs and outputs, residuals, attention output) and 4 intermediate-wide ones
#: (gate and up outputs, the activation, down's input).
ACT_HIDDEN, ACT_INTERMEDIATE = 12, 4
#: Keep this share of the budget free (allocator fragmentation, cuBLAS workspaces, the SVD after the pass).
MARGIN_SHARE = 0.1
#: …and at least this much.
MARGIN_BYTES = 2 * GiB


@dataclass(frozen=True)
class ModelShape:
    """What the memory model needs to know of the model, read from config and checkpoint headers."""

    weight_bytes: int  # every parameter, in the compute dtype
    target_params: list[int]  # target parameters per block, top block first (the order passes run)
    hidden: int
    intermediate: int
    vocab: int
    itemsize: int  # bytes per element of the compute dtype


@dataclass(frozen=True)
class MemoryPlan:
    groups: int
    micro_batch_size: int
    need: int  # estimated peak bytes on the device, weights included
    budget: int | None  # bytes the device had free before the weights loaded; None: not planned by memory
    reason: str  # one line for the run summary and the JSON

    def as_dict(self) -> dict[str, object]:
        return {
            "groups": self.groups,
            "micro_batch_size": self.micro_batch_size,
            "estimated_peak": self.need,
            "budget": self.budget,
            "reason": self.reason,
        }


def _gib(n: float) -> str:
    return f"{n / GiB:.1f} GiB"


def partition(sizes: list[int], k: int) -> list[list[int]]:
    """Split consecutive items with these sizes into k (or fewer) runs of about equal total: lists of indices.

    compute.split_groups groups the blocks with it (top block first), so the planner's estimate of the
    largest group is the size the run will have.
    """
    k = max(1, min(k, len(sizes)))
    total = sum(sizes)
    runs: list[list[int]] = [[]]
    cum = 0
    for i, size in enumerate(sizes):
        runs[-1].append(i)
        cum += size
        left_items, left_runs = len(sizes) - i - 1, k - len(runs)
        if left_runs > 0 and left_items > 0 and (cum >= total * len(runs) / k or left_items == left_runs):
            runs.append([])
    return runs


def largest_group(params: list[int], k: int) -> int:
    return max(sum(params[i] for i in run) for run in partition(params, k))


def estimate(
    shape: ModelShape, mode: str, offload: bool, k: int, micro: int, width: int, n_micro: int, sketch_bytes: int = 0
) -> int:
    """Peak device bytes of a run with k groups and micro-batches of ``micro`` sequences of ``width`` tokens.

    ``sketch_bytes``: the float32 range and co-range sketches of every target (sketch mode).
    """
    blocks = len(shape.target_params)
    k = max(1, min(k, blocks))
    tokens = micro * width
    if mode == "sketch":
        acc = sketch_bytes
    else:
        acc = 0 if offload else 4 * largest_group(shape.target_params, k)
    per_token_block = shape.itemsize * (ACT_HIDDEN * shape.hidden + ACT_INTERMEDIATE * shape.intermediate)
    acts = per_token_block * tokens * math.ceil(blocks / k)
    logits = tokens * shape.vocab * (shape.itemsize + 8)
    deltas = 0 if k == 1 else n_micro * tokens * shape.hidden * shape.itemsize
    return shape.weight_bytes + acc + acts + logits + deltas


def plan_memory(
    shape: ModelShape,
    *,
    mode: str,
    offload: bool,
    batch_size: int,
    width: int,
    n_batches: int,
    budget: int | None,
    groups: int | None = None,
    micro_batch_size: int | None = None,
    sketch_bytes: int = 0,
) -> MemoryPlan:
    """The (groups, micro-batch) to run with; ``groups`` / ``micro_batch_size`` given by the user are kept.

    ``budget`` is the free device memory (None on a CPU: one group, the whole batch, host memory).
    ``width`` is the longest padded sequence. Raises SvdtoolError, before anything is loaded, when even the
    most groups and micro-batch 1 do not fit.
    """
    blocks = max(1, len(shape.target_params))
    if mode == "sketch" or offload:
        max_groups = 1
    else:
        max_groups = blocks
    ks = [groups] if groups else list(range(1, max_groups + 1))
    ms = [micro_batch_size] if micro_batch_size else _halvings(batch_size)

    def need(k: int, m: int) -> int:
        return estimate(shape, mode, offload, k, m, width, n_batches * math.ceil(batch_size / m), sketch_bytes)

    if budget is None:
        k, m = ks[0], ms[0]
        return MemoryPlan(k, m, need(k, m), None, "CPU: host memory, one pass over the data" if k == 1 else "as given")
    usable = budget - max(MARGIN_BYTES, int(MARGIN_SHARE * budget))
    for k in ks:
        for m in ms:
            n = need(k, m)
            if n <= usable:
                return MemoryPlan(k, m, n, budget, _reason(k, m, n, budget, groups, micro_batch_size, batch_size))
    if groups or micro_batch_size:
        k, m = ks[-1], ms[-1]
        return MemoryPlan(k, m, need(k, m), budget, f"as given; estimated {_gib(need(k, m))} of {_gib(budget)} free")
    k, m = ks[-1], ms[-1]
    raise SvdtoolError(_too_big(shape, mode, offload, need(k, m), budget, k))


def _halvings(batch_size: int) -> list[int]:
    out, m = [], batch_size
    while m >= 1:
        out.append(m)
        m = m // 2 if m > 1 else 0
    return out


def _reason(k: int, m: int, n: int, budget: int, groups: int | None, micro: int | None, batch: int) -> str:
    fit = f"estimated peak {_gib(n)} of {_gib(budget)} free"
    if groups or micro:
        return f"as given; {fit}"
    if k == 1 and m == batch:
        return f"one pass fits: {fit}"
    if k == 1:
        return f"micro-batch {m} so that one pass fits: {fit}"
    return f"{k} layer groups (micro-batch {m}) so that the float32 accumulators fit: {fit}"


def _too_big(shape: ModelShape, mode: str, offload: bool, smallest: int, budget: int, k: int) -> str:
    options = []
    if mode == "exact":
        options.append("--gradient sketch (no weight-sized accumulators)")
        if not offload:
            options.append("--offload (accumulators in host memory)")
    options.append("more GPUs (torchrun)")
    if shape.weight_bytes > budget:
        what = f"the weights alone take {_gib(shape.weight_bytes)}"
    else:
        what = f"even {k} layer groups at micro-batch 1 need about {_gib(smallest)}"
    return f"this run does not fit the device ({_gib(budget)} free): {what}; try {', or '.join(options)}"
