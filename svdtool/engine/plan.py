"""The work plan of per-matrix commands: which rank does which job, decided from the headers alone.

A job is a matrix (``spectrum``) or an output shard file (``init``: the rank that writes a file
computes every matrix in it). Jobs go to ranks by LPT, longest processing time first: sorted by cost,
largest first, each to the least-loaded rank. Every rank computes the same plan from the same headers
(ties break by position, then by rank), and :meth:`Plan.fingerprint` lets the ranks check that.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from dataclasses import dataclass

#: Cost of reading one byte, in floating-point operations: a rank reads ≈2 GB/s and computes ≈2 TFLOP/s.
FLOPS_PER_BYTE = 1000.0


def matrix_cost(shape: Sequence[int], nbytes: int) -> float:
    """Estimated work for one (m, n) matrix: the m·n·min(m, n) of a Gram matrix or an SVD, plus its bytes."""
    if len(shape) != 2:
        return FLOPS_PER_BYTE * nbytes
    m, n = shape
    return float(m) * n * min(m, n) + FLOPS_PER_BYTE * nbytes


@dataclass(frozen=True)
class Job:
    key: str  # a tensor name or an output file name
    cost: float


@dataclass(frozen=True)
class Plan:
    jobs: tuple[Job, ...]
    owners: tuple[int, ...]  # the rank of each job
    ranks: int

    def mine(self, rank: int) -> list[int]:
        """Indices of ``rank``'s jobs, in their original order (files are read front to back)."""
        return [i for i, owner in enumerate(self.owners) if owner == rank]

    def loads(self) -> list[float]:
        """Summed cost per rank."""
        out = [0.0] * self.ranks
        for job, owner in zip(self.jobs, self.owners, strict=True):
            out[owner] += job.cost
        return out

    def owner_of(self) -> dict[str, int]:
        """Job key -> its rank."""
        return {j.key: o for j, o in zip(self.jobs, self.owners, strict=True)}

    def fingerprint(self) -> list[tuple[str, float, int]]:
        """What the ranks compare: every job, its cost and its owner."""
        return [(j.key, j.cost, o) for j, o in zip(self.jobs, self.owners, strict=True)]


def plan(jobs: Sequence[Job], ranks: int) -> Plan:
    """Assign ``jobs`` to ``ranks`` ranks by LPT (deterministic; see the module docstring)."""
    if ranks < 1:
        raise ValueError(f"ranks must be positive, got {ranks}")
    owners = [0] * len(jobs)
    heap = [(0.0, r) for r in range(ranks)]  # (load, rank): the least-loaded, lowest rank pops first
    for i in sorted(range(len(jobs)), key=lambda i: (-jobs[i].cost, i)):
        load, r = heapq.heappop(heap)
        owners[i] = r
        heapq.heappush(heap, (load + jobs[i].cost, r))
    return Plan(tuple(jobs), tuple(owners), ranks)
