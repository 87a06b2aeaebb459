"""Load a causal LM and its tokenizer for gradient work, and find the target matrices in it.

Gradient estimation needs a full transformers model: MODEL must be a local HF folder (config.json,
safetensors, tokenizer) or a Hub repo id, which is downloaded into the HF cache. Single ``.safetensors``
or ``.gguf`` files have no config and are refused with a clear message, as are models that are not
causal language models (BERT, T5 …).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svdtool import naming
from svdtool.errors import SvdtoolError
from svdtool.gradients.plan import ModelShape
from svdtool.loading import FLOAT_DTYPES, CheckpointMeta, TensorInfo, open_checkpoint, parse_model_spec
from svdtool.loading.checks import check_config_shapes
from svdtool.results.manifest import SourceFile

if TYPE_CHECKING:
    import torch
    from torch import nn

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def model_folder(spec: str, revision: str | None, token: str | None) -> tuple[Path, CheckpointMeta]:
    """A local folder holding config, weights and tokenizer for ``spec``, and its provenance."""
    path = Path(spec).expanduser()
    if path.exists():
        if revision:
            raise SvdtoolError("--revision applies to Hub repos only")
        if not path.is_dir() or not (path / "config.json").is_file():
            raise SvdtoolError(
                f"{spec}: gradient work needs a model folder with config.json (a transformers checkpoint), "
                "not a single weights file"
            )
        files = [SourceFile(f.name, f.stat().st_size) for f in sorted(path.glob("*.safetensors"))]
        meta = CheckpointMeta(spec, "folder", None, None, files, _read_json(path / "config.json"))
        return path.resolve(), meta
    parsed = parse_model_spec(spec, revision)
    if parsed is None or spec.startswith((".", "/", "~")):
        raise SvdtoolError(f"{spec} does not exist (expected a local model folder or a Hub repo id such as owner/name)")
    from svdtool.loading.hub import snapshot_files

    repo_id, rev = parsed
    folder, sha = snapshot_files(repo_id, rev, token)
    files = [SourceFile(f.name, f.stat().st_size) for f in sorted(folder.glob("*.safetensors"))]
    label = f"{repo_id}@{rev}" if rev else repo_id
    return folder, CheckpointMeta(label, "hub", rev, sha, files, _read_json(folder / "config.json"))


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def check_causal(config: dict[str, Any] | None, label: str) -> None:
    """Refuse models that are not causal LMs, from config.json alone (before loading any weights)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    config = config or {}
    archs = [a for a in config.get("architectures") or [] if isinstance(a, str)]
    model_type = config.get("model_type")
    if config.get("is_encoder_decoder"):
        raise SvdtoolError(f"{label} is an encoder-decoder model ({model_type}); gradient work needs a causal LM")
    if archs:
        if not any(a.endswith(_CAUSAL_SUFFIXES) for a in archs):
            raise SvdtoolError(
                f"{label} is a {', '.join(archs)}, not a causal language model: LoRA-GA gradients and coverage "
                "need a model that AutoModelForCausalLM loads with its LM head (…ForCausalLM)"
            )
        return
    if model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        raise SvdtoolError(f"{label} (model_type {model_type!r}) is not a causal language model")


def max_positions(config: dict[str, Any] | None) -> int | None:
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = (config or {}).get(key)
        if isinstance(value, int) and value > 0:
            return value
    return None


def resolve_dtype(requested: str, config: dict[str, Any] | None, device: torch.device) -> tuple[str, str | None]:
    """The compute dtype, and why it differs from the checkpoint's when it does.

    ``auto`` is the checkpoint's dtype on a GPU (fp32 when unknown). On a CPU, ``auto`` computes a bf16 or
    fp16 checkpoint in fp32: CPU kernels for bf16 are slower than fp32 ones (SmolLM2 coverage on 2 cores:
    35 tok/s in bf16, 121 tok/s in fp32), and fp16 lacks CPU kernels. ``--dtype bf16`` still runs bf16.
    """
    raw = str((config or {}).get("dtype") or (config or {}).get("torch_dtype") or "float32")
    stored = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(raw, "fp32")
    if requested == "auto":
        if device.type == "cpu" and stored != "fp32":
            return "fp32", f"the checkpoint is {stored}; on the CPU fp32 is faster (--dtype {stored} keeps {stored})"
        return stored, None
    if requested not in DTYPES:
        raise SvdtoolError(f"--dtype {requested!r}: expected auto, fp32, bf16 or fp16")
    if requested == "fp16" and device.type == "cpu":
        return "fp32", "fp16 has no CPU kernels for training passes: computing in fp32"
    return requested, None


def header_targets(infos: list[TensorInfo], targets: list[str]) -> list[TensorInfo]:
    """The target matrices as the checkpoint headers list them (what :func:`find_targets` finds in the model)."""
    return [
        i
        for i in infos
        if len(i.shape) == 2 and naming.layer_index(i.name) is not None and naming.is_adapter_target(i.name, targets)
    ]


