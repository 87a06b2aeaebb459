"""Which module owns each checkpoint weight, what kind of layer it is, and what PEFT will call it.

PEFT keys adapter tensors by the module path inside the model class that loads them
(``base_model.model.<module>.lora_A.weight``) and wraps only ``nn.Linear``/``Conv1D`` layers. The
checkpoint's tensor names usually equal those paths, but not always (the Hub's ``gpt2`` stores
``h.0.attn.c_attn.weight`` for ``transformer.h.0.attn.c_attn``). So the layout comes from the
model class itself, built from ``config.json`` on the meta device (no memory, no weights read).
When transformers cannot build it (unknown or remote-code architecture), it falls back to the
tensor names and :mod:`svdtool.naming`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from svdtool import naming
from svdtool.loading import TensorInfo

LINEAR = "linear"
CONV1D = "conv1d"  # GPT-2 style, weight stored (in, out)
EMBEDDING = "embedding"
OTHER = "other"


@dataclass(frozen=True)
class WeightModule:
    """A checkpoint ``*.weight`` tensor and the module that owns it in the model class."""

    tensor: str  # name in the checkpoint
    module: str  # module path in the model (PEFT key stem)
    kind: str  # linear | conv1d | embedding | other
    class_name: str  # torch/transformers class of the module, for messages


@dataclass
class ModelLayout:
    model_class: str | None  # e.g. LlamaForCausalLM; None when resolved from names
    task_type: str | None  # PEFT task type: CAUSAL_LM, FEATURE_EXTRACTION, SEQ_CLS …, or None
    weights: dict[str, WeightModule]  # by tensor name, every 2-D+ "*.weight" tensor
    all_modules: list[str]  # every module path PEFT's matching will see (containers included)
    output_module: str | None = None  # the output embedding (lm_head): never part of all-linear
    tied_output: bool = False  # lm_head shares the input embedding's weight
    source: str = "transformers"  # transformers | names
    notes: list[str] = field(default_factory=list)


_TASK_SUFFIXES = (
    ("ForCausalLM", "CAUSAL_LM"),
    ("LMHeadModel", "CAUSAL_LM"),
    ("ForConditionalGeneration", "SEQ_2_SEQ_LM"),
    ("ForSeq2SeqLM", "SEQ_2_SEQ_LM"),
    ("ForSequenceClassification", "SEQ_CLS"),
    ("ForTokenClassification", "TOKEN_CLS"),
    ("ForQuestionAnswering", "QUESTION_ANS"),
    ("Model", "FEATURE_EXTRACTION"),
)


def task_type_for(class_name: str | None) -> str | None:
    """PEFT's task type for a transformers model class name (None: a plain PeftModel)."""
    for suffix, task in _TASK_SUFFIXES:
        if class_name and class_name.endswith(suffix):
            return task
    return None


def model_class(config: dict[str, Any]) -> Any:
    """The transformers class that loads this checkpoint: ``architectures[0]``, else by model type."""
    import transformers
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    archs = config.get("architectures") or []
    if archs and isinstance(archs[0], str) and hasattr(transformers, archs[0]):
        return getattr(transformers, archs[0])
    if config.get("model_type") in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return transformers.AutoModelForCausalLM
    return transformers.AutoModel


def build_config(config: dict[str, Any]) -> Any:
    from transformers import AutoConfig

    rest = {k: v for k, v in config.items() if k != "model_type"}
    return AutoConfig.for_model(str(config["model_type"]), **rest)


def _kind(module: Any) -> str:
    import torch
    from transformers.pytorch_utils import Conv1D

    if isinstance(module, Conv1D):
        return CONV1D
    if isinstance(module, torch.nn.Linear):
        return LINEAR
    if isinstance(module, torch.nn.Embedding):
        return EMBEDDING
    return OTHER


