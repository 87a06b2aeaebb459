"""``svdtool init --targets snr:P``: the top P% of block matrices per module type by the Spectrum tool's SNR.

The σ come from the spectrum engine (:mod:`svdtool.engine.pool`), the score and the selection
from :mod:`svdtool.snr` (Spectrum's formula and its int(count · P / 100) per type), so the layers chosen
are those ``svdtool spectrum --top-percent P`` lists in its unfrozen-parameters YAML, less embeddings,
heads and norms, which are not adapter targets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from svdtool import naming
from svdtool.commands.common import Progress
from svdtool.engine.pool import Computed, compute_all, plan_workers
from svdtool.errors import SvdtoolError
from svdtool.loading import FLOAT_DTYPES, Checkpoint, TensorInfo
from svdtool.snr import spectrum_snr, top_by_type

if TYPE_CHECKING:
    import torch

PREFIX = "snr:"


def snr_percent(tokens: list[str]) -> int | None:
    """P of a ``--targets snr:P`` list, None for other targets; SvdtoolError when malformed or mixed."""
    chosen = [t for t in tokens if t.startswith(PREFIX)]
    if not chosen:
        return None
    if len(tokens) > 1:
        raise SvdtoolError("--targets snr:P selects the layers itself: it cannot be combined with other targets")
    text = chosen[0][len(PREFIX) :]
    if not text.isdigit() or not 1 <= int(text) <= 100:
        raise SvdtoolError(f"--targets {chosen[0]}: P must be a whole percentage from 1 to 100 (snr:25)")
    return int(text)


def snr_targets(
    ckpt: Checkpoint, infos: list[TensorInfo], percent: int, device: torch.device, progress: Progress
) -> list[str]:
    """Module paths of the top ``percent``% block matrices per Spectrum type, in checkpoint order."""
    candidates = [
        i for i in infos if len(i.shape) == 2 and i.dtype in FLOAT_DTYPES and naming.is_adapter_target(i.name, [])
    ]
    if not candidates:
        raise SvdtoolError("--targets snr:P: no float matrices inside transformer blocks to score")
    progress.start("SNR of candidate targets", len(candidates), sum(i.nbytes for i in candidates))
    workers, helpers = plan_workers(device, None)
    scores: dict[str, tuple[str, str, float]] = {}

    def advance(c: Computed) -> None:
        progress.advance(c.info.name, c.info.nbytes)

    try:
        for c in compute_all(ckpt, candidates, workers, advance, helpers):
            module = naming.module_path(c.info.name)
            scores[c.info.name] = (module, naming.spectrum_type(module), spectrum_snr(c.sigma, c.info.shape))
    finally:
        progress.finish()
    chosen = {m for mods in top_by_type((scores[i.name] for i in candidates), percent).values() for m in mods}
    if not chosen:
        raise SvdtoolError(f"--targets snr:{percent} selects no layer: each module type has too few layers for it")
    progress.message(f"snr:{percent} selects {len(chosen)} of {len(candidates)} block matrices")
    return [naming.module_path(i.name) for i in candidates if naming.module_path(i.name) in chosen]
