"""Checkpoints svdtool refuses, each with one line of advice: pickles, inconsistent shards, a config.json
that does not describe the tensors beside it."""

from __future__ import annotations

from collections.abc import Iterable

from svdtool import naming
from svdtool.errors import SvdtoolError
from svdtool.loading.base import TensorInfo

#: Weight files in Python's pickle format, which can run arbitrary code when loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


def pickle_refusal(label: str, found: str) -> SvdtoolError:
    """The refusal for a checkpoint that has only pickle weights (``found``: one of its files)."""
    return SvdtoolError(
        f"{label} holds no safetensors weights, only pickles ({found}); svdtool never loads pickle files, which "
        "can run code. "
        "Convert it once to safetensors: with transformers, AutoModelForCausalLM.from_pretrained(PATH)"
        ".save_pretrained(NEW_PATH, safe_serialization=True) (AutoModel for encoders), or with the "
        "safetensors convert tool (https://huggingface.co/spaces/safetensors/convert) for a Hub repo"
    )


def check_unique(infos: Iterable[TensorInfo], label: str) -> None:
    """Refuse a checkpoint in which one tensor name appears in two shards (or twice in one)."""
    seen: dict[str, str] = {}
    for info in infos:
        if info.name in seen:
            where = f"both {seen[info.name]} and {info.file}" if seen[info.name] != info.file else info.file
            raise SvdtoolError(
                f"{label}: tensor {info.name} is stored twice, in {where}: the shards come from two different "
                "saves (a stale shard from an earlier conversion?); keep only the shards its index names"
            )
        seen[info.name] = info.file


def _first_int(config: dict[str, object], *keys: str) -> int | None:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def check_config_shapes(config: dict[str, object] | None, infos: list[TensorInfo], label: str) -> None:
    """Refuse a ``config.json`` that disagrees with the tensors: embedding (vocab, hidden) and the layer count.

    Loading such a pair fails deep inside transformers; this says which file is wrong, before any work.
    """
    if not config:
        return
    hidden = _first_int(config, "hidden_size", "n_embd", "d_model")
    vocab = _first_int(config, "vocab_size")
    layers = _first_int(config, "num_hidden_layers", "n_layer", "num_layers")
    problems = []
    embeds = [i for i in infos if len(i.shape) == 2 and naming.module_type(i.name) == "embed"]
    if embeds and vocab and hidden and embeds[0].shape != (vocab, hidden):
        e = embeds[0]
        problems.append(f"{e.name} is {list(e.shape)}, config.json says vocab_size {vocab} × hidden size {hidden}")
    found = {idx for i in infos if (idx := naming.layer_index(i.name)) is not None}
    if layers and found and max(found) + 1 != layers:
        problems.append(f"the weights have {max(found) + 1} layers, config.json says {layers}")
    if problems:
        raise SvdtoolError(
            f"{label}: config.json does not match the weights ({'; '.join(problems)}): use the config.json that "
            "was saved with these weights"
        )
