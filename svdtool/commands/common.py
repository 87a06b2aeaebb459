"""What every command shares: progress reporting, device choice, and the run manifest."""

from __future__ import annotations

import datetime as _dt
import shutil
import sys
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svdtool import __version__
from svdtool.errors import SvdtoolError, writing
from svdtool.interrupts import deferred
from svdtool.results.base import atomic_write_bytes, dumps
from svdtool.results.manifest import RunManifest
from svdtool.runtime import Progress, SilentProgress, describe_device, resolve_device

__all__ = [
    "Progress",
    "SilentProgress",
    "describe_device",
    "manifest",
    "parse_range",
    "parse_ranks",
    "resolve_device",
    "utc_now",
    "versions",
]

if TYPE_CHECKING:
    import numpy as np

    from svdtool.loading import CheckpointMeta


def versions(*packages: str) -> dict[str, str]:
    out = {"python": sys.version.split()[0], "svdtool": __version__}
    for name in ("torch", "numpy", "scipy", "safetensors", "huggingface_hub", *packages):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    try:
        import torch

        if torch.version.cuda:
            out["cuda"] = str(torch.version.cuda)
    except ImportError:
        pass
    return out


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def manifest(
    tool: str,
    command: list[str],
    meta: CheckpointMeta,
    *,
    device: str,
    dtypes: dict[str, int],
    methods: dict[str, int],
    started: str,
    timings: dict[str, float],
    extra_versions: tuple[str, ...] = (),
) -> RunManifest:
    return RunManifest(
        tool=tool,
        tool_version=__version__,
        command=command,
        model=meta.description,
        source_kind=meta.kind,
        revision=meta.revision,
        sha=meta.sha,
        files=list(meta.files),
        dtypes=dict(sorted(dtypes.items())),
        versions=versions(*extra_versions),
        device=device,
        methods=dict(sorted(methods.items())),
        started=started,
        timings={k: round(v, 4) for k, v in timings.items()},
    )


def parse_ranks(text: str) -> list[int]:
    """``8,16,32`` -> [8, 16, 32]; positive, strictly increasing after sorting, no duplicates."""
    try:
        ranks = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise SvdtoolError(f"--ranks {text!r}: expected comma-separated positive integers, e.g. 8,16,32") from None
    if not ranks or ranks[0] < 1:
        raise SvdtoolError(f"--ranks {text!r}: expected comma-separated positive integers, e.g. 8,16,32")
    return ranks


def parse_range(text: str) -> tuple[float, float]:
    """``0.1,1.1`` -> (0.1, 1.1) with 0 ≤ lo < hi, both finite."""
    parts = text.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise SvdtoolError(f"--range {text!r}: expected LO,HI, e.g. 0.1,1.1") from None
    if not (0 <= lo < hi < float("inf")):
        raise SvdtoolError(f"--range {text!r}: need 0 <= LO < HI, both finite")
    return lo, hi


def write_result_with_sigmas(
    result: Any, sigmas: dict[str, np.ndarray], out_dir: Path, *, json_name: str, sidecar_name: str, tag: str
) -> list[Path]:
    """``json_name`` (the result) and ``sidecar_name`` (σ per matrix, float64, descending) in ``out_dir``.

    Each file is written under a temporary name and renamed into place, the sidecar first, so a
    JSON file on disk always has its complete sidecar beside it.
    """
    import numpy as np
    import torch
    from safetensors.torch import save

    tensors = {name: torch.from_numpy(np.ascontiguousarray(s)) for name, s in sigmas.items()}
    sidecar, js = out_dir / sidecar_name, out_dir / json_name
    created = not out_dir.exists()
    try:
        with writing(out_dir), deferred():  # the pair is written whole (it takes milliseconds)
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(sidecar, save(tensors, metadata={"format": tag, "order": "descending"}))
            atomic_write_bytes(js, dumps(result).encode())
    except BaseException:
        if created:  # a folder this run made holds nothing worth keeping
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    return [js, sidecar]
