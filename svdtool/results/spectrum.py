"""Result types of ``svdtool spectrum``."""

from __future__ import annotations

from dataclasses import dataclass, field

from svdtool.results.manifest import RunManifest


@dataclass
class MatrixSpectrum:
    """Metrics of one 2-D weight. σ₁ ≥ … ≥ σ_k, k = min(rows, cols)."""

    name: str
    module_type: str  # q_proj, …, embed, lm_head, other
    layer: int | None
    shape: list[int]  # as stored: [rows, cols]
    dtype: str  # source dtype (bf16, fp16, fp32, or the GGUF quant type)
    method: str  # algorithm that produced σ (see svdtool.linalg)
    count: int  # k, number of singular values
    sigma_max: float
    sigma_min: float
    frobenius: float  # √Σσ²
    nuclear: float  # Σσ
    stable_rank: float  # ‖W‖_F² / σ₁²
    effective_rank: float  # Roy–Vetterli: exp(H(σ/Σσ))
    condition_number: float  # σ₁/σ_k, inf when numerically rank-deficient
    numerical_rank: int  # #{σ > σ₁·max(n,m)·eps}
    energy_at_rank: dict[str, float]  # "r" -> Σ_{i≤r} σᵢ² / Σσ²
    rank_for_energy: dict[str, int]  # "0.5" -> min r with energy ≥ 0.5
    in_range: int  # #{σ ∈ [lo, hi]} (raw σ)
    in_range_fraction: float
    seconds: float


@dataclass
class GroupSummary:
    """Aggregate over a group of matrices (one module type, or one layer)."""

    key: str
    matrices: int
    singular_values: int
    sigma_max_mean: float
    stable_rank_mean: float
    effective_rank_mean: float
    energy_at_rank_mean: dict[str, float]
    in_range_fraction: float  # pooled over all σ of the group


@dataclass
class ClaimFraction:
    """Pooled fraction of σ in [lo, hi] under one normalisation."""

    normalisation: str  # raw | sigma/sigma1 | sigma/sqrt(max(n,m))
    with_embeddings: float
    without_embeddings: float
    count_with: int
    count_without: int
    per_matrix_mean_with: float  # the unpooled view: mean over matrices of each matrix's fraction
    per_matrix_mean_without: float


@dataclass
class ClaimCheck:
    """The public claim: ≥ ``claimed`` of all singular values lie in [lo, hi]."""

    lo: float
    hi: float
    claimed: float
    fractions: list[ClaimFraction]
    by_module_type: dict[str, float]  # raw σ, pooled per module type
    counted: list[str]  # matrices pooled (with embeddings)
    embeddings: list[str]  # which of them count as embeddings
    holds_with_embeddings: bool
    holds_without_embeddings: bool
    verdict: str


@dataclass
class SkippedTensor:
    name: str
    shape: list[int]
    reason: str
    # Elements that are NaN / +Inf / −Inf, for a matrix skipped because it has any (else all 0).
    nan: int = 0
    pos_inf: int = 0
    neg_inf: int = 0

    @property
    def nonfinite(self) -> bool:
        return bool(self.nan or self.pos_inf or self.neg_inf)


@dataclass
class SpectrumOptions:
    ranks: list[int]
    lo: float
    hi: float
    include: list[str]
    exclude: list[str]
    device: str


@dataclass
class SpectrumResult:
    manifest: RunManifest
    options: SpectrumOptions
    matrices: list[MatrixSpectrum]
    by_module_type: list[GroupSummary]
    by_layer: list[GroupSummary]
    claim: ClaimCheck
    skipped: list[SkippedTensor] = field(default_factory=list)

    SIDECAR = "spectra.safetensors"
    JSON = "spectrum.json"
