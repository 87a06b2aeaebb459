"""The gradients ``svdtool init --method lora-ga`` needs, estimated (or read from ``--grad-cache``) before the
checkpoint is streamed, and handed to :func:`svdtool.commands.init.run_init` as ``InitRequest.gradients``.

Without a cache, each exact gradient is reduced on the device to its top-2r singular triplets exactly as
:func:`svdtool.methods.lora_ga.lora_ga` would compute them (same SVD, seed and device), so a 7B model never
holds every float32 gradient at once. The mapping returns gradients in the layout ``run_init`` expects:
as the parameter is stored (GPT-2 Conv1D: (in, out)).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from svdtool.commands.common import Progress, SilentProgress
from svdtool.gradients import GradientEstimate, GradientRequest, estimate_gradients


class StoredLayout(Mapping[str, Any]):
    """Gradients keyed by tensor name, transposed back to the stored layout for Conv1D weights."""

    def __init__(self, inner: Mapping[str, Any], transposed: set[str]) -> None:
        self.inner, self.transposed = inner, transposed

    def __getitem__(self, name: str) -> Any:
        g = self.inner[name]
        return g.T if name in self.transposed else g

    def __iter__(self) -> Iterator[str]:
        return iter(self.inner)

    def __len__(self) -> int:
        return len(self.inner)


def method_extra(rank: int, svd: str, seed: int, oversample: int | None, niter: int | None, extra: dict) -> dict:
    """The ``InitOptions.extra`` that ``run_init`` will give the method (so the reduction matches it)."""
    out = dict(extra, svd=svd, seed=seed)
    if oversample is not None:
        out["oversample"] = oversample
    if niter is not None:
        out["niter"] = niter
    return out


def lora_ga_gradients(
    req: GradientRequest,
    *,
    rank: int,
    method_options: dict[str, Any],
    progress: Progress | None = None,
    make_reducer: Callable[[int, dict[str, Any]], Callable[[str, Any], Any]] | None = None,
    on_result: Callable[[str, Any], None] | None = None,
    owners: Mapping[str, int] | None = None,
) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """(gradient source for ``InitRequest.gradients``, provenance scalars for ``svdtool.json``).

    ``make_reducer(rank, options)`` is the method's ``MethodSpec.reducer`` (default: LoRA-GA's top-2r triplets).
    ``on_result(name, value)`` gets each gradient (or its top factors) in (out, in) layout as soon as it is
    finished, while later passes still run. Under torchrun, ``owners`` (tensor name -> rank) says where each
    target's gradient is formed; the mapping then holds this rank's targets only.
    """
    from svdtool.methods.lora_ga import reducer

    progress = progress or SilentProgress()
    if req.mode == "sketch":
        req.sketch_rank = max(req.sketch_rank, 2 * rank)
    # PEFT's "random" split reuses the permutation drawn right after its own svd_lowrank call: keep G whole.
    replay = method_options.get("convention") == "peft" and method_options.get("direction") == "random"
    reduce = None if replay else (make_reducer or reducer)(rank, method_options)
    est = estimate_gradients(req, progress, reduce, on_result, owners)
    return StoredLayout(est.provider(), set(est.info.transposed)), provenance(est)


def provenance(est: GradientEstimate) -> dict[str, Any]:
    """Scalars that say where the gradients came from (kept in ``svdtool.json`` under settings.extra)."""
    c, g = est.calibration, est.info
    return {
        "calib": c.source,
        "calib_sha": c.sha,
        "calib_samples": c.used,
        "calib_max_length": c.max_length,
        "calib_batch_size": c.batch_size,
        "calib_seed": c.seed,
        "calib_loss_tokens": c.loss_tokens,
        "calib_chat_template": c.chat_template,
        "gradient": g.mode,
        "gradient_dtype": g.dtype,
        "gradient_groups": g.groups,
        "gradient_micro_batch_size": g.micro_batch_size,
        "gradient_plan": g.plan.get("reason"),
        **({"gradient_mesh": _mesh(g.plan["mesh"])} if "mesh" in g.plan else {}),  # torchrun only
        "gradient_dtype_reason": g.dtype_reason,
        "gradient_seconds": g.seconds,
        "gradient_peak_device_memory": g.peak_device_memory,
        **{f"gradient_{k}_seconds": v for k, v in g.phases.items()},
        "gradient_cache": g.cache,
        "gradient_cuda_graphs": ", ".join(f"{k} {v}" for k, v in g.cuda_graphs.items()) or None,
    }


def _mesh(mesh: dict[str, Any]) -> str:
    """``hsdp 2x8`` (nodes x ranks per node) or ``flat 1x16``: how the sharded estimate split the weights."""
    return f"{mesh['kind']} {mesh['replicate']}x{mesh['shard']}"