def model_shape(config: dict[str, Any] | None, infos: list[TensorInfo], targets: list[str], dtype: str) -> ModelShape:
    """What :func:`svdtool.gradients.plan.plan_memory` needs, from config.json and the checkpoint headers."""
    import torch

    cfg = config or {}
    itemsize = torch.empty((), dtype=getattr(torch, DTYPES[dtype])).element_size()
    hidden = int(cfg.get("hidden_size") or cfg.get("n_embd") or cfg.get("d_model") or 0)
    inter = int(cfg.get("intermediate_size") or cfg.get("n_inner") or cfg.get("ffn_dim") or 4 * hidden)
    vocab = int(cfg.get("vocab_size") or 0)
    weight_bytes = sum(i.numel * (itemsize if i.dtype in FLOAT_DTYPES else i.nbytes // max(i.numel, 1)) for i in infos)
    per_block: dict[int, int] = {}
    for info in header_targets(infos, targets):
        block = naming.layer_index(info.name)
        assert block is not None
        per_block[block] = per_block.get(block, 0) + info.numel
    params = [per_block[b] for b in sorted(per_block, reverse=True)]
    return ModelShape(weight_bytes, params, hidden, inter, vocab, itemsize)


@dataclass
class ModelSource:
    """Everything about the model except its weights: cheap to get, so input errors surface first."""

    folder: Path
    meta: CheckpointMeta
    tokenizer: Any
    dtype: str  # fp32 | bf16 | fp16
    max_positions: int | None
    dtype_reason: str | None = None  # why dtype is not the checkpoint's (a CPU run of a bf16 model)


def open_model(
    spec: str, *, revision: str | None, token: str | None, dtype: str, device: torch.device, tokenizer: str | None
) -> ModelSource:
    """Resolve the folder, check it is a causal LM, load the tokenizer; the weights come later."""
    from transformers import AutoTokenizer

    folder, meta = model_folder(spec, revision, token)
    check_causal(meta.config, meta.description)
    with open_checkpoint(str(folder)) as ckpt:  # headers only: a config.json that lies fails here, in one line
        check_config_shapes(meta.config, ckpt.tensors(), meta.description)
    name, reason = resolve_dtype(dtype, meta.config, device)
    tok_source = tokenizer or str(folder)
    try:
        tok = AutoTokenizer.from_pretrained(tok_source)
    except (OSError, ValueError, TypeError) as exc:
        raise SvdtoolError(
            f"cannot load a tokenizer from {tok_source} ({str(exc).splitlines()[0][:120]}); pass --tokenizer PATH"
        ) from None
    return ModelSource(folder, meta, tok, name, max_positions(meta.config), reason)


def load_weights(src: ModelSource, device: torch.device) -> Any:
    """The model in eval mode (dropout off: a deterministic estimate), every parameter frozen, on ``device``."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()  # our own progress goes to stderr
    # On a GPU the shards are read straight into device memory (no full host copy, no pageable upload).
    placement = {"device_map": {"": device}} if device.type == "cuda" else {}
    try:
        model: Any = AutoModelForCausalLM.from_pretrained(
            str(src.folder), dtype=getattr(torch, DTYPES[src.dtype]), **placement
        )
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    model.to(device)
    model.eval()
    model.requires_grad_(False)
    return model


@dataclass
class Target:
    """One target matrix of the live model."""

    name: str  # tensor name, as in the checkpoint: "model.layers.0.self_attn.q_proj.weight"
    module: nn.Module
    transposed: bool  # GPT-2 Conv1D: weight stored (in, out)
    block: int  # transformer block index
    out_features: int
    in_features: int


def find_targets(model: nn.Module, targets: list[str], checkpoint_names: set[str] | None = None) -> list[Target]:
    """Linear / Conv1D modules inside the blocks whose weight ``naming.is_adapter_target`` selects."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    prefix = getattr(model, "base_model_prefix", "")
    out = []
    for mname, module in model.named_modules():
        if not isinstance(module, (nn.Linear, Conv1D)):
            continue
        name = checkpoint_name(f"{mname}.weight", prefix, checkpoint_names)
        if not naming.is_adapter_target(name, targets):
            continue
        block = naming.layer_index(name)
        assert block is not None
        w = module.weight
        transposed = isinstance(module, Conv1D)
        d_out, d_in = (w.shape[1], w.shape[0]) if transposed else (w.shape[0], w.shape[1])
        out.append(Target(name, module, transposed, block, int(d_out), int(d_in)))
    if not out:
        raise SvdtoolError(
            "no Linear/Conv1D weight inside the transformer blocks matches --targets "
            f"{','.join(targets) or naming.ALL_LINEAR}"
        )
    return out


def checkpoint_name(name: str, prefix: str, names: set[str] | None) -> str:
    """The tensor name the checkpoint uses (some omit the base-model prefix, e.g. GPT-2's ``transformer.``)."""
    if not names or name in names:
        return name
    if prefix and name.startswith(prefix + ".") and name[len(prefix) + 1 :] in names:
        return name[len(prefix) + 1 :]
    return name


def blocks(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """The transformer block modules in forward order: [(index, module)]."""
    found = [(naming.block_index(n), m) for n, m in model.named_modules()]
    out = sorted(((i, m) for i, m in found if i is not None), key=lambda p: p[0])
    # Keep one container (nested ModuleLists of other names would repeat indices).
    seen: set[int] = set()
    uniq = []
    for i, m in out:
        if i not in seen:
            seen.add(i)
            uniq.append((i, m))
    return uniq
