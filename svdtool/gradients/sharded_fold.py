"""Folds whose accumulators are row-sharded over the ranks: each micro-batch's float32 term is reduce-scattered.

With the ranks of a node sharing the rows (L of them: every rank on the flat mesh, a node's under HSDP,
:mod:`svdtool.gradients.mesh`), rank r keeps rows [i·c, (i+1)·c) (i = r % L, c = ⌈rows/L⌉, FSDP's dim-0
layout) of the sum of what the folds of :mod:`svdtool.gradients.fold` would add, so no rank ever holds a
whole accumulator:

* :class:`ShardedExactFold`: δᵀX (out, in), 4·P/L bytes per rank in all.
* :class:`ShardedSketchFold`: Y += δᵀ(XΩ) (out, k) and W += (Ψδᵀ)X (l, in), the sketches of a 405B model
  (≈ 60 GB at t = 32) divided by L as well.

Every rank must fold the same targets in the same order (the backward of the same graph does), since each
fold is a collective. Under HSDP :meth:`RowShards.combine` sums the nodes' shards once after the passes;
:meth:`RowShards.gather` then forms the whole sum on one rank.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from svdtool.engine.world import World
from svdtool.gradients import fold as folds
from svdtool.gradients.mesh import Mesh

if TYPE_CHECKING:
    import torch

    from svdtool.gradients.model import Target


class RowShards:
    """Row-sharded float32 sums over the ranks of ``world``, laid out on ``mesh``.

    A sum of n rows is split over the L ranks of a node (the shard group, a row of the mesh): rank r keeps
    rows [i·c, (i+1)·c), c = ⌈n/L⌉, i = r % L. Each term is reduce-scattered on the shard group; under HSDP
    the nodes' partial sums are then all-reduced once over the replicate group (:meth:`combine`).
    The groups are svdtool's own, apart from FSDP's.
    """

    def __init__(self, world: World, mesh: Mesh, device: torch.device) -> None:
        self.world, self.mesh, self.device = world, mesh, device
        self.node, self.index = mesh.coords(world.rank)
        self.shard_group = _subgroup(mesh.rows())
        self.replicate_group = _subgroup(mesh.columns()) if mesh.replicate > 1 else None

    def rows(self, n: int) -> int:
        return -(-n // self.mesh.shard)

    def zeros(self, n: int, cols: int, device: torch.device) -> torch.Tensor:
        """This rank's shard (⌈n/L⌉, cols) of an (n, cols) sum."""
        import torch

        return torch.zeros((self.rows(n), cols), dtype=torch.float32, device=device)

    def add(self, shard: torch.Tensor, term: torch.Tensor) -> None:
        """shard += this rank's rows of Σ_node term; ``term`` (n, cols) float32 is this rank's contribution."""
        import torch
        import torch.distributed as dist

        pad = shard.shape[0] * self.mesh.shard - term.shape[0]
        if pad:
            term = torch.nn.functional.pad(term, (0, 0, 0, pad))  # (L·c, cols): equal chunks per rank
        part = torch.empty((shard.shape[0], term.shape[1]), dtype=torch.float32, device=term.device)
        # torch 2.13 renamed reduce_scatter_tensor (and deprecated the old name); 2.11 has only the old one.
        getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)(part, term, group=self.shard_group)
        shard.add_(part.to(shard.device))

    def combine(self, shard: torch.Tensor) -> None:
        """After the last pass: the nodes' partial sums of this shard added up on every node (HSDP only)."""
        import torch.distributed as dist

        if self.replicate_group is None:
            return
        on_device = shard.to(self.device)  # --offload keeps shards on the host: reduce one on the device
        dist.all_reduce(on_device, group=self.replicate_group)
        if on_device is not shard:
            shard.copy_(on_device)

    def gather(self, shard: torch.Tensor, n: int, owner: int) -> torch.Tensor | None:
        """The whole (n, cols) sum on rank ``owner`` (None elsewhere), gathered from the owner's node only:
        equal, padded chunks, then trimmed. Other nodes skip it (every node holds the sums after
        :meth:`combine`)."""
        import torch
        import torch.distributed as dist

        if self.mesh.coords(owner)[0] != self.node:
            return None
        mine = owner == self.world.rank
        chunks = [torch.empty_like(shard) for _ in range(self.mesh.shard)] if mine else None
        dist.gather(shard, chunks, dst=owner, group=self.shard_group)
        return None if chunks is None else torch.cat(chunks)[:n]

    def close(self) -> None:
        import torch.distributed as dist

        for group in (self.shard_group, self.replicate_group):
            if group is not None:
                dist.destroy_process_group(group)


def _subgroup(ranks: list[list[int]]) -> Any:
    """This rank's group among ``ranks`` (every rank creates every group, in the same order)."""
    import torch.distributed as dist

    mine, _ = dist.new_subgroups_by_enumeration(ranks)
    return mine


class ShardedExactFold:
    """This rank's rows of Σ_ranks Σ_micro δᵀX: acc (⌈out/L⌉, in) float32."""

    def __init__(self, target: Target, shards: RowShards, device: torch.device) -> None:
        self.target, self.shards = target, shards
        self.acc = shards.zeros(target.out_features, target.in_features, device)

    def fold(self, x: torch.Tensor, d: torch.Tensor) -> None:
        """x (T, in), d (T, out) in the model dtype."""
        self.shards.add(self.acc, folds.mm32(d.T, x))  # (out, in) float32: the one in-flight weight gradient

    def buffers(self) -> list[torch.Tensor]:
        return [self.acc]

    def gather(self, owner: int) -> Any:
        """On ``owner``: an object with ``acc``, the whole Σ δᵀX (out, in); None elsewhere."""
        acc = self.shards.gather(self.acc, self.target.out_features, owner)
        return None if acc is None else _Whole(acc)


class ShardedSketchFold(folds.SketchFold):
    """:class:`~svdtool.gradients.fold.SketchFold` with Y (⌈out/L⌉, k) and W (⌈l/L⌉, in) row-sharded."""

    def __init__(
        self,
        target: Target,
        omega: torch.Tensor,
        psi: torch.Tensor,
        cache: folds.XOmegaCache,
        shards: RowShards,
    ) -> None:
        # Not SketchFold.__init__: that allocates the whole sketches.
        self.target, self.omega, self.psi, self.cache, self.shards = target, omega, psi, cache, shards
        self.y = shards.zeros(target.out_features, omega.shape[1], omega.device)
        self.w = shards.zeros(psi.shape[0], target.in_features, omega.device)

    def fold(self, x: torch.Tensor, d: torch.Tensor) -> None:
        xo = self.cache.get(x, self.omega)  # (T, k), shared by the targets that read this X
        self.shards.add(self.y, folds.mm32(d.T, xo))  # (out, k)
        self.shards.add(self.w, folds.mm32(self.psi @ d.T, x))  # (l, in)

    def buffers(self) -> list[torch.Tensor]:
        return [self.y, self.w]

    def gather(self, owner: int) -> Any:
        """On ``owner``: this fold with the whole sketches Y (out, k) and W (l, in); None elsewhere."""
        y = self.shards.gather(self.y, self.target.out_features, owner)
        w = self.shards.gather(self.w, self.psi.shape[0], owner)
        if y is None or w is None:
            return None
        self.y, self.w = y, w
        return self


class _Whole:
    def __init__(self, acc: torch.Tensor) -> None:
        self.acc = acc
