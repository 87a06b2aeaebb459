"""Provenance of a gradient estimate: the calibration data and how the gradient was computed.

Shared by ``coverage`` results, the LoRA-GA init sidecar, and the ``--grad-cache`` file's metadata.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class CalibrationInfo:
    """Which samples were used, from where, and how they were tokenized."""

    source: str  # --calib as given
    kind: str  # preset | hub | local
    path: str  # the local file read
    format: str  # json | txt | parquet
    data: str  # prompt-response | text
    fields: dict[str, str]  # {"prompt": "query", "response": "response"} or {"text": "text"}
    chat_template: bool  # prompt/response rendered with the tokenizer's chat template
    samples: int  # --samples
    used: int  # samples that reached the model (some may be dropped: no target token within max_length)
    dropped: int
    truncated: int  # samples cut to max_length
    records_read: int
    blank_skipped: int
    seed: int
    max_length: int
    batch_size: int
    tokens: int  # input tokens over all used samples (no padding)
    loss_tokens: int  # tokens the loss covers
    repo: str | None = None
    file: str | None = None
    revision: str | None = None
    sha: str | None = None  # the dataset commit the revision resolved to


@dataclass
class GradientInfo:
    """How the gradients were estimated."""

    mode: str  # exact | sketch
    model: str
    model_sha: str | None
    dtype: str  # model dtype during the passes
    device: str
    targets: list[str]  # tensor names
    batches: int  # logical batches of --batch-size; G is the mean of their mean-loss gradients
    micro_batch_size: int
    groups: int  # passes over the data, each folding the gradients of one group of layers
    offload: bool  # fp32 accumulators kept in host memory
    accumulation: str  # fp32
    seconds: float
    tokens_per_second: float
    peak_device_memory: int | None  # bytes (CUDA only)
    peak_host_rss: int  # bytes, max resident set size of the process
    sketch: dict[str, int] = field(default_factory=dict)  # mode=sketch: {"rank": t, "range": k, "corange": l}
    cache: str | None = None
    from_cache: bool = False
    transposed: list[str] = field(default_factory=list)  # targets stored (in, out) in the checkpoint (GPT-2 Conv1D)
    cuda_graphs: dict[str, int] = field(default_factory=dict)  # CUDA: steps captured / replayed / eager / failed
    dtype_reason: str | None = None  # why dtype differs from the checkpoint's (fp32 on a CPU)
    plan: dict[str, Any] = field(default_factory=dict)  # groups, micro-batch, estimated peak, budget, reason
    phases: dict[str, float] = field(default_factory=dict)  # seconds: open, calibration, load, passes, reduce
