"""Result types of ``svdtool init`` (saved as ``DIR/svdtool.json``) and ``svdtool verify``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from svdtool.results.manifest import RunManifest

#: ‖W − (W_res + s·B·A)‖_F / ‖W‖_F allowed per layer, by the residual's dtype. W_res is rounded once
#: to that dtype, so the error is about its unit roundoff (2⁻⁸ bf16, 2⁻¹¹ fp16, 2⁻²⁴ fp32) times
#: ‖W_res‖/‖W‖ ≤ 1, divided by √3 for uniform rounding; the bounds leave a 2–4× margin.
RECONSTRUCTION_TOL: dict[str, float] = {"bf16": 4e-3, "fp16": 5e-4, "fp32": 1e-6, "fp64": 1e-12}
#: ‖logits(residual + adapter) − logits(original)‖_F / ‖logits(original)‖_F allowed, by residual dtype,
#: with both models run in float32. Rounding W_res perturbs every layer a little; a wrong key,
#: scaling or transpose gives errors of order 1.
LOGITS_TOL: dict[str, float] = {"bf16": 5e-2, "fp16": 1e-2, "fp32": 1e-4, "fp64": 1e-6}


@dataclass
class LayerInit:
    """One initialised weight."""

    name: str  # tensor name in the checkpoint
    module: str  # module path in the model (PEFT key stem)
    module_type: str  # q_proj, …
    layer: int | None
    shape: list[int]  # as stored (GPT-2 Conv1D: [in, out])
    transposed: bool  # stored as (in, out) and decomposed as its transpose
    algorithm: str  # gram-cheb | svd64 | randomized | …
    certified_residual: float | None  # maxᵢ ‖W vᵢ − σᵢ uᵢ‖/σ₁ (see svdtool.linalg.factorize)
    sigma: list[float]  # the r singular values the adapter holds
    energy_share: float  # ‖s·B·A‖²_F / ‖W‖²_F
    reconstruction_error: float  # ‖W − (W_res + s·B·A)‖_F / ‖W‖_F with W_res as stored
    topr_error: float | None = None  # randomized only: ‖s·B·A − U_r S_r V_rᵀ‖_F / ‖U_r S_r V_rᵀ‖_F
    seconds: float = 0.0
    rank: int | None = None  # this layer's rank (differs from settings.rank under --rank-alloc)
    alpha: float | None = None  # this layer's α (α·r_l/r keeps s the same)
    extra: dict[str, Any] = field(default_factory=dict)  # method-specific values


@dataclass
class InitSettings:
    method: str
    rank: int
    alpha: float
    use_rslora: bool
    scaling: float  # s = α/r or α/√r
    targets: list[str]  # as asked (``all-linear`` or tokens)
    target_modules: list[str]  # as written to adapter_config.json
    svd: str  # exact | randomized
    oversample: int | None
    niter: int | None
    seed: int
    device: str
    extra: dict[str, Any] = field(default_factory=dict)
    rank_alloc: str = "uniform"  # uniform | energy | coverage | eva (settings.rank is then the mean)
    rank_pattern: dict[str, int] = field(default_factory=dict)  # module path -> rank, as in adapter_config.json
    alpha_pattern: dict[str, float] = field(default_factory=dict)


@dataclass
class InitResult:
    manifest: RunManifest
    settings: InitSettings
    method_summary: str
    paper: str
    frozen: list[str]  # adapter parameters to keep frozen in training, e.g. ["lora_A"]
    adapter_dir: str  # subfolder of DIR, e.g. "pissa_init"
    base_model_name_or_path: str  # what adapter_config.json points at (the residual, absolute)
    model_class: str | None
    task_type: str | None
    residual_dtype: str  # the source's dtype of the target weights
    residual_files: list[str]
    copied_files: list[str]  # config/tokenizer files copied from the source
    layers: list[LayerInit]
    reconstruction_tol: float
    max_reconstruction_error: float
    notes: list[str] = field(default_factory=list)
    # "residual": DIR holds W_res and the adapter belongs on it; "original": only the adapter is written and it
    # belongs on the original model (base_model_name_or_path), which the method left untouched.
    base: str = "residual"
    changes_output: bool = False  # base "original" with s·B·A ≠ 0 at init (LoRA-One): the start is W + s·B·A
    init_lora_weights: bool | str = True  # as written to adapter_config.json
    allocation: dict[str, Any] = field(default_factory=dict)  # --rank-alloc budget, gains (see allocation.py)
    # LoftQ / QPiSSA: the 4-bit load the residual was fitted to (svdtool.quant.load_config); then each layer's
    # reconstruction_error is ‖W − (Q(W_res) + s·B·A)‖/‖W‖ and reconstruction_tol the largest ‖W − Q(W)‖/‖W‖.
    quantization: dict[str, Any] | None = None

    JSON = "svdtool.json"


@dataclass
class VerifyLayer:
    name: str
    module: str
    error: float  # ‖W − (W_res + s·B·A)‖_F / ‖W‖_F
    tol: float
    ok: bool


@dataclass
class LogitsCheck:
    output: str  # logits | last_hidden_state
    prompts: list[str]
    tokens: int
    rel_error: float  # ‖Δ‖_F / ‖original‖_F over all prompts
    max_abs_error: float
    top1_agreement: float | None  # causal LMs: fraction of positions with the same argmax
    tol: float
    ok: bool


@dataclass
class VerifyResult:
    folder: str
    original: str
    method: str
    residual_dtype: str
    layers: list[VerifyLayer]
    untouched_checked: int  # non-target tensors compared bit for bit
    untouched_mismatched: list[str]
    missing: list[str]  # tensors of the original absent from the residual, or adapter keys absent
    logits: LogitsCheck | None
    passed: bool
    versions: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    base: str = "residual"  # as InitResult.base: "original" has no residual to compare
    changes_output: bool = False
