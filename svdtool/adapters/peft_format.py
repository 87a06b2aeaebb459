"""PEFT's on-disk LoRA format: ``adapter_config.json`` and ``adapter_model.safetensors`` key names.

The config says ``init_lora_weights: true`` so that PEFT loads the saved A and B as they are and
does not run its own init (which would subtract the SVD part from the residual a second time). MiCA is the
exception: ``"mica"`` makes PEFT wrap each layer in the variant that keeps B frozen (its own SVD is skipped
when loading with ``low_cpu_mem_usage=True``, and overwritten by the saved B otherwise).
Only fields PEFT has known for many versions are written; PEFT fills in defaults for the rest.
Provenance lives in ``svdtool.json`` beside the residual, not here: PEFT drops unknown keys.
"""

from __future__ import annotations

from typing import Any

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


def adapter_dirname(method: str) -> str:
    """``pissa`` -> ``pissa_init`` (PEFT's and LLaMA-Factory's name for the untrained adapter)."""
    return f"{method.replace('-', '_')}_init"


def lora_key(module: str, which: str) -> str:
    """PEFT's tensor key: ``model.layers.0.mlp.up_proj``, ``A`` ->
    ``base_model.model.model.layers.0.mlp.up_proj.lora_A.weight``."""
    return f"base_model.model.{module}.lora_{which}.weight"


def adapter_config(
    *,
    rank: int,
    alpha: float,
    use_rslora: bool,
    target_modules: list[str],
    task_type: str | None,
    base_model: str,
    fan_in_fan_out: bool,
    revision: str | None = None,
    init_lora_weights: bool | str = True,
    rank_pattern: dict[str, int] | None = None,
    alpha_pattern: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A LoRA ``adapter_config.json`` for an already initialised adapter (on its residual, or on the original).

    ``init_lora_weights`` is True except for MiCA ("mica": PEFT ≥ 0.20 must wrap the layers in its variant).
    ``rank_pattern``/``alpha_pattern`` map full module paths to per-layer r and α (``--rank-alloc``).
    """
    return {
        "peft_type": "LORA",
        "task_type": task_type,
        "base_model_name_or_path": base_model,
        "revision": revision,
        "inference_mode": False,
        "r": rank,
        "lora_alpha": _number(alpha),
        "use_rslora": use_rslora,
        "lora_dropout": 0.0,
        "target_modules": target_modules,
        "fan_in_fan_out": fan_in_fan_out,
        "bias": "none",
        "init_lora_weights": init_lora_weights,
        "use_dora": False,
        "modules_to_save": None,
        "layers_to_transform": None,
        "layers_pattern": None,
        "rank_pattern": dict(rank_pattern or {}),
        "alpha_pattern": {k: _number(v) for k, v in (alpha_pattern or {}).items()},
    }


def _number(x: float) -> int | float:
    return int(x) if float(x).is_integer() else float(x)


def scaling_of(config: dict[str, Any], module: str | None = None) -> float:
    """PEFT's s for ``module``: α/r (α/√r with rsLoRA), r and α taken from the patterns when they name it."""
    r = int((config.get("rank_pattern") or {}).get(module, config["r"]))
    alpha = float((config.get("alpha_pattern") or {}).get(module, config["lora_alpha"]))
    return alpha / (r**0.5 if config.get("use_rslora") else r)
