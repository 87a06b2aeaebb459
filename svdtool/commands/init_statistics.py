"""The activation statistics ``svdtool init --method corda|eva`` needs, collected before the checkpoint is
streamed and handed to :func:`svdtool.commands.init.run_init` as ``InitRequest.statistics``.

* CorDA: each distinct input's covariance C (in, in), float64, shared by the targets that receive that
  input; on the GPU while the kept ones fill at most half of it (:func:`covariance_keeper`), else on the host.
* EVA: each distinct input's top round(r·ρ) principal components (float64 ``eigh`` on the device),
  then PEFT's global rank redistribution, so every target's value carries its rank k_l;
  :func:`eva_targets` gives each target that rank (rank 0: dropped), which ``run_init`` writes as PEFT's
  ``rank_pattern``/``alpha_pattern`` (α_l keeps s = α/r, as PEFT's ``adjust_scaling_factors``).

The init stream hands the statistics out through :class:`SharedInputs`: a method's per-input part
(``MethodSpec.prepare``; CorDA's ridge, C_d and LU) is computed once per distinct input, on the device, and
released when the last target of that input has it.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from svdtool.commands.common import Progress, SilentProgress
from svdtool.commands.init_layers import GradientSource, Target, lookup_gradient
from svdtool.errors import SvdtoolError
from svdtool.statistics import ActivationRequest, ActivationStats, collect_statistics

if TYPE_CHECKING:
    import torch


def activation_statistics(
    req: ActivationRequest, statistic: str, *, rank: int, extra: dict[str, Any], progress: Progress | None = None
) -> tuple[Mapping[str, Any], dict[str, Any]]:
    """(statistics source keyed by tensor name, provenance scalars for ``svdtool.json``)."""
    from svdtool.methods import eva

    progress = progress or SilentProgress()
    req.statistic = statistic
    rho = float(extra.get("eva_rho", eva.RHO))
    reduce: Callable[[list[str], Any, int], Any]
    if statistic == "centred":
        if not rho >= 1:
            raise SvdtoolError(f"--eva-rho {rho}: must be at least 1")

        def components(names: list[str], cov: Any, count: int) -> Any:
            return eva.principal_components(cov, eva.max_components(rank, rho, cov.shape[0]), count)

        reduce = components
    else:
        reduce = covariance_keeper()

    stats = collect_statistics(req, reduce, progress)
    prov = provenance(stats)
    if statistic == "centred":
        ranks = eva.allocate(
            {n: c.ratios for n, c in stats.values.items()}, dict.fromkeys(stats.values, rank), stats.groups, rho
        )
        values = {n: replace(c, rank=ranks[n]) for n, c in stats.values.items()}
        prov["eva_rho"] = rho
        prov["eva_dropped"] = sum(1 for k in ranks.values() if k == 0)
        return values, prov
    return stats.values, prov


#: CorDA's covariances stay on the GPU while all kept ones fill at most this share of its memory …
KEEP_SHARE = 0.5
#: … and this share stays free; the rest wait on the host (a round trip of in²·8 bytes each way per input).
FREE_SHARE = 0.25


def covariance_keeper() -> Callable[[list[str], torch.Tensor, int], torch.Tensor]:
    """A ``reduce`` for CorDA that leaves each C (in, in) float64 where the init stream will want it: on the GPU
    while the ones it kept fit (the stream prepares C_d there), else on the host."""
    kept: Counter[int] = Counter()  # bytes kept per CUDA device

    def keep(names: list[str], cov: torch.Tensor, count: int) -> torch.Tensor:
        import torch

        if cov.device.type != "cuda":
            return cov
        free, total = torch.cuda.mem_get_info(cov.device)
        index, size = cov.device.index or 0, cov.numel() * cov.element_size()
        if kept[index] + size <= KEEP_SHARE * total and free >= FREE_SHARE * total:
            kept[index] += size
            return cov
        return cov.cpu()

    return keep


class SharedInputs:
    """The statistics of each streamed target, with ``prepare(value, device)`` run once per distinct value.

    The targets that read one input (q/k/v, gate/up) map to the very same value object (``collect_statistics``
    shares it), so a value is known by its identity, which the mapping keeps alive. The prepared value is
    dropped when the last of its targets has taken it: it then lives only as long as that target's math
    (CorDA: C_d and its LU, 2·in²·8 bytes, ≈ 1.9 GB for an 11008-wide input). A callable source may build a
    new object per call, so it shares nothing: each target prepares its own.
    """

    def __init__(
        self,
        source: GradientSource | None,
        targets: list[Target],
        prepare: Callable[[Any, torch.device], Any] | None,
        device: torch.device,
    ) -> None:
        self.source, self.prepare, self.device = source, prepare, device
        shared = prepare is not None and isinstance(source, Mapping)
        self.left: Counter[int] = Counter(id(self._value(t)) for t in targets) if shared else Counter()
        self.ready: dict[int, tuple[Any, Any]] = {}  # id(value) -> (value, prepared)
        self.prepared = 0  # how many times prepare ran
        self.seconds = 0.0  # spent in prepare

    def _value(self, t: Target) -> Any:
        return lookup_gradient(self.source, t, "activation statistics")

    def __call__(self, t: Target) -> Any:
        value = self._value(t)
        if self.prepare is None:
            return value
        key = id(value)
        entry = self.ready.pop(key, None)
        if entry is None:
            t0 = time.perf_counter()
            entry = (value, self.prepare(value, self.device))
            self.prepared += 1
            self.seconds += time.perf_counter() - t0
        self.left[key] -= 1
        if self.left[key] > 0:
            self.ready[key] = entry  # more targets read this input
        return entry[1]


def eva_targets(targets: list[Target], stats: GradientSource | None) -> tuple[list[Target], dict[str, Any]]:
    """The targets at the ranks EVA's redistribution gave them (rank-0 targets dropped), and the record."""
    comps = [lookup_gradient(stats, t, "activation statistics") for t in targets]
    ranked = [replace(t, rank=int(c.rank)) for t, c in zip(targets, comps, strict=True)]
    kept = [t for t in ranked if t.rank > 0]
    if not kept:
        raise SvdtoolError("EVA gave every target rank 0 (the calibration inputs have no variance)")
    # As --rank-alloc records it; EVA's budget is Σ r ranks (PEFT's rule), the parameters follow from it.
    record = {
        "rank_alloc": "eva",
        "rank_budget": sum(t.rank * (t.in_features + t.out_features) for t in targets),
        "rank_params": sum(t.rank * (t.in_features + t.out_features) for t in ranked),
        "rank_gain": sum(float(c.ratios[: t.rank].sum()) for t, c in zip(ranked, comps, strict=True)),
        "rank_gain_uniform": sum(float(c.ratios[: t.rank].sum()) for t, c in zip(targets, comps, strict=True)),
        "rank_dropped": len(targets) - len(kept),
    }
    return kept, record


def provenance(stats: ActivationStats) -> dict[str, Any]:
    """Scalars that say where the statistics came from (kept in ``svdtool.json`` under settings.extra)."""
    c = stats.calibration
    return {
        "calib": c.source,
        "calib_sha": c.sha,
        "calib_samples": c.used,
        "calib_max_length": c.max_length,
        "calib_tokens": c.tokens,
        "calib_seed": c.seed,
        "calib_chat_template": c.chat_template,
        "statistics_groups": len(stats.groups),
        "statistics_passes": stats.passes,
        "statistics_seconds": stats.seconds,
        "statistics_device": stats.device,
        # where those seconds went: model and tokenizer opened, data tokenized, weights loaded, passes, reductions
        **{f"statistics_{k}_seconds": v for k, v in stats.phases.items()},
    }
