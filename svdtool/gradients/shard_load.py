"""Build the causal LM with its frozen weights sharded by FSDP2 over the ranks, each rank reading only its rows.

The model is created on the meta device (no memory), frozen (``requires_grad_(False)`` *before* sharding,
which copies the flag into the sharded parameters), and sharded with ``fully_shard`` per decoder block, the
root last (embeddings, final norm and LM head, tied or not, in the root's group). ``to_empty`` then gives
every rank uninitialised storage for its shard only.

FSDP2 shards dim 0 like ``torch.chunk`` over the mesh's shard dimension (all N ranks, or under HSDP the L
ranks of a node, :mod:`svdtool.gradients.mesh`): shard i holds rows [i·c, min((i+1)·c, n)) with
c = ⌈n/L⌉. Those rows of a row-major tensor are one contiguous byte range, which svdtool's loading layer reads directly
(:meth:`svdtool.loading.Checkpoint.read_rows`), so no rank ever holds a whole weight. Non-persistent buffers
(Llama's RoPE ``inv_freq``) are in no checkpoint and ``to_empty`` leaves them as garbage: they are rebuilt
by constructing the module again from its config, on the rank's device.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from svdtool.engine.world import World
from svdtool.errors import SvdtoolError
from svdtool.gradients.mesh import Mesh
from svdtool.gradients.model import DTYPES, ModelSource, blocks, checkpoint_name
from svdtool.loading import open_checkpoint
from svdtool.nonfinite import first_nonfinite, refusal

if TYPE_CHECKING:
    import torch
    from torch import nn


def row_range(rows: int, rank: int, ranks: int) -> tuple[int, int]:
    """The rows [start, stop) of a dim-0 shard (FSDP2's ``torch.chunk`` layout; empty past the end)."""
    chunk = -(-rows // ranks)
    start = min(rows, rank * chunk)
    return start, min(rows, start + chunk)


def load_sharded(src: ModelSource, device: torch.device, world: World, mesh: Mesh) -> Any:
    """The model in eval mode, every parameter frozen and sharded on ``mesh`` (over the ranks of a node under
    HSDP, replicated across nodes), this rank's rows filled."""
    import torch
    from torch.distributed.fsdp import fully_shard
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(str(src.folder))
    with torch.device("meta"):
        model: Any = AutoModelForCausalLM.from_config(config, dtype=getattr(torch, DTYPES[src.dtype]))
    model.eval()
    model.requires_grad_(False)  # before fully_shard: the sharded parameters inherit the flag
    fsdp_mesh = mesh.build(device.type)  # 2-D (replicate, shard): FSDP2's HSDP
    for _, block in blocks(model):
        fully_shard(block, mesh=fsdp_mesh, reshard_after_forward=True)
    fully_shard(model, mesh=fsdp_mesh)  # the root: embeddings, final norm, LM head
    model.to_empty(device=device)
    with world.phase():  # a read that fails on one rank stops every rank here, before any collective pass
        _fill_rows(model, src, mesh.coords(world.rank)[1], mesh.shard)
        _rebuild_buffers(model, device)
    _check_finite(model, world)
    return model


def _fill_rows(model: nn.Module, src: ModelSource, index: int, ranks: int) -> None:
    """Copy this rank's rows (shard ``index`` of ``ranks``) of every parameter from the checkpoint, converted to
    the compute dtype."""
    import torch

    prefix = getattr(model, "base_model_prefix", "")
    with open_checkpoint(str(src.folder)) as ckpt:
        infos = {i.name: i for i in ckpt.tensors()}
        for pname, param in model.named_parameters():  # tied weights appear once
            name = checkpoint_name(pname, prefix, set(infos))
            info = infos.get(name)
            if info is None:
                raise SvdtoolError(
                    f"{src.meta.description} has no tensor {pname}: the sharded loader under torchrun reads "
                    "tensors by the names transformers gives them; run without torchrun"
                )
            if tuple(info.shape) != tuple(param.shape):
                shapes = f"{tuple(info.shape)} in the checkpoint, {tuple(param.shape)} in the model"
                raise SvdtoolError(f"{name} is {shapes}")
            local = param.to_local() if hasattr(param, "to_local") else param  # (rows of this rank, ...)
            start, stop = row_range(param.shape[0], index, ranks) if param.dim() else (0, 0)
            if local.dim() and local.shape[0] != stop - start:
                raise SvdtoolError(f"{name}: FSDP's shard has {local.shape[0]} rows, expected {stop - start}")
            with torch.no_grad():
                if param.dim() == 0:
                    local.copy_(ckpt.read(info))
                elif stop > start:
                    local.copy_(ckpt.read_rows(info, start, stop).to(local.dtype))


def _rebuild_buffers(model: nn.Module, device: torch.device) -> None:
    """Buffers come from a fresh module built from the same config (RoPE ``inv_freq``; persistent ones too)."""
    import torch

    for mname, module in model.named_modules():
        own = dict(module.named_buffers(recurse=False))
        if not own:
            continue
        config = getattr(module, "config", None)
        if config is None:
            raise SvdtoolError(
                f"cannot rebuild the buffers of {mname} ({type(module).__name__}) for sharded gradients: "
                "run without torchrun"
            )
        with torch.device(device):
            fresh = type(module)(config)
        for bname, buf in fresh.named_buffers(recurse=False):
            setattr(module, bname, buf.to(device))
        for attr, value in vars(fresh).items():  # plain tensor attributes (a copy of inv_freq, scaling)
            if isinstance(value, torch.Tensor) and attr not in own and attr not in ("_parameters", "_buffers"):
                setattr(module, attr, value.to(device))


def _check_finite(model: nn.Module, world: World) -> None:
    """Refuse NaN or ±Inf in a weight on every rank at once (each rank checks only its rows)."""
    local = ((n, p.to_local() if hasattr(p, "to_local") else p) for n, p in model.named_parameters())
    found = [f for f in world.all_gather(first_nonfinite(local)) if f is not None]
    if found:
        raise refusal(*found[0])
