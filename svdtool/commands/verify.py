"""``svdtool verify DIR``: check an init folder against the original model.

1. From tensors alone: for every initialised layer, ‖W − (W_res + s·B·A)‖_F / ‖W‖_F in float64, with
   W from the original, W_res from DIR and A, B, s from DIR's adapter; every other tensor of the
   original must be in DIR bit for bit.
2. With transformers and PEFT: outputs of ``PeftModel.from_pretrained(residual, adapter)`` against the
   original model on a few prompts, both run in float32 (logits for causal LMs, the last hidden state
   otherwise).

Tolerances depend on the residual's dtype (:data:`svdtool.results.init.RECONSTRUCTION_TOL`,
:data:`svdtool.results.init.LOGITS_TOL`). For a quantised base (LoftQ, QPiSSA) both checks replay the
trainer's NF4 load (:mod:`svdtool.quant.nf4`, as recorded in ``svdtool.json``): ‖W − (Q(W_res) + s·B·A)‖/‖W‖
must not exceed plain NF4's ‖W − Q(W)‖/‖W‖, per layer and for the outputs.

A folder whose method keeps the base (``base: "original"``: MiCA, orthogonal, LoRA-One) holds no residual. Its
adapter is checked on the original: per layer ‖s·B·A‖_F/‖W‖_F must be 0 to rounding, or, when the init is meant
to change the output (LoRA-One), equal the value recorded at init; the outputs of
``PeftModel.from_pretrained(original, adapter)`` are compared with the original model, into which svdtool itself
has added s·B·A in the second case (a check of PEFT's key names, scaling, transposition and rank patterns).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svdtool.adapters.peft_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, lora_key, scaling_of
from svdtool.commands.common import Progress, SilentProgress, resolve_device, versions
from svdtool.errors import SvdtoolError
from svdtool.loading import Checkpoint, open_checkpoint
from svdtool.methods.quantized import config_of, load_errors
from svdtool.nonfinite import require_finite
from svdtool.results.base import load_json
from svdtool.results.init import RECONSTRUCTION_TOL, InitResult, VerifyLayer, VerifyResult

if TYPE_CHECKING:
    import torch

#: Prompts for the output check (any tokenizer handles them); without a tokenizer, seeded random ids.
PROMPTS = (
    "The capital of France is",
    "def fibonacci(n):\n    return",
    "Low-rank adaptation trains two small matrices",
)


@dataclass
class VerifyRequest:
    folder: Path
    model: str | None = None  # the original; default: the source recorded in svdtool.json
    revision: str | None = None
    token: str | None = None
    device: str = "auto"
    logits: bool = True
    prompts: list[str] = field(default_factory=lambda: list(PROMPTS))


def load_init(folder: Path) -> InitResult:
    path = folder / InitResult.JSON
    if not path.is_file():
        raise SvdtoolError(f"{folder} has no {InitResult.JSON}: not a folder written by svdtool init")
    try:
        return load_json(InitResult, path)
    except (ValueError, TypeError, KeyError, json.JSONDecodeError) as exc:
        raise SvdtoolError(f"{path} is not a valid svdtool init record ({exc})") from None


def _original(req: VerifyRequest, init: InitResult) -> tuple[str, str | None]:
    """The original's location and revision: --model, else the recorded source (pinned to its sha)."""
    if req.model is not None:
        return req.model, req.revision
    m = init.manifest
    return m.model, req.revision or (m.sha if m.source_kind.startswith("hub") else None)


