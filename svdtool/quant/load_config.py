"""The trainer's 4-bit load settings an init was fitted to, as data and as the ``BitsAndBytesConfig``
(transformers) that reproduces them. No torch, no I/O."""

from __future__ import annotations

from typing import Any

#: svdtool dtype codes → torch dtype names.
TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def quantization_record(
    *, quant: str, double_quant: bool, iters: int, backend: str, dtype: str, ratios: list[float]
) -> dict[str, Any]:
    """What ``svdtool.json`` keeps under ``quantization``: settings, the load config, and ratio statistics."""
    ordered = sorted(ratios)
    return {
        "quant_type": quant,
        "blocksize": 64,
        "double_quant": double_quant,
        "iters": iters,
        "backend": backend,
        "load_dtype": dtype,
        "bnb_config": bnb_config(quant, double_quant, dtype),
        "max_ratio": ordered[-1] if ordered else None,
        "median_ratio": ordered[len(ordered) // 2] if ordered else None,
    }


def bnb_config(quant: str, double_quant: bool, dtype: str) -> dict[str, Any]:
    """``BitsAndBytesConfig`` keyword arguments (torch dtypes by name)."""
    name = TORCH_DTYPES.get(dtype, dtype)
    return {
        "load_in_4bit": True,
        "bnb_4bit_quant_type": quant,
        "bnb_4bit_use_double_quant": double_quant,
        "bnb_4bit_compute_dtype": name,
        "bnb_4bit_quant_storage": "uint8",
    }


def bnb_config_python(record: dict[str, Any]) -> str:
    """The Python expression of the recorded ``BitsAndBytesConfig``."""
    c = record["bnb_config"]
    return (
        "BitsAndBytesConfig(\n"
        "    load_in_4bit=True,\n"
        f'    bnb_4bit_quant_type="{c["bnb_4bit_quant_type"]}",\n'
        f"    bnb_4bit_use_double_quant={c['bnb_4bit_use_double_quant']},\n"
        f"    bnb_4bit_compute_dtype=torch.{c['bnb_4bit_compute_dtype']},\n"
        ")"
    )
