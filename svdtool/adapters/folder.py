"""The small files of an init folder: adapter config, ``svdtool.json``, README card, and the source's
config/tokenizer files."""

from __future__ import annotations

import json
from pathlib import Path

from svdtool.adapters.card import render_card
from svdtool.adapters.output import AUX_PATTERNS
from svdtool.adapters.peft_format import ADAPTER_CONFIG, adapter_config
from svdtool.loading import Checkpoint, parse_model_spec
from svdtool.results.base import atomic_write_bytes, dumps
from svdtool.results.init import InitResult


def write_folder(result: InitResult, tmp: Path, folder_name: str | None = None) -> None:
    """Write ``<adapter>/adapter_config.json``, ``svdtool.json`` and ``README.md`` into the staged folder.

    ``folder_name``: how the card names DIR (default: the residual's folder, which DIR is).
    """
    s = result.settings
    config = adapter_config(
        rank=s.rank,
        alpha=s.alpha,
        use_rslora=s.use_rslora,
        target_modules=s.target_modules,
        task_type=result.task_type,
        base_model=result.base_model_name_or_path,
        fan_in_fan_out=any(layer.transposed for layer in result.layers),
        revision=_base_revision(result),
        init_lora_weights=result.init_lora_weights,
        rank_pattern=s.rank_pattern,
        alpha_pattern=s.alpha_pattern,
    )
    text = json.dumps(config, indent=2) + "\n"
    atomic_write_bytes(tmp / result.adapter_dir / ADAPTER_CONFIG, text.encode())
    atomic_write_bytes(tmp / InitResult.JSON, dumps(result).encode())
    name = folder_name or Path(result.base_model_name_or_path).name
    atomic_write_bytes(tmp / "README.md", render_card(result, name).encode())


def _base_revision(result: InitResult) -> str | None:
    """An adapter on the original Hub model is pinned to the commit it was computed from."""
    m = result.manifest
    return m.sha if result.base == "original" and m.source_kind.startswith("hub") else None


def aux_source(ckpt: Checkpoint, token: str | None) -> Path:
    """A local folder holding the source's config and tokenizer files (downloaded for Hub repos)."""
    meta = ckpt.meta
    root = getattr(ckpt, "root", None)
    if meta.kind in ("folder", "file") and isinstance(root, Path):
        return root
    parsed = parse_model_spec(meta.description)
    if parsed is None:
        raise ValueError(f"cannot locate the files of {meta.description}")
    # The weights were read already (from the cache, or streamed): fetch only the small files.
    from svdtool.loading.hub import snapshot_files

    folder, _ = snapshot_files(parsed[0], meta.sha, token, AUX_PATTERNS, weights=False)
    return folder
