"""The one module that knows how checkpoints name their tensors.

It maps a tensor name (HF Llama/Gemma/Mistral/Qwen, GPT-2, BERT, or GGUF) to a module type
(``q_proj``, ``down_proj``, ``embed`` …) and a layer index, says which tensors are embeddings,
which weights are stored transposed (GPT-2 ``Conv1D``), and matches ``--include``/``--exclude``
globs and ``--targets`` lists.
"""

from __future__ import annotations

import fnmatch
import re

# Canonical module types. Aliases from other layouts map onto the Llama names where the role is the same.
_ALIASES: dict[str, str] = {
    # GGUF (llama.cpp) names
    "attn_q": "q_proj",
    "attn_k": "k_proj",
    "attn_v": "v_proj",
    "attn_output": "o_proj",
    "ffn_gate": "gate_proj",
    "ffn_up": "up_proj",
    "ffn_down": "down_proj",
    "token_embd": "embed",
    "output": "lm_head",
    # GPT-2
    "attn.c_attn": "c_attn",
    "attn.c_proj": "attn.c_proj",
    "mlp.c_fc": "c_fc",
    "mlp.c_proj": "mlp.c_proj",
    "wte": "embed",
    "wpe": "embed_positions",
    # BERT
    "attention.self.query": "query",
    "attention.self.key": "key",
    "attention.self.value": "value",
    "attention.output.dense": "attention.output",
    "intermediate.dense": "intermediate",
    "output.dense": "output",
    "word_embeddings": "embed",
    "position_embeddings": "embed_positions",
    "token_type_embeddings": "embed_token_types",
    "pooler.dense": "pooler",
    # Llama family
    "embed_tokens": "embed",
    "lm_head": "lm_head",
}

#: Module types that count as embeddings for the claim check (input and output embeddings).
EMBEDDING_TYPES = frozenset({"embed", "embed_positions", "embed_token_types", "lm_head"})

# "<prefix>.<layer container>.<index>.<rest>" for the common containers.
_LAYER_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blk|block|blocks)\.(\d+)\.(.+)$")
_SUFFIX_RE = re.compile(r"\.(weight|bias)$")

#: Decoder families whose ``*ForCausalLM`` checkpoints name each weight by its module path (``model.…`` and
#: ``lm_head``) and hold no 2-D weights but these, every one an ``nn.Linear`` except the embedding: their module
#: layout follows from the names (``adapters.layout.plain_decoder_layout``; each family is checked against its
#: transformers model class in tests/test_layout_plain.py).
PLAIN_DECODERS = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2"})
PLAIN_DECODER_LEAVES = frozenset(
    {"embed_tokens", "lm_head", "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
)

# Leaf module names of GPT-2-style Conv1D layers, whose weight is stored as (in, out).
_CONV1D_MODEL_TYPES = frozenset({"gpt2", "gpt_bigcode", "openai-gpt"})
_CONV1D_LEAVES = frozenset({"c_attn", "c_proj", "c_fc", "q_attn"})


def module_path(name: str) -> str:
    """The module that owns a parameter: ``model.layers.0.mlp.up_proj.weight`` → ``model.layers.0.mlp.up_proj``."""
    return _SUFFIX_RE.sub("", name)


def layer_index(name: str) -> int | None:
    """The transformer block a tensor belongs to, or None for embeddings, heads and final norms."""
    m = _LAYER_RE.search(name)
    return int(m.group(1)) if m else None


def module_type(name: str) -> str:
    """The role of a tensor, independent of its layer: ``q_proj``, ``down_proj``, ``embed`` …"""
    path = module_path(name)
    m = _LAYER_RE.search(path)
    rest = m.group(2) if m else path
    # Try the longest alias that ends the path, so "attention.output.dense" beats "output.dense".
    for alias in sorted(_ALIASES, key=len, reverse=True):
        if rest == alias or rest.endswith("." + alias):
            return _ALIASES[alias]
    return rest.rsplit(".", 1)[-1] if m is None else _strip_container(rest)


def _strip_container(rest: str) -> str:
    # "self_attn.q_proj" -> "q_proj", "mlp.experts.3.w1" -> "experts.w1"
    parts = [p for p in rest.split(".") if not p.isdigit()]
    if len(parts) >= 2 and parts[0] in {"self_attn", "attn", "mlp", "attention", "feed_forward"}:
        parts = parts[1:]
    return ".".join(parts)


#: Display order of module types: attention, then MLP, in the order a block computes them.
TYPE_ORDER = (
    "q_proj", "k_proj", "v_proj", "o_proj", "query", "key", "value", "attention.output", "c_attn", "attn.c_proj",
    "gate_proj", "up_proj", "down_proj", "intermediate", "output", "c_fc", "mlp.c_proj",
)  # fmt: skip
_TYPE_RANK = {t: i for i, t in enumerate(TYPE_ORDER)}


def type_sort_key(module_type_name: str) -> tuple[int, int, str]:
    """Sort key for module types: known types in block order, then others alphabetically, embeddings last."""
    if module_type_name in EMBEDDING_TYPES:
        return (2, 0, module_type_name)
    return (0, _TYPE_RANK[module_type_name], "") if module_type_name in _TYPE_RANK else (1, 0, module_type_name)


def is_embedding(module_type_name: str) -> bool:
    return module_type_name in EMBEDDING_TYPES


def is_transposed(model_type: str | None, name: str) -> bool:
    """True for GPT-2 ``Conv1D`` weights, stored as (in, out) rather than nn.Linear's (out, in)."""
    if model_type not in _CONV1D_MODEL_TYPES:
        return False
    leaf = module_path(name).rsplit(".", 1)[-1]
    return leaf in _CONV1D_LEAVES and name.endswith(".weight")


def matches_any(name: str, patterns: list[str]) -> bool:
    """Glob match against the full tensor name or its module type (``*q_proj*``, ``embed``)."""
    mtype = module_type(name)
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(mtype, p) for p in patterns)


