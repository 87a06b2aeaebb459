"""``svdtool report``: load saved results from result folders and write one HTML report. Never recomputes.

A result folder holds one or more of:

* ``spectrum.json`` with its ``spectra.safetensors`` sidecar (raw σ per matrix), from ``svdtool spectrum --out``;
* ``coverage.json``, from ``svdtool coverage --out``;
* ``svdtool.json``, the record ``svdtool init`` writes into the adapter folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svdtool.errors import SvdtoolError, writing
from svdtool.results.base import atomic_write_bytes, from_dict
from svdtool.results.coverage import CoverageResult
from svdtool.results.init import InitResult
from svdtool.results.spectrum import SpectrumResult

if TYPE_CHECKING:
    from svdtool.report import ReportInputs

#: Result file name -> kind, and kind -> the dataclass it holds.
KINDS = {SpectrumResult.JSON: "spectrum", CoverageResult.JSON: "coverage", InitResult.JSON: "init"}
RESULT_CLASSES: dict[str, type[Any]] = {"spectrum": SpectrumResult, "coverage": CoverageResult, "init": InitResult}


def _read(kind: str, path: Path) -> Any:
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise SvdtoolError(f"cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise SvdtoolError(f"{path} is not valid JSON: {exc}") from None
    try:
        return from_dict(RESULT_CLASSES[kind], data)
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise SvdtoolError(f"{path} is not a {kind} result written by svdtool: {exc}") from None


def _files(arg: Path) -> list[tuple[str, Path]]:
    """The result files named by one RESULT_DIR argument (a folder, or one of the JSON files in it)."""
    if arg.is_file():
        if arg.name not in KINDS:
            raise SvdtoolError(f"{arg}: expected a result folder or one of {', '.join(KINDS)}")
        return [(KINDS[arg.name], arg)]
    if not arg.is_dir():
        raise SvdtoolError(f"{arg}: no such folder")
    found = [(kind, arg / name) for name, kind in KINDS.items() if (arg / name).is_file()]
    if not found:
        raise SvdtoolError(f"{arg}: no svdtool results here (looked for {', '.join(KINDS)})")
    return found


def load_results(paths: list[Path]) -> ReportInputs:
    """Read every result under ``paths``; at most one of each kind (spectrum, coverage, init)."""
    from svdtool.report import ReportInputs

    if not paths:
        raise SvdtoolError("give at least one RESULT_DIR")
    inputs = ReportInputs()
    seen: dict[str, Path] = {}
    for arg in paths:
        for kind, path in _files(Path(arg)):
            if kind in seen:
                raise SvdtoolError(
                    f"two {kind} results ({seen[kind]} and {path}); a report shows one of each: render them separately"
                )
            seen[kind] = path
            setattr(inputs, kind, _read(kind, path))
            inputs.labels[kind] = path.resolve().parent.name
            if kind == "spectrum":
                inputs.sigmas = _sigmas(path.parent, inputs.spectrum)
    return inputs


def _sigmas(folder: Path, result: SpectrumResult | None) -> dict[str, Any] | None:
    """The sidecar's σ, or None when it is absent (the report then leaves out the σ figures)."""
    from svdtool.commands.spectrum import load_sigmas

    if not (folder / SpectrumResult.SIDECAR).is_file():
        return None
    try:
        sigmas = load_sigmas(folder)
    except Exception as exc:  # safetensors raises its own error types for a damaged file
        raise SvdtoolError(f"cannot read {folder / SpectrumResult.SIDECAR}: {exc}") from None
    missing = [m.name for m in (result.matrices if result else []) if m.name not in sigmas]
    if missing:
        raise SvdtoolError(
            f"{folder / SpectrumResult.SIDECAR} does not belong to {SpectrumResult.JSON}: "
            f"no σ for {len(missing)} matrices (first: {missing[0]})"
        )
    return sigmas


def write_report(inputs: ReportInputs, path: Path, generated: str | None = None) -> Path:
    """Render ``inputs`` and write the HTML to ``path`` atomically."""
    from svdtool.report import render

    if path.is_dir():
        raise SvdtoolError(f"-o {path} is a folder; give a file name such as {path / 'report.html'}")
    html = render(inputs, generated=generated)
    with writing(path):
        atomic_write_bytes(path, html.encode("utf-8"))
    return path


def make_report(paths: list[Path], output: Path, generated: str | None = None) -> Path:
    """``svdtool report``: load the results under ``paths`` and write their report to ``output``."""
    return write_report(load_results(paths), output, generated)


def report_for(result: Any, sigmas: dict[str, Any] | None, path: Path, label: str = "") -> Path:
    """Write the report of one result just computed (the ``--report`` flag of spectrum, coverage and init)."""
    from svdtool.report import ReportInputs

    kind = next((k for k, cls in RESULT_CLASSES.items() if isinstance(result, cls)), None)
    if kind is None:
        raise TypeError(f"no report for {type(result).__name__}")
    inputs = ReportInputs(labels={kind: label} if label else {})
    setattr(inputs, kind, result)
    if kind == "spectrum":
        inputs.sigmas = sigmas
    return write_report(inputs, path)
