"""``--grad-cache FILE``: one gradient estimate shared by ``coverage`` and ``init`` (safetensors).

Exact mode stores one float32 (out, in) tensor per target under its tensor name; sketch mode stores
``<name>::U``, ``<name>::S`` and ``<name>::Vh``. The safetensors metadata holds ``format``
(``svdtool-gradients``), the request fingerprint (model, dtype, mode, targets, calibration settings) and the
provenance (:class:`GradientInfo`, :class:`CalibrationInfo`, the model's commit). A file whose fingerprint
differs from the run's is refused, never silently reused. Tensors are read lazily, one per lookup.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svdtool.errors import SvdtoolError
from svdtool.linalg.sketch import LowRankGradient
from svdtool.results.base import from_dict, to_dict
from svdtool.results.gradients import CalibrationInfo, GradientInfo

if TYPE_CHECKING:
    import torch

    from svdtool.gradients.estimate import GradientEstimate, GradientRequest

FORMAT = "svdtool-gradients"
VERSION = "1"


def write_cache(path: Path, est: GradientEstimate, req: GradientRequest) -> None:
    """Write the estimate atomically (temporary file beside ``path``, then rename)."""
    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    if est.info.mode == "exact":
        for name, g in est.grads.items():
            tensors[name] = g.detach().to("cpu").contiguous()
    else:
        for name, f in est.factors.items():
            tensors[f"{name}::U"] = f.U.contiguous()
            tensors[f"{name}::S"] = f.S.contiguous()
            tensors[f"{name}::Vh"] = f.Vh.contiguous()
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "fingerprint": json.dumps(req.fingerprint(), sort_keys=True),
        "info": json.dumps(to_dict(est.info)),
        "calibration": json.dumps(to_dict(est.calibration)),
        "model": json.dumps({"description": est.meta.description, "kind": est.meta.kind, "sha": est.meta.sha}),
        "shapes": json.dumps({k: list(v) for k, v in est.shapes.items()}),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _Lazy(Mapping[str, Any]):
    """Tensors of a cache file, read on lookup."""

    def __init__(self, path: Path, names: list[str], mode: str) -> None:
        self.path, self.names, self.mode = path, names, mode

    def __getitem__(self, name: str) -> Any:
        from safetensors import safe_open

        if name not in self.names:
            raise KeyError(name)
        with safe_open(str(self.path), framework="pt") as fh:
            if self.mode == "exact":
                return _aligned(fh.get_tensor(name))
            return LowRankGradient(
                _aligned(fh.get_tensor(f"{name}::U")),
                _aligned(fh.get_tensor(f"{name}::S")),
                _aligned(fh.get_tensor(f"{name}::Vh")),
            )

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)


def _aligned(t: torch.Tensor) -> torch.Tensor:
    """A copy in fresh memory. ``safe_open`` hands out tensors at their offset in the file, which moves with
    the header's length (it holds the cache path); CPU BLAS kernels round differently at different
    alignments, and near-tied singular vectors turn those last bits into different adapters. Estimated
    gradients live in fresh allocations, so a copy makes a reused cache give the same adapter, bit for bit.
    """
    return t.clone()


def read_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # safetensors raises its own error types
        raise SvdtoolError(f"--grad-cache {path}: not a readable safetensors file ({exc})") from None
    if meta.get("format") != FORMAT:
        raise SvdtoolError(f"--grad-cache {path} is not an svdtool gradient cache")
    return meta


def _differences(have: dict[str, Any], want: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for key in sorted(set(have) | set(want)):
        a, b = have.get(key), want.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: cache {a!r}, this run {b!r}")
    return out


def read_cache(path: Path, req: GradientRequest) -> GradientEstimate:
    """The estimate stored in ``path``, after checking it was made for the same request."""
    from svdtool.gradients.estimate import GradientEstimate, select
    from svdtool.loading import CheckpointMeta

    meta = read_metadata(path)
    have = json.loads(meta["fingerprint"])
    want = req.fingerprint()
    if not req.calib.source:  # no --calib: take the calibration settings the cache was made with
        want["calib"] = have.get("calib")
    # A cache of every linear matrix serves any target subset.
    targets_ok = have.get("targets") == [] or have.get("targets") == want.get("targets")
    have_cmp = {k: v for k, v in have.items() if k != "targets"}
    want_cmp = {k: v for k, v in want.items() if k != "targets"}
    diffs = _differences(have_cmp, want_cmp)
    if not targets_ok:
        diffs.append(f"targets: cache {have.get('targets')!r}, this run {want.get('targets')!r}")
    if diffs:
        raise SvdtoolError(
            f"--grad-cache {path} was computed with other settings ({'; '.join(diffs[:3])}): "
            "delete it or pass another path"
        )
    info = from_dict(GradientInfo, json.loads(meta["info"]))
    calib = from_dict(CalibrationInfo, json.loads(meta["calibration"]))
    model = json.loads(meta["model"])
    shapes_all = {k: (int(v[0]), int(v[1])) for k, v in json.loads(meta["shapes"]).items()}
    names = select(list(shapes_all), req.targets)
    if not names:
        raise SvdtoolError(f"--grad-cache {path} holds no gradient for --targets {','.join(req.targets)}")
    info.targets = names
    info.cache, info.from_cache = str(path), True
    ck = CheckpointMeta(model["description"], model["kind"], req.revision, model["sha"])
    est = GradientEstimate(info, calib, ck, {n: shapes_all[n] for n in names})
    lazy = _Lazy(path, names, info.mode)
    if info.mode == "exact":
        est.grads = lazy
    else:
        est.factors = lazy
    return est