def selected(name: str, include: list[str], exclude: list[str]) -> bool:
    """``--include`` (empty means everything) minus ``--exclude``."""
    if include and not matches_any(name, include):
        return False
    return not (exclude and matches_any(name, exclude))


# --- ``svdtool init --targets`` ------------------------------------------------------------------

#: ``--targets`` value meaning every Linear/Conv1D weight inside the transformer blocks (PEFT's "all-linear").
ALL_LINEAR = "all-linear"


def target_matches(module: str, target: str) -> bool:
    """Whether ``--targets`` token ``target`` selects the module at path ``module``.

    PEFT's rule (the path equals the token or ends with ``.`` + token, so ``q_proj`` and
    ``self_attn.q_proj`` both work), or the module's type (:func:`module_type`), so ``query`` or
    ``intermediate`` select BERT's layers and ``attn_q`` a GGUF-named one; a token with glob
    characters is matched against the path and the type (``*attn*``, ``layers.0.*``).
    """
    mtype = module_type(module + ".weight")
    if module == target or module.endswith("." + target) or mtype == target:
        return True
    return any(ch in target for ch in "*?[") and (
        fnmatch.fnmatchcase(module, target) or fnmatch.fnmatchcase(mtype, target)
    )


def _suffix_hits(suffix: str, modules: list[str]) -> set[str]:
    return {m for m in modules if m == suffix or m.endswith("." + suffix)}


def peft_target_modules(chosen: list[str], all_modules: list[str]) -> list[str]:
    """The shortest path suffixes that PEFT's ``target_modules`` matching maps onto exactly ``chosen``.

    ``all_modules`` lists every module PEFT will see (containers included: a suffix that also names
    a container would make PEFT try to wrap it). Llama's q_proj layers give ``["q_proj"]``; BERT's
    ``output.dense`` (which ``attention.output.dense`` also ends with) gives per-layer suffixes.
    """
    want = set(chosen)
    out: set[str] = set()
    for path in chosen:
        parts = path.split(".")
        for k in range(1, len(parts) + 1):
            suffix = ".".join(parts[-k:])
            if _suffix_hits(suffix, all_modules) <= want:
                out.add(suffix)
                break
    return sorted(out)


