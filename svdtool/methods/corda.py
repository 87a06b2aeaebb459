"""CorDA: Context-oriented Decomposition Adaptation (Yang et al., NeurIPS 2024, arXiv 2406.05223).

Inputs: the weight W (out, in) and the input covariance C (in, in) of that layer on calibration data,
built as PEFT's ``preprocess_corda`` builds it (:mod:`svdtool.statistics`): one sample per forward
pass, X (T, in) of each sample scaled by 1/|max X| (the signed maximum's absolute value), then
C = mean over samples of X̃ᵀX̃. Then, as ``peft/tuners/lora/corda.py::collect_eigens_for_layer``:

    ridge:  C_d = C + d·mean(diag C)·I, d = 0.01, doubled until ‖C_d·C_d⁻¹ − I‖_F < 0.05
            (the test runs in float32 on C's device, as PEFT runs it, so the same d is chosen)
    SVD:    W·C_d = U S Vhᵀ (float64, certified: IPM subspace iteration, KPM Gram eigh; else a direct SVD),
            V = (Vh·C_d⁻¹)ᵀ  (in, k)
            (C_d⁻¹·Vhᵀ from the LU factorisation of C_d: a solve, never an inverse)
    IPM:    keep the first r components (instruction-previewed: the largest)
    KPM:    keep the last r components (knowledge-preserved: the smallest; float64 needed)
    split:  A = diag(√(S_r/s))·V_rᵀ (r, in),  B = U_r·diag(√(S_r/s)) (out, r)   (PEFT's corda_init)
    W_res = W − s·B·A = W − U_r S_r V_rᵀ        (float64, from the stored float32 factors)

Since Σᵢ Uᵢ Sᵢ Vᵢᵀ = W·C_d·C_d⁻¹ = W, the adapter holds the part of W that the calibration context
excites most (IPM) or least (KPM). A is not orthonormal. s·B·A equals PEFT's for the same C and d.

The ridge d, C_d and its LU factorisation depend on the input only, not on W: :func:`prepare` computes them
once (a :class:`CordaInput`), and the targets that read one input (q/k/v, gate/up) share them. ``statistics``
is either C (prepared here, for this W alone) or a :class:`CordaInput`; the numbers are the same.

Options in ``InitOptions.extra``: ``corda_mode`` (ipm | kpm, default ipm).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from svdtool.errors import SvdtoolError
from svdtool.linalg import factorize
from svdtool.methods import register
from svdtool.methods.base import InitOptions, LoraInit, MethodSpec
from svdtool.methods.pissa import sqrt_split

if TYPE_CHECKING:
    import torch

MODES = ("ipm", "kpm")
#: PEFT's ridge: start, acceptance bound on ‖C_d·C_d⁻¹ − I‖_F, and a cap on the doublings (2⁶⁰·0.01 is absurd).
RIDGE_START, RIDGE_TOL, RIDGE_MAX_DOUBLINGS = 0.01, 0.05, 60
#: Gram-side triplets of W·C_d are kept when certified to this (relative to σ₁), else a direct SVD runs.
CERTIFY_TOL = 1e-10


def ridge(cov: torch.Tensor) -> float:
    """PEFT's damping factor d for C (in, in): float32 inverse and test, exactly as ``collect_eigens_for_layer``,
    on C's device (PEFT runs it where its covariance lives: the model's device).

    Each doubling costs PEFT's float32 ``inv`` (LU 2/3·n³ + n right-hand sides 2·n³) and the product C_d·C_d⁻¹
    (2·n³): ≈ 4.7·n³ flops. Nothing of it can be skipped or reused without changing the float32 number that is
    compared with 0.05, so the gain is in running it once per input (:func:`prepare`) and on the device.
    """
    import torch

    c32 = cov.to(torch.float32)
    n = c32.shape[0]
    eye = torch.eye(n, dtype=torch.float32, device=c32.device)
    mean_diag = torch.mean(torch.diag(c32))
    d = RIDGE_START
    for _ in range(RIDGE_MAX_DOUBLINGS):
        fixed = c32 + torch.diag(torch.ones(n, dtype=torch.float32, device=c32.device) * mean_diag * d)
        try:
            inv = torch.linalg.inv(fixed)
        except RuntimeError:  # exactly singular (e.g. a zero covariance): more ridge cannot help a zero diagonal
            inv = None
        if inv is not None and torch.dist(fixed @ inv, eye).item() < RIDGE_TOL:
            return d
        if not float(mean_diag.item()) > 0:
            break
        d *= 2
    raise SvdtoolError(
        "CorDA: the calibration covariance cannot be regularised (it is zero or not finite): "
        "use more, longer or more varied --calib samples"
    )


@dataclass
class CordaInput:
    """The per-input part of CorDA, the same for every target that reads this input (q/k/v, gate/up).

    ``lu``/``pivots`` are the factors ``torch.linalg.solve(c_d, ·)`` computes (of C_d, or of C_dᵀ solved with
    ``adjoint``, depending on the torch build: :func:`solve_factorises_transpose`), so :meth:`solve` returns
    exactly the numbers ``torch.linalg.solve(c_d, rhs)`` returns.
    """

    ridge: float  # PEFT's d
    c_d: torch.Tensor  # (in, in) float64, C + d·mean(diag C)·I
    lu: torch.Tensor  # (in, in) float64, LU factors of C_d (or C_dᵀ)
    pivots: torch.Tensor  # (in,) int32
    adjoint: bool  # the factors are of C_dᵀ

    @property
    def width(self) -> int:
        return int(self.c_d.shape[0])

    def solve(self, rhs: torch.Tensor) -> torch.Tensor:
        """C_d⁻¹·rhs (in, k): two triangular solves, 2·in²·k flops."""
        import torch

        return torch.linalg.lu_solve(self.lu, self.pivots, rhs, adjoint=self.adjoint)


#: device type -> whether torch.linalg.solve factorises Aᵀ of a contiguous A (see solve_factorises_transpose).
_SOLVE_TRANSPOSES: dict[str, bool] = {}


def solve_factorises_transpose(device: torch.device) -> bool:
    """Whether ``torch.linalg.solve(A, B)`` of a contiguous A factorises Aᵀ and solves with ``adjoint=True``
    (how torch long did it, saving a copy) rather than A itself (torch 2.13 on the CPU).

    Told by the LU that ``solve`` returns for a 3×3 probe whose LU and that of its transpose differ. Were that
    internal op gone, A itself is factorised: the same solution, to rounding.
    """
    import torch

    if device.type not in _SOLVE_TRANSPOSES:
        probe = torch.tensor([[1.0, 2.0, 0.0], [3.0, 1.0, 1.0], [0.0, 5.0, 2.0]], dtype=torch.float64, device=device)
        try:
            lu = torch.ops.aten._linalg_solve_ex(probe, torch.eye(3, dtype=torch.float64, device=device))[1]
        except (AttributeError, RuntimeError):
            lu = torch.linalg.lu_factor(probe).LU
        _SOLVE_TRANSPOSES[device.type] = not torch.equal(lu, torch.linalg.lu_factor(probe).LU)
    return _SOLVE_TRANSPOSES[device.type]


def prepare(cov: torch.Tensor, device: torch.device) -> CordaInput:
    """PEFT's ridge d, C_d (float64) and the LU of C_d for the covariance C (in, in), on ``device``.

    Flops: the ridge ≈ 4.7·in³ float32 per doubling tried, the LU 2/3·in³ float64; memory: C_d and its LU,
    2·in²·8 bytes.
    """
    import torch

    c64 = cov.to(device=device, dtype=torch.float64)  # (in, in)
    if c64.ndim != 2 or c64.shape[0] != c64.shape[1]:
        raise SvdtoolError(f"CorDA covariance has shape {list(cov.shape)}: expected a square matrix")
    d = ridge(c64)
    n = c64.shape[0]
    c_d = c64 + torch.eye(n, dtype=torch.float64, device=device) * (torch.diagonal(c64).mean() * d)  # (in, in)
    del c64
    adjoint = solve_factorises_transpose(c_d.device)
    lu, pivots = torch.linalg.lu_factor(c_d.mT if adjoint else c_d)
    return CordaInput(d, c_d, lu, pivots, adjoint)


def corda_triplets(
    w: torch.Tensor, cov: torch.Tensor | CordaInput, r: int, mode: str
) -> tuple[factorize.Triplets, float]:
    """(U_r, S_r, V_rᵀ) of W·C_d with V = C_d⁻¹·Vh ᵀ, in float64, and the ridge d."""
    import torch

    if mode not in MODES:
        raise SvdtoolError(f"--corda-mode {mode!r}: expected ipm or kpm")
    n = w.shape[1]
    shape = (cov.width, cov.width) if isinstance(cov, CordaInput) else tuple(cov.shape)
    if shape != (n, n):
        raise SvdtoolError(f"CorDA covariance has shape {list(shape)}, expected [{n}, {n}]")
    inp = cov if isinstance(cov, CordaInput) else prepare(cov, w.device)
    wc = w.to(torch.float64) @ inp.c_d  # (out, in)
    t = wc_triplets(wc, r, mode)
    v_r = inp.solve(t.vh.T)  # (in, r) = C_d⁻¹·Vhᵀ, C_d symmetric
    return factorize.Triplets(t.u, t.s, v_r.T.contiguous(), t.algorithm, t.residual), inp.ridge


def wc_triplets(wc: torch.Tensor, r: int, mode: str) -> factorize.Triplets:
    """The first (IPM) or last (KPM) r singular triplets of W·C_d, float64, certified to ``CERTIFY_TOL``·σ₁.

    IPM: :func:`svdtool.linalg.factorize.top_svd` (Chebyshev-filtered subspace iteration on the float64 Gram,
    a few (k, k)·(k, 2r + 32) products instead of a full k³ ``eigh``; its own direct-SVD fallback).
    KPM: ``eigh`` of the Gram matrix on the smaller side, Rayleigh–Ritz on W·C_d and certification
    (:func:`svdtool.linalg.factorize.certify`); a direct float64 SVD when that fails (components far below
    σ₁·1e-8, where the squared Gram loses them). A full SVD costs ~10× more.
    """
    import torch

    if mode == "ipm":
        return factorize.top_svd(wc, r, tol=CERTIFY_TOL)
    tall = wc.shape[0] >= wc.shape[1]
    gram = wc.T @ wc if tall else wc @ wc.T  # (k, k), k = min(out, in)
    lam, q = torch.linalg.eigh((gram + gram.T) / 2)  # ascending
    k = lam.shape[0]
    t = factorize.finish(wc, q[:, :r].flip(1), "gram-eigh64(W·C)")  # descending σ among themselves
    sigma1 = float(lam[-1].clamp_min(0).sqrt().item())
    t.residual = factorize.certify(wc, t.u, t.s, t.vh, sigma1)
    if t.residual <= CERTIFY_TOL:
        return t
    u, s, vh = factorize.svd64(wc)
    u_r, s_r, vh_r = u[:, k - r :].contiguous(), s[k - r :].contiguous(), vh[k - r :].contiguous()
    return factorize.Triplets(u_r, s_r, vh_r, "svd64(W·C)", factorize.certify(wc, u_r, s_r, vh_r, float(s[0])))


def corda(w: torch.Tensor, opts: InitOptions, *, statistics: Any = None, **_: Any) -> LoraInit:
    """CorDA init of one weight W (out, in) from its input covariance C (in, in), or from C already prepared
    (:func:`prepare`, shared by the targets of one input), ``statistics``."""
    if statistics is None:
        raise SvdtoolError("CorDA needs the input covariance of every target (pass --calib)")
    mode = str(opts.extra.get("corda_mode", "ipm"))
    t, d = corda_triplets(w, statistics, opts.rank, mode)
    out = sqrt_split(w, t, opts)
    out.meta.update({"corda_mode": mode, "ridge": d})
    return out


SPEC = register(
    MethodSpec(
        name="corda",
        fn=corda,
        summary="adapter from the SVD of W·C (C: the calibration input covariance, PEFT's ridge), first r "
        "components (IPM) or last r (KPM), A = √(S/s)·(C⁻¹V)ᵀ, B = U·√(S/s); W_res = W − s·B·A",
        paper="Yang et al. CorDA: Context-Oriented Decomposition Adaptation of Large Language Models for "
        "Task-Aware Parameter-Efficient Fine-tuning. NeurIPS 2024, arXiv 2406.05223",
        statistic="corda",
        prepare=prepare,
    )
)
