"""The Spectrum tool's output files, for Axolotl's ``spectrum`` plugin, from a spectrum result.

* ``snr_results_<slug>.json``: ``{module: {"snr": x, "type": t}}``, one entry per selected ``.weight``
  (module = the tensor name without ``.weight``; 1-D norms score ``Infinity``), types as Spectrum names
  them (:func:`svdtool.naming.spectrum_type`), in Spectrum's order (types sorted by their first component
  then by name, modules by layer);
* ``snr_results_<slug>_unfrozenparameters_<P>percent.yaml``: ``unfrozen_parameters:``, first
  ``^lm_head.weight$`` and ``^model.embed_tokens.weight$`` (as Spectrum always writes them), then per type a
  ``# <type> layers`` comment and the top int(count · P / 100) modules by SNR.

slug = the model id as given, with ``/`` and ``_`` turned into ``-``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from svdtool import naming
from svdtool.results.base import atomic_write_bytes
from svdtool.results.spectrum import SpectrumResult
from svdtool.snr import top_by_type

#: Spectrum writes these two lines first in every unfrozen-parameters file.
ALWAYS_UNFROZEN = ("^lm_head.weight$", "^model.embed_tokens.weight$")


def snr_scores(result: SpectrumResult) -> list[tuple[str, str, float]]:
    """(module, Spectrum type, snr) for every selected ``.weight``, in Spectrum's file order."""
    rows = [
        (naming.module_path(m.name), m.snr if m.snr is not None else math.nan, naming.layer_index(m.name))
        for m in result.matrices
        if m.name.endswith(".weight")
    ]
    rows += [(naming.module_path(v), math.inf, naming.layer_index(v)) for v in result.vectors]
    scored = [(module, naming.spectrum_type(module), snr, layer) for module, snr, layer in rows]

    def order(row: tuple[str, str, float, int | None]) -> tuple[str, str, int, str]:
        module, kind, _, layer = row
        return (kind.split(".")[0], kind, -1 if layer is None else layer, module)

    return [(module, kind, snr) for module, kind, snr, _ in sorted(scored, key=order)]


def file_names(model_id: str, percent: int) -> tuple[str, str]:
    base = f"snr_results_{naming.spectrum_slug(model_id)}"
    return f"{base}.json", f"{base}_unfrozenparameters_{percent}percent.yaml"


def unfrozen_yaml(scores: list[tuple[str, str, float]], percent: int) -> str:
    lines = ["unfrozen_parameters:", *[f"- {p}" for p in ALWAYS_UNFROZEN]]
    for kind, modules in top_by_type(scores, percent).items():
        lines.append(f"# {kind} layers")
        lines += [f"- {m}" for m in modules]
    return "\n".join(lines) + "\n"


def write_axolotl_files(result: SpectrumResult, out_dir: Path, percent: int) -> list[Path]:
    """Write both files into ``out_dir`` (each atomically); returns their paths."""
    scores = snr_scores(result)
    json_name, yaml_name = file_names(result.manifest.model, percent)
    data = {module: {"snr": snr, "type": kind} for module, kind, snr in scores}
    # json writes ±inf as Infinity, as Spectrum's own files have it (not strict JSON, but what Axolotl reads).
    paths = [out_dir / json_name, out_dir / yaml_name]
    atomic_write_bytes(paths[0], (json.dumps(data, indent=4) + "\n").encode())
    atomic_write_bytes(paths[1], unfrozen_yaml(scores, percent).encode())
    return paths
