"""Options shared by several commands, declared once so that each means the same everywhere."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated

import typer


class OutputFormat(str, Enum):
    table = "table"
    json = "json"


ModelArg = Annotated[
    str,
    typer.Argument(
        help="Hub repo id (owner/name[@revision]), a folder with safetensors, or a .safetensors / .gguf file.",
        show_default=False,
    ),
]
RevisionOpt = Annotated[
    str | None, typer.Option("--revision", help="Hub branch, tag or commit sha (or write owner/name@rev).")
]
TokenOpt = Annotated[
    str | None,
    typer.Option("--token", help="Hub token; defaults to $HF_TOKEN, then the saved `hf auth login` token."),
]
StreamOpt = Annotated[
    bool,
    typer.Option("--stream", help="Hub only: read each tensor with HTTP range requests instead of downloading."),
]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto | cpu | cuda | cuda:N.")]
RanksOpt = Annotated[str, typer.Option("--ranks", help="Comma-separated adapter ranks r, e.g. 8,16,32.")]
OutOpt = Annotated[
    Path | None, typer.Option("--out", help="Directory for the results (JSON plus a safetensors sidecar).")
]
FormatOpt = Annotated[
    OutputFormat, typer.Option("--format", help="table: human summary; json: the full result on stdout.")
]
ReportOpt = Annotated[
    Path | None, typer.Option("--report", help="Also write a self-contained HTML report to this file.")
]
IncludeOpt = Annotated[
    list[str] | None,
    typer.Option("--include", help="Glob on tensor names or module types (repeatable), e.g. '*q_proj*'."),
]
ExcludeOpt = Annotated[
    list[str] | None,
    typer.Option("--exclude", help="Glob on tensor names or module types to leave out (repeatable)."),
]

# ---------------------------------------------------------------- calibration data and gradients (coverage, init)
CalibOpt = Annotated[
    str | None,
    typer.Option(
        "--calib",
        help="Calibration data: a preset (metamathqa, gsm8k, alpaca, wikitext2, c4; name@rev pins a commit), "
        "hf://datasets/owner/name[@rev]/path, or a local .jsonl/.json/.json.gz/.txt/.parquet file.",
    ),
]
SamplesOpt = Annotated[int, typer.Option("--samples", min=1, help="Calibration samples, drawn with --seed.")]
MaxLengthOpt = Annotated[int, typer.Option("--max-length", min=2, help="Tokens per sample (longer ones are cut).")]
BatchSizeOpt = Annotated[
    int, typer.Option("--batch-size", min=1, help="Samples per batch; G is the mean of the per-batch gradients.")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="Seed for sampling the calibration data (and sketches).")]
PromptFieldOpt = Annotated[
    str | None,
    typer.Option("--prompt-field", help="Field(s) of the prompt, comma-separated (joined by a blank line)."),
]
ResponseFieldOpt = Annotated[
    str | None, typer.Option("--response-field", help="Field of the response (the loss covers only its tokens).")
]
TextFieldOpt = Annotated[str | None, typer.Option("--text-field", help="Field of plain text (loss on all tokens).")]
ChatTemplateOpt = Annotated[
    bool | None,
    typer.Option(
        "--chat-template/--no-chat-template",
        help="Render prompt/response pairs with the tokenizer's chat template (default: when it has one).",
        show_default=False,
    ),
]
TokenizerOpt = Annotated[str | None, typer.Option("--tokenizer", help="Tokenizer folder or repo, when MODEL has none.")]
ModelDtypeOpt = Annotated[
    str,
    typer.Option(
        "--dtype",
        help="Model dtype for the gradient passes: auto (the checkpoint's on a GPU; fp32 on a CPU, where bf16 and "
        "fp16 are slower), fp32, bf16, fp16.",
    ),
]
GradCacheOpt = Annotated[
    Path | None,
    typer.Option(
        "--grad-cache",
        help="Gradient cache (safetensors): reused when it matches this run's settings, else written.",
    ),
]
GradientModeOpt = Annotated[
    str,
    typer.Option(
        "--gradient",
        help="exact: float32 gradients of every target; sketch: only their top singular factors, "
        "from single-pass sketches (no weight gradient is ever formed; init only).",
    ),
]
GradGroupsOpt = Annotated[
    int | None,
    typer.Option(
        "--grad-groups",
        min=1,
        help="Passes over the data, each folding one group of layers (less GPU memory, more compute). "
        "Default: from the device's free memory, one pass when the weights, float32 accumulators and "
        "activations fit (the run summary says what was chosen and why).",
    ),
]
MicroBatchOpt = Annotated[
    int | None,
    typer.Option(
        "--micro-batch-size",
        min=1,
        help="Samples per forward pass (≤ --batch-size; same gradient). Default: --batch-size, or less when "
        "the device's memory needs it.",
    ),
]
OffloadOpt = Annotated[
    bool, typer.Option("--offload", help="Keep the float32 gradient accumulators in host memory (slower).")
]
TargetsOpt = Annotated[
    str,
    typer.Option(
        "--targets",
        help="Module types or globs, comma-separated (q_proj,v_proj), all-linear, or snr:P (the top P% of block"
        " matrices per module type by the Spectrum tool's SNR).",
    ),
]
