"""Turn the calibration/gradient options shared by ``coverage`` and ``init`` into a GradientRequest."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from svdtool.errors import SvdtoolError

if TYPE_CHECKING:
    from svdtool.gradients import GradientRequest
    from svdtool.statistics import ActivationRequest

CALIB_REQUIRED = "--calib is required (a preset such as metamathqa, a hf://datasets/... file, or a local file)"


def gradient_request(
    model: str,
    *,
    calib: str | None,
    samples: int,
    max_length: int,
    batch_size: int,
    seed: int,
    prompt_field: str | None,
    response_field: str | None,
    text_field: str | None,
    chat_template: bool | None,
    tokenizer: str | None,
    revision: str | None,
    token: str | None,
    targets: str,
    dtype: str,
    device: str,
    mode: str,
    groups: int | None,
    micro_batch_size: int | None,
    offload: bool,
    grad_cache: Path | None,
    sketch_rank: int = 16,
) -> GradientRequest:
    from svdtool import naming
    from svdtool.calibration import CalibRequest
    from svdtool.gradients import GradientRequest

    if calib is None and (grad_cache is None or not grad_cache.exists()):
        raise SvdtoolError(CALIB_REQUIRED)
    if mode not in ("exact", "sketch"):
        raise SvdtoolError(f"--gradient {mode!r}: expected exact or sketch")
    return GradientRequest(
        model=model,
        calib=CalibRequest(
            source=calib or "",
            samples=samples,
            max_length=max_length,
            batch_size=batch_size,
            seed=seed,
            prompt_field=prompt_field,
            response_field=response_field,
            text_field=text_field,
            chat_template=chat_template,
            token=token,
        ),
        revision=revision,
        token=token,
        tokenizer=tokenizer,
        targets=naming.parse_targets(targets),
        dtype=dtype,
        device=device,
        mode=mode,
        sketch_rank=sketch_rank,
        seed=seed,
        groups=groups,
        micro_batch_size=micro_batch_size,
        offload=offload,
        cache=grad_cache,
    )


def passes_line(groups: int, micro: int, reason: str | None, dtype: str, dtype_reason: str | None) -> str:
    """The run summary's line on how the gradient passes ran, and why (chosen from memory; CPU dtype)."""
    line = f"passes: {groups} layer group(s), micro-batch {micro}" + (f" ({reason})" if reason else "")
    return line + (f"; computed in {dtype}: {dtype_reason}" if dtype_reason else "")


def activation_request(grad: GradientRequest) -> ActivationRequest:
    """``init --method corda|eva``: the same model and data options as a gradient request, for activations."""
    from svdtool.statistics import ActivationRequest

    return ActivationRequest(
        model=grad.model,
        calib=grad.calib,
        revision=grad.revision,
        token=grad.token,
        tokenizer=grad.tokenizer,
        targets=grad.targets,
        dtype=grad.dtype,
        device=grad.device,
    )