def _adapter(folder: Path, init: InitResult) -> tuple[dict[str, Any], Path]:
    adir = folder / init.adapter_dir
    try:
        config = json.loads((adir / ADAPTER_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SvdtoolError(f"{adir / ADAPTER_CONFIG} cannot be read ({exc})") from None
    if not (adir / ADAPTER_WEIGHTS).is_file():
        raise SvdtoolError(f"{adir / ADAPTER_WEIGHTS} is missing")
    return config, adir


def adapter_error(w: torch.Tensor, delta: torch.Tensor, recorded_share: float, changes_output: bool) -> float:
    """Base kept: ‖s·B·A‖/‖W‖ (0 to rounding), or its relative change from init's record (LoRA-One)."""
    norm = float(w.norm().item())
    size = float(delta.norm().item()) / norm if norm else 0.0
    if not changes_output:
        return size
    expected = recorded_share**0.5
    return abs(size - expected) / expected if expected else size


def check_tensors(
    init: InitResult,
    orig: Checkpoint,
    residual: Checkpoint | None,
    adir: Path,
    config: dict[str, Any],
    device: torch.device,
    progress: Progress,
) -> tuple[list[VerifyLayer], int, list[str], list[str]]:
    """Per-layer reconstruction errors, and the bit-for-bit check of every other tensor.

    ``residual`` None: the base is the original (nothing to compare bit for bit; see the module docstring).
    """
    import torch
    from safetensors import safe_open

    kept = residual is None
    res_infos = {i.name: i for i in (orig if residual is None else residual).tensors()}
    init_dir = adir.parent
    targets = {x.name: x for x in init.layers}
    layers, mismatched, missing = [], [], []
    checked = 0
    infos = [i for i in orig.tensors() if i.name in targets] if kept else orig.tensors()
    progress.start("verify tensors", len(infos), sum(i.nbytes for i in infos))
    with safe_open(str(adir / ADAPTER_WEIGHTS), framework="pt") as adapter:
        keys = set(adapter.keys())
        for info in infos:
            mine = res_infos.get(info.name)
            if mine is None:
                missing.append(info.name)
            elif info.name in targets:
                x = targets[info.name]
                ka, kb = lora_key(x.module, "A"), lora_key(x.module, "B")
                if ka not in keys or kb not in keys:
                    missing.append(ka if ka not in keys else kb)
                else:
                    s = scaling_of(config, x.module)
                    w = orig.read(info).to(device=device)
                    a = adapter.get_tensor(ka).to(device=device, dtype=torch.float64)
                    b = adapter.get_tensor(kb).to(device=device, dtype=torch.float64)
                    # Before any math: NaN or ±Inf in W, A or B (W_res below) is refused, naming the file.
                    require_finite(w, f"{info.name} of the original")
                    require_finite(a, f"{ka} in {adir}")
                    require_finite(b, f"{kb} in {adir}")
                    w = w.T if x.transposed else w
                    if residual is None:
                        w = w.to(torch.float64)
                        err = adapter_error(w, s * (b @ a), x.energy_share, init.changes_output)
                        tol = RECONSTRUCTION_TOL["fp32"]  # the adapter is float32; W is not rounded
                    else:
                        w_res = residual.read(mine).to(device=device)
                        require_finite(w_res, f"{info.name} of the residual in {init_dir}")
                        w_res = w_res.T if x.transposed else w_res
                        if init.quantization:  # the trainer's NF4 load of W_res, against plain NF4 of W
                            err, tol = load_errors(w, w_res, a, b, s, config_of(init.quantization))
                        else:
                            w, w_res = w.to(torch.float64), w_res.to(torch.float64)
                            norm = float(w.norm().item())
                            err = float(torch.addmm(w_res, b, a, alpha=s).sub_(w).norm().item()) / norm if norm else 0.0
                            tol = RECONSTRUCTION_TOL.get(mine.dtype, 1e-2)
                    layers.append(VerifyLayer(info.name, x.module, err, tol, err <= tol))
            elif residual is not None:
                checked += 1
                a_raw, b_raw = orig.read(info), residual.read(mine)
                same = a_raw.dtype == b_raw.dtype and a_raw.shape == b_raw.shape
                if not (same and torch.equal(_bytes(a_raw), _bytes(b_raw))):
                    mismatched.append(info.name)
            progress.advance(info.name, info.nbytes)
    progress.finish()
    return layers, checked, mismatched, missing


def _bytes(t: torch.Tensor) -> torch.Tensor:
    import torch

    return t.reshape(-1).contiguous().view(torch.uint8)


def run_verify(req: VerifyRequest, progress: Progress | None = None) -> VerifyResult:
    """Check ``req.folder``; the CLI turns a failed result into exit code 1."""
    from svdtool.adapters.peft_check import check_outputs

    progress = progress or SilentProgress()
    t0 = time.perf_counter()
    folder = req.folder
    init = load_init(folder)
    config, adir = _adapter(folder, init)
    s = scaling_of(config)
    device = resolve_device(req.device)
    original, revision = _original(req, init)
    notes = []
    if abs(s - init.settings.scaling) > 1e-12 * max(1.0, s):
        notes.append(f"adapter_config.json gives s = {s:g}, svdtool.json recorded {init.settings.scaling:g}")
    if init.base == "original":
        notes.append(f"the base is the original model (the method leaves it untouched): {original}")
    with open_checkpoint(original, revision=revision, token=req.token) as orig:
        res = None if init.base == "original" else open_checkpoint(str(folder))
        try:
            layers, checked, mismatched, missing = check_tensors(init, orig, res, adir, config, device, progress)
        finally:
            if res is not None:
                res.close()
        orig_config = orig.meta.config
    logits = None
    if req.logits:
        progress.message("comparing outputs of residual + adapter with the original (float32)")
        logits, note = check_outputs(
            init, folder, adir, original, revision, req.token, orig_config, req.prompts, device
        )
        if note:
            notes.append(note)
    passed = (
        all(x.ok for x in layers) and not mismatched and not missing and bool(layers) and (logits is None or logits.ok)
    )
    return VerifyResult(
        folder=str(folder),
        original=original + (f"@{revision}" if revision else ""),
        method=init.settings.method,
        residual_dtype=init.residual_dtype,
        layers=layers,
        untouched_checked=checked,
        untouched_mismatched=mismatched,
        missing=missing,
        logits=logits,
        passed=passed,
        versions=versions("transformers", "peft"),
        seconds=round(time.perf_counter() - t0, 3),
        notes=notes + ([] if layers else ["no initialised layer was found to check"]),
        base=init.base,
        changes_output=init.changes_output,
    )
