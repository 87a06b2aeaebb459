"""Rank allocation across layers under a fixed parameter budget (``svdtool init --rank-alloc``).

Layer l costs c_l = in_l + out_l parameters per rank. With mean rank r̄ the budget is r̄·Σ_l c_l, the size of a
uniform rank-r̄ adapter. ``gains[l][k]`` is what the (k+1)-th rank of layer l adds (non-increasing in k):

* energy (PiSSA, SVD-LoRA-FA): σ_{k+1}(W_l)² / ‖W_l‖²_F, the share of the weight's energy it moves into the adapter;
* coverage (LoRA-One): σ_{k+1}(G_l)², the first-order decrease of the loss that direction of the gradient buys
  (not normalised per layer: the loss is one sum over all layers); LoRA-GA's rank adds two directions
  (ArB2r spans G's top 2r), so its gain is σ_{2k+1}² + σ_{2k+2}²;
* eva: explained-variance ratios of the layer inputs (EVA, which runs PEFT's own count-based redistribution,
  ``svdtool.methods.eva.allocate``, with its ρ cap; the greedy here is not used for it).

Greedy marginal gain: every layer starts at rank 0, and each step gives one rank to the layer whose next rank has
the largest gain per parameter, g/c_l, among those that still fit in the budget, until none does. For
non-increasing gains this is the classic greedy for a separable concave knapsack; with equal c_l it is exactly
the top-Σr selection EVA makes. Layers left at rank 0 get no adapter. Pure Python: no I/O.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence

STATS = ("uniform", "energy", "coverage", "eva")


def greedy(gains: Sequence[Sequence[float]], costs: Sequence[int], mean_rank: int) -> list[int]:
    """Ranks per layer: greedy marginal gain per parameter within the budget mean_rank·Σ costs.

    ``gains[l]`` lists the gain of each successive rank of layer l (its length caps that layer's rank).
    Ties go to the layer with the lower rank so far, then to the earlier layer: equal gains give equal ranks,
    and the result is deterministic.
    """
    if len(gains) != len(costs):
        raise ValueError("one gain list and one cost per layer")
    if any(c <= 0 for c in costs):
        raise ValueError("costs must be positive")
    budget = mean_rank * sum(costs)
    ranks = [0] * len(costs)
    heap = [(-float(g[0]) / c, 0, i) for i, (g, c) in enumerate(zip(gains, costs, strict=True)) if len(g)]
    heapq.heapify(heap)
    while heap:
        _, _, i = heapq.heappop(heap)
        if costs[i] > budget:
            continue  # never fits again: the budget only shrinks
        budget -= costs[i]
        ranks[i] += 1
        if ranks[i] < len(gains[i]):
            heapq.heappush(heap, (-float(gains[i][ranks[i]]) / costs[i], ranks[i], i))
    return ranks


def rank_gains(sigma: Sequence[float], directions: int, normaliser: float, cap: int) -> list[float]:
    """Gains of ranks 1..cap from singular values σ (descending): Σ of σ² over each rank's ``directions``."""
    sq = [float(x) ** 2 / normaliser for x in sigma] if normaliser > 0 else [0.0] * len(sigma)
    n = min(cap, len(sq) // directions)
    return [sum(sq[k * directions : (k + 1) * directions]) for k in range(n)]
