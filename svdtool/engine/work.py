"""One home for per-matrix work: the plan, this process's share, and the results back at rank 0.

``spectrum``, the SVD inits and ``coverage`` use it the same way, in one process or across the ranks of a
``torchrun`` job::

    share = Share.of(world, jobs, args=request_fields)   # same plan on every rank, checked
    mine = share.mine                                     # job indices this rank computes
    with world.phase():                                   # the local pool does them
        done = compute(mine)
    everything = share.collect(done)                      # every rank's results, on every rank

In one process the plan gives every job to rank 0 and nothing is communicated.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from svdtool.engine.plan import Job, Plan, plan
from svdtool.engine.world import World

T = TypeVar("T")

#: Request fields that may differ between ranks without changing the work (secrets, argv spelling).
PER_RANK_FIELDS = frozenset({"token", "command", "gradients", "gradient_request"})


def request_fields(req: Any) -> dict[str, Any]:
    """A request dataclass as the ranks compare it (see :data:`PER_RANK_FIELDS`)."""
    return {f.name: getattr(req, f.name) for f in dataclasses.fields(req) if f.name not in PER_RANK_FIELDS}


@dataclass(frozen=True)
class Share:
    world: World
    plan: Plan

    @classmethod
    def of(cls, world: World, jobs: Sequence[Job], args: dict[str, Any]) -> Share:
        """Plan ``jobs`` over the world's ranks and refuse, on every rank, plans or arguments that differ."""
        p = plan(jobs, world.size)
        world.agree("the arguments or the work plan", {"args": args, "plan": p.fingerprint()})
        return cls(world, p)

    @property
    def mine(self) -> list[int]:
        return self.plan.mine(self.world.rank)

    def collect(self, local: list[T]) -> list[T]:
        """Every rank's results on every rank, concatenated in rank order (small results: σ, records)."""
        return [x for part in self.world.all_gather(local) for x in part]

    def gather(self, local: list[T]) -> list[T] | None:
        """Every rank's results at rank 0 only (large results: adapter factors); None on the other ranks."""
        every = self.world.gather(local)
        return None if every is None else [x for part in every for x in part]