def _from_transformers(config: dict[str, Any], infos: list[TensorInfo]) -> ModelLayout:
    import torch

    cls = model_class(config)
    cfg = build_config(config)
    with torch.device("meta"):
        model = cls.from_config(cfg) if hasattr(cls, "from_config") and cls.__name__.startswith("Auto") else cls(cfg)
    modules = dict(model.named_modules())
    params = {name for name, _ in model.named_parameters(remove_duplicate=False)}
    prefix = getattr(model, "base_model_prefix", "") or ""
    weights: dict[str, WeightModule] = {}
    for info in infos:
        if not info.name.endswith(".weight") or len(info.shape) < 2:
            continue
        candidates = [info.name]
        if prefix:
            candidates += [f"{prefix}.{info.name}", info.name.removeprefix(prefix + ".")]
        found = next((c for c in candidates if c in params), None)
        if found is None:
            continue
        path = naming.module_path(found)
        mod = modules[path]
        weights[info.name] = WeightModule(info.name, path, _kind(mod), type(mod).__name__)
    out_emb = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    output_module = next((n for n, m in modules.items() if out_emb is not None and m is out_emb), None)
    tied = bool(getattr(cfg, "tie_word_embeddings", False)) and output_module is not None
    name = cls.__name__ if not cls.__name__.startswith("Auto") else type(model).__name__
    return ModelLayout(name, task_type_for(name), weights, [n for n in modules if n], output_module, tied)


def names_layout(config: dict[str, Any] | None, infos: list[TensorInfo], why: str) -> ModelLayout:
    model_type = (config or {}).get("model_type")
    weights: dict[str, WeightModule] = {}
    paths: set[str] = set()
    for info in infos:
        path = naming.module_path(info.name)
        parts = path.split(".")
        paths.update(".".join(parts[:i]) for i in range(1, len(parts) + 1))
        if not info.name.endswith(".weight") or len(info.shape) < 2:
            continue
        mtype = naming.module_type(info.name)
        if naming.is_embedding(mtype) and mtype != "lm_head":
            kind = EMBEDDING
        elif len(info.shape) != 2:
            kind = OTHER
        else:
            kind = CONV1D if naming.is_transposed(model_type, info.name) else LINEAR
        weights[info.name] = WeightModule(info.name, path, kind, kind)
    lm_head = next((w.module for w in weights.values() if naming.module_type(w.tensor) == "lm_head"), None)
    tied = bool((config or {}).get("tie_word_embeddings", False)) and lm_head is not None
    return ModelLayout(None, None, weights, sorted(paths), lm_head, tied, source="names", notes=[why])


def plain_decoder_layout(config: dict[str, Any] | None, infos: list[TensorInfo]) -> ModelLayout | None:
    """The layout of a plain decoder checkpoint (:data:`svdtool.naming.PLAIN_DECODERS`) from its names alone, equal
    to the model class's, without importing transformers (7–11 s on a cold start); None for anything else: another
    family, a class other than ``*ForCausalLM``, or any 2-D weight outside ``model.``/``lm_head`` or the family's
    modules (a multimodal projector, a fused projection, a quantised ``qweight`` …)."""
    archs = (config or {}).get("architectures") or []
    arch = archs[0] if archs and isinstance(archs[0], str) else ""
    if (config or {}).get("model_type") not in naming.PLAIN_DECODERS or not arch.endswith("ForCausalLM"):
        return None
    for info in infos:
        if len(info.shape) < 2:
            continue
        in_model = info.name.startswith("model.") or info.name == "lm_head.weight"
        if not (in_model and info.name.endswith(".weight")):
            return None
        if naming.module_path(info.name).rsplit(".", 1)[-1] not in naming.PLAIN_DECODER_LEAVES:
            return None
    out = names_layout(config, infos, "")
    # The model class always has lm_head: tied to the embedding when the checkpoint does not store it.
    tied = bool((config or {}).get("tie_word_embeddings", False)) or "lm_head.weight" not in {i.name for i in infos}
    classes = {LINEAR: "Linear", EMBEDDING: "Embedding"}
    weights = {k: replace(w, class_name=classes.get(w.kind, w.class_name)) for k, w in out.weights.items()}
    modules = out.all_modules if "lm_head" in out.all_modules else sorted([*out.all_modules, "lm_head"])
    return ModelLayout(arch, task_type_for(arch), weights, modules, "lm_head", tied, source="names (plain decoder)")


def resolve_layout(config: dict[str, Any] | None, infos: list[TensorInfo]) -> ModelLayout:
    """The layout from the model class when transformers can build it (from the names alone for a plain decoder,
    :func:`plain_decoder_layout`), else from the tensor names."""
    plain = plain_decoder_layout(config, infos)
    if plain is not None:
        return plain
    if not config or "model_type" not in config:
        return names_layout(config, infos, "no model_type in config.json: module kinds guessed from tensor names")
    try:
        return _from_transformers(config, infos)
    except Exception as exc:  # unknown architecture, remote code, a config transformers rejects
        return names_layout(
            config,
            infos,
            f"transformers could not build the model ({type(exc).__name__}): module kinds guessed from tensor names",
        )
