"""The device mesh the sharded gradient estimate runs on: flat (FSDP over every rank) or HSDP (per node).

With R nodes of L ranks (N = R·L), HSDP is the 2-D mesh (replicate = R, shard = L): rank ``r`` sits at
(r // L, r % L), the ranks of one node form a row. Weights and float32 accumulators are split over the L
ranks of a node only, so every micro-batch's reduce-scatter stays inside the node, and the R nodes'
partial sums are all-reduced once, after the last pass. The price is memory: a rank holds 1/L of the
weights and accumulators instead of 1/N. The flat mesh (R = 1, L = N) is the other way round.

:data:`MESH_ENV` chooses: ``auto`` (default) takes HSDP when the job spans several nodes (``WORLD_SIZE`` >
``LOCAL_WORLD_SIZE``, a multiple of it) and the memory plan fits at 1/L, else the flat mesh; ``world``
forces the flat mesh. One process, or one node, is always flat.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from svdtool.engine.world import World
from svdtool.errors import SvdtoolError

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

MESH_ENV = "SVDTOOL_SHARD_WEIGHTS"
CHOICES = ("auto", "world")
DIM_NAMES = ("replicate", "shard")
P = TypeVar("P")


@dataclass(frozen=True)
class Mesh:
    replicate: int  # nodes holding the same shards (1: the flat mesh)
    shard: int  # ranks each weight and accumulator is split over
    reason: str = ""

    @property
    def kind(self) -> str:
        return "hsdp" if self.replicate > 1 else "flat"

    def coords(self, rank: int) -> tuple[int, int]:
        """(node, index within the node) of a global rank."""
        return divmod(rank, self.shard)

    def rows(self) -> list[list[int]]:
        """The ranks of each node (shard groups), in mesh order."""
        return [list(range(n * self.shard, (n + 1) * self.shard)) for n in range(self.replicate)]

    def columns(self) -> list[list[int]]:
        """The ranks holding the same shard on every node (replicate groups)."""
        return [list(range(i, self.replicate * self.shard, self.shard)) for i in range(self.shard)]

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "replicate": self.replicate, "shard": self.shard, "reason": self.reason}

    def describe(self) -> str:
        if self.kind == "flat":
            return f"weights sharded over all {self.shard} ranks ({self.reason})"
        return (
            f"HSDP: weights sharded within each of {self.replicate} nodes of {self.shard} ranks, "
            f"one all-reduce across nodes at the end ({self.reason})"
        )

    def build(self, device_type: str) -> DeviceMesh:
        """FSDP2's mesh: 1-D for flat, (replicate, shard) for HSDP."""
        from torch.distributed.device_mesh import init_device_mesh

        if self.kind == "flat":
            return init_device_mesh(device_type, (self.shard,))
        return init_device_mesh(device_type, (self.replicate, self.shard), mesh_dim_names=DIM_NAMES)


def requested() -> str:
    """:data:`MESH_ENV` as set (``auto`` when unset); one line for anything else."""
    value = os.environ.get(MESH_ENV, "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise SvdtoolError(f"{MESH_ENV}={value!r}: expected {' or '.join(CHOICES)}")
    return value


def choose(world: World, want: str, plan_for: Callable[[int], P]) -> tuple[Mesh, P]:
    """The mesh for ``world`` and ``want`` (:func:`requested`), with ``plan_for(shard)``, the memory plan at
    that share; HSDP falls back to flat when its plan raises (does not fit) and the flat one does not."""
    n, local = world.size, world.local_size
    if want == "world":
        return Mesh(1, n, f"{MESH_ENV}=world"), plan_for(n)
    if not 1 <= local < n:
        return Mesh(1, n, "one node"), plan_for(n)
    if n % local:
        return Mesh(1, n, f"{n} ranks are not whole nodes of {local}"), plan_for(n)
    try:
        return Mesh(n // local, local, "several nodes"), plan_for(local)
    except SvdtoolError:  # 1/L of the weights and accumulators does not fit: try 1/N
        return Mesh(1, n, f"HSDP's share, 1/{local} per rank, does not fit"), plan_for(n)
