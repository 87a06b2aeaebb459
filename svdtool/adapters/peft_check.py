"""Load an init folder the way a trainer does (transformers + PEFT) and compare its outputs with the original."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

from svdtool.adapters.layout import model_class
from svdtool.loading import parse_model_spec
from svdtool.results.init import LOGITS_TOL, InitResult, LogitsCheck

if TYPE_CHECKING:
    import torch

#: Without a tokenizer: this many prompts of this many seeded random token ids.
RANDOM_PROMPTS, RANDOM_LENGTH = 3, 12
_VOCAB_FILES = {"vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model", "merges.txt"}


def _inputs(folder: Path, config: dict[str, Any], prompts: list[str]) -> tuple[list[torch.Tensor], list[str]]:
    import torch

    vocab = int(config.get("vocab_size") or 2)
    has_tokenizer = any(f.name.startswith("tokenizer") or f.name in _VOCAB_FILES for f in folder.iterdir())
    if has_tokenizer:  # transformers would otherwise build an empty-vocabulary tokenizer
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(folder))
            ids = [torch.tensor(tok(p)["input_ids"], dtype=torch.long) for p in prompts]
            if all(0 < len(x) and int(x.max()) < vocab for x in ids):
                return ids, list(prompts)
        except Exception:  # a tokenizer transformers cannot build: fall back to random ids
            pass
    gen = torch.Generator().manual_seed(0)
    ids = [torch.randint(0, vocab, (RANDOM_LENGTH,), generator=gen) for _ in range(RANDOM_PROMPTS)]
    return ids, [f"{RANDOM_PROMPTS} × {RANDOM_LENGTH} random token ids (seed 0)"]


def _run(model: Any, ids: list[torch.Tensor], causal: bool, device: torch.device) -> torch.Tensor:
    import torch

    outs = []
    with torch.no_grad():
        for x in ids:
            out = model(input_ids=x[None].to(device))
            y = out.logits if causal else getattr(out, "last_hidden_state", None)
            y = out[0] if y is None else y
            outs.append(y.detach().to("cpu", torch.float64).reshape(-1, y.shape[-1]))
    return torch.cat(outs)


def _original_location(original: str, revision: str | None) -> tuple[str, str | None] | None:
    """Where ``from_pretrained`` finds the original: a folder, or a repo id (None: it cannot)."""
    path = Path(original).expanduser()
    if path.is_dir():
        return str(path), None
    if path.is_file():
        return (str(path.parent), None) if path.name == "model.safetensors" else None
    parsed = parse_model_spec(original, revision)
    return (parsed[0], parsed[1]) if parsed else None


def check_outputs(
    init: InitResult,
    folder: Path,
    adapter_dir: Path,
    original: str,
    revision: str | None,
    token: str | None,
    orig_config: dict[str, Any] | None,
    prompts: list[str],
    device: torch.device,
) -> tuple[LogitsCheck | None, str | None]:
    """Outputs of residual + adapter vs the original, float32. (None, why) when the original cannot be loaded.

    With ``init.base == "original"`` the adapter goes on the original itself, and the reference is the original
    with s·B·A added by svdtool when the init changes the output (LoRA-One), else the original as it is.
    With a quantised base, both the residual and a plain-NF4 copy of the original get their target weights
    replaced by the simulated 4-bit load, and the tolerance is the plain copy's error.
    """
    import torch
    from peft import PeftModel

    where = _original_location(original, revision)
    if where is None:
        return None, f"output check skipped: transformers cannot load {original} (pass --model FOLDER)"
    kept = init.base == "original"
    config = json.loads((folder / "config.json").read_text()) if not kept else dict(orig_config or {})
    cls = model_class(config)
    causal = init.task_type == "CAUSAL_LM"
    ids, shown = _inputs(Path(where[0]) if kept and Path(where[0]).is_dir() else folder, config, prompts)
    kwargs: dict[str, Any] = {"dtype": torch.float32}
    if where[1]:
        kwargs["revision"] = where[1]
    if token:
        kwargs["token"] = token
    base = cls.from_pretrained(where[0], **kwargs).to(device).eval()
    if kept and init.changes_output:
        add_adapter(base, init, adapter_dir)
    ref = _run(base, ids, causal, device)
    tol = LOGITS_TOL.get(init.residual_dtype, max(LOGITS_TOL.values()))
    if init.quantization:  # quantisation-aware: no worse than plain NF4 of the original on the same targets
        _fake_quantize_targets(base, init)
        plain = _run(base, ids, causal, device)
        tol = float(((plain - ref).norm() / ref.norm()).item()) if float(ref.norm().item()) > 0 else 0.0
    del base
    if kept:
        residual = cls.from_pretrained(where[0], **kwargs).to(device).eval()
    else:
        residual = cls.from_pretrained(str(folder), dtype=torch.float32).to(device).eval()
    if init.quantization:
        _fake_quantize_targets(residual, init)
    with warnings.catch_warnings():  # PEFT's own deprecation chatter about transformers internals
        warnings.simplefilter("ignore", FutureWarning)
        # low_cpu_mem_usage: PEFT skips inits that only the saved tensors overwrite (MiCA's full SVD).
        model = PeftModel.from_pretrained(residual, str(adapter_dir), low_cpu_mem_usage=kept).eval()
    got = _run(model, ids, causal, device)
    del model, residual
    diff = got - ref
    rel = float((diff.norm() / ref.norm()).item()) if float(ref.norm().item()) > 0 else float(diff.norm().item())
    top1 = float((got.argmax(-1) == ref.argmax(-1)).double().mean().item()) if causal else None
    check = LogitsCheck(
        output="logits" if causal else "last_hidden_state",
        prompts=shown,
        tokens=sum(len(x) for x in ids),
        rel_error=rel,
        max_abs_error=float(diff.abs().max().item()),
        top1_agreement=top1,
        tol=tol,
        ok=rel <= tol,
    )
    return check, None


def add_adapter(model: Any, init: InitResult, adapter_dir: Path) -> None:
    """W ← W + s·B·A in float64 for every initialised layer of ``model`` (svdtool's own merge, not PEFT's)."""
    import torch
    from safetensors.torch import load_file

    from svdtool.adapters.peft_format import ADAPTER_CONFIG, ADAPTER_WEIGHTS, lora_key, scaling_of

    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    tensors = load_file(str(adapter_dir / ADAPTER_WEIGHTS))
    with torch.no_grad():
        for x in init.layers:
            s = scaling_of(config, x.module)
            a = tensors[lora_key(x.module, "A")].double()  # (r, in)
            b = tensors[lora_key(x.module, "B")].double()  # (out, r)
            weight = model.get_submodule(x.module).weight
            delta = s * (b @ a)  # (out, in)
            weight.copy_((weight.double() + (delta.T if x.transposed else delta).to(weight.device)).to(weight.dtype))


def _fake_quantize_targets(model: Any, init: InitResult) -> None:
    """Replace each target weight of a float32 model by what a 4-bit NF4 load of it in the recorded load dtype
    computes with (:mod:`svdtool.quant.nf4`), in place. float32 holds the bf16/fp16 values exactly."""
    import torch

    from svdtool.methods.quantized import config_of
    from svdtool.quant import nf4
    from svdtool.quant.load_config import TORCH_DTYPES

    q = init.quantization or {}
    dtype, config = getattr(torch, TORCH_DTYPES[q["load_dtype"]]), config_of(q)
    with torch.no_grad():
        for x in init.layers:
            weight = model.get_submodule(x.module).weight
            w = weight.T if x.transposed else weight  # (out, in), as transformers quantises it
            deq = nf4.fake_quantize(w.to(dtype).contiguous(), config).to(weight.dtype)
            weight.copy_(deq.T if x.transposed else deq)
