"""Result types of ``svdtool spectrum``."""

from __future__ import annotations

from dataclasses import dataclass, field

from svdtool.results.manifest import RunManifest


@dataclass
class WWMetrics:
    """WeightWatcher 0.7.7's columns, same names and definitions (see svdtool.heavy_tail); λ = σ²."""

    alpha: float  # power-law exponent of the ESD tail (nan when the fit failed)
    xmin: float  # λ where the fitted tail starts
    D: float  # Kolmogorov–Smirnov distance of the fit
    num_pl_spikes: int  # #λ ≥ xmin
    alpha_weighted: float  # α · log10 λ_max
    log_alpha_norm: float  # log10 Σ λᵢ^α
    log_norm: float  # log10 Σλ = log10 ‖W‖_F²
    log_spectral_norm: float  # log10 λ_max = log10 σ₁²
    entropy: float  # WW's normalised σ² entropy, in [0, 1]
    rank_loss: int  # k − numerical rank (float64 eps)
    warning: str  # "over-trained" (α < 2) | "under-trained" (α > 6) | ""
    status: str  # "success" | "failed"


@dataclass
class MPBulk:
    """Marchenko–Pastur bulk from the median σ (see svdtool.mp); not WW's KDE fit."""

    sigma_e: float  # estimated noise standard deviation of the entries
    edge: float  # bulk edge σ_e(√N + √M), in σ units
    spikes: int  # #σ above the edge
    softrank: float  # edge² / σ₁² (WW's mp_softrank in λ units)


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
    # Added with the spectral analytics; None in results written before them.
    ww: WWMetrics | None = None
    mp: MPBulk | None = None
    snr: float | None = None  # the Spectrum tool's SNR (svdtool.snr)
    snr_mp: float | None = None  # MP-correct variant: Σσ above the MP edge / Σσ below


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
    # Means over the group's matrices (finite values only) of alpha, alpha_weighted, log_alpha_norm, log_norm,
    # log_spectral_norm (WW's get_summary names), mp_softrank, snr and snr_mp.
    analytics_mean: dict[str, float] = field(default_factory=dict)


@dataclass
class ClaimFraction:
    """Pooled fraction of σ in [lo, hi] under one normalisation."""

    normalisation: str  # raw | sigma/sigma1 | sigma/sqrt(max(n,m)) | per-head (Keras)
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
    top_percent: int | None = None  # --top-percent: the Spectrum selection written for Axolotl


@dataclass
class SpectrumResult:
    manifest: RunManifest
    options: SpectrumOptions
    matrices: list[MatrixSpectrum]
    by_module_type: list[GroupSummary]
    by_layer: list[GroupSummary]
    claim: ClaimCheck
    skipped: list[SkippedTensor] = field(default_factory=list)
    vectors: list[str] = field(default_factory=list)  # selected 1-D weights (norms): SNR Infinity for Spectrum

    SIDECAR = "spectra.safetensors"
    JSON = "spectrum.json"