# ---------------------------------------------------------------- blocks and adapter targets
# A transformer block *module* (no trailing parameter path): "model.layers.3", "transformer.h.0".
_BLOCK_RE = re.compile(r"(?:^|\.)(?:layers|layer|h|blk|block|blocks)\.(\d+)$")


def block_index(module_name: str) -> int | None:
    """The index of a transformer block module (``model.layers.3`` → 3); None for any other module."""
    m = _BLOCK_RE.search(module_name)
    return int(m.group(1)) if m else None


def parse_targets(text: str | None) -> list[str]:
    """``q_proj,v_proj`` → ["q_proj", "v_proj"]; empty or ``all-linear`` → [] (meaning every block matrix)."""
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    return [] if not items or items == [ALL_LINEAR] else items


def is_adapter_target(name: str, targets: list[str]) -> bool:
    """Whether weight ``name`` gets an adapter: a block matrix (not an embedding or head) matched by ``targets``.

    ``targets`` are ``--targets`` tokens, matched as ``init`` matches them (:func:`target_matches`: a path
    suffix, a module type or a glob); an empty list selects all of them.
    """
    if not name.endswith(".weight") or layer_index(name) is None or is_embedding(module_type(name)):
        return False
    module = module_path(name)
    return not targets or any(target_matches(module, t) for t in targets)


# ---------------------------------------------------------------- the Spectrum tool's names
def spectrum_type(module: str) -> str:
    """The Spectrum tool's "type" of a module: the path after the first numeric part, else the whole path.

    ``model.layers.3.self_attn.q_proj`` → ``self_attn.q_proj``; ``model.embed_tokens`` → ``model.embed_tokens``
    (as Spectrum's ``get_weight_types`` and its published ``snr_results_*.json`` files name them).
    """
    parts = module.split(".")
    first = next((i for i, p in enumerate(parts) if p.isdigit()), None)
    return module if first is None else ".".join(parts[first + 1 :])


def spectrum_slug(model_id: str) -> str:
    """Spectrum's and Axolotl's file-name slug of a model id: ``/`` and ``_`` become ``-``."""
    return model_id.replace("/", "-").replace("_", "-")


# ---------------------------------------------------------------- attention heads (the per-head claim reading)
# Module types whose (out, in) weight holds one block per attention head, the config key giving the number of
# heads, and the axis the heads are stacked along: q/k/v stack heads on the output rows, o on the input columns.
# A Keras/JAX Gemma stores exactly these blocks as separate (heads, hidden, head_dim) kernels.
_HEAD_LAYOUT: dict[str, tuple[str, int]] = {
    "q_proj": ("num_attention_heads", 0),
    "k_proj": ("num_key_value_heads", 0),
    "v_proj": ("num_key_value_heads", 0),
    "o_proj": ("num_attention_heads", 1),
    "query": ("num_attention_heads", 0),
    "key": ("num_attention_heads", 0),
    "value": ("num_attention_heads", 0),
    "attention.output": ("num_attention_heads", 1),
}


def head_blocks(name: str, shape: tuple[int, ...], config: dict[str, object] | None) -> tuple[int, int, int] | None:
    """(heads, head_dim, axis) splitting weight ``name`` per attention head, or None when it is no such weight.

    heads and head_dim come from the config as Keras reads them: ``num_key_value_heads`` for k/v (falling
    back to ``num_attention_heads``), ``head_dim`` when given (Gemma-2-9B: 256, not hidden/heads = 224), else
    hidden_size / num_attention_heads. None too when the shape does not hold heads × head_dim on that axis.
    """
    layout = _HEAD_LAYOUT.get(module_type(name))
    if layout is None or not config or len(shape) != 2:
        return None
    key, axis = layout
    heads = config.get(key) or config.get("num_attention_heads")
    all_heads = config.get("num_attention_heads")
    head_dim = config.get("head_dim")
    hidden = config.get("hidden_size")
    if not isinstance(head_dim, int) and isinstance(hidden, int) and isinstance(all_heads, int) and all_heads:
        head_dim = hidden // all_heads
    if not isinstance(heads, int) or not isinstance(head_dim, int) or heads * head_dim != shape[axis]:
        return None
    return heads, head_dim, axis
