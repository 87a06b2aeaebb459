"""CorDA: Context-oriented Decomposition Adaptation (Yang et al., NeurIPS 2024, arXiv 2406.05223).

Inputs: the weight W (out, in) and the input covariance C (in, in) of that layer on calibration data,
built as PEFT's ``preprocess_corda`` builds it (:mod:`svdtool.statistics`): one sample per forward
pass, X (T, in) of each sample scaled by 1/|max X| (the signed maximum's absolute value), then
C = mean over samples of X̃ᵀX̃. Then, as ``peft/tuners/lora/corda.py::collect_eigens_for_layer``:

    ridge:  C_d = C + d·mean(diag C)·I, d = 0.01, doubled until ‖C_d·C_d⁻¹ − I‖_F < 0.05
            (the test runs in float32, as PEFT runs it, so the same d is chosen)
    SVD:    W·C_d = U S Vhᵀ (float64: Gram eigh, certified, else a direct SVD),  V = (Vh·C_d⁻¹)ᵀ  (in, k)
    IPM:    keep the first r components (instruction-previewed: the largest)
    KPM:    keep the last r components (knowledge-preserved: the smallest; float64 needed)
    split:  A = diag(√(S_r/s))·V_rᵀ (r, in),  B = U_r·diag(√(S_r/s)) (out, r)   (PEFT's corda_init)
    W_res = W − s·B·A = W − U_r S_r V_rᵀ        (float64, from the stored float32 factors)

Since Σᵢ Uᵢ Sᵢ Vᵢᵀ = W·C_d·C_d⁻¹ = W, the adapter holds the part of W that the calibration context
excites most (IPM) or least (KPM). A is not orthonormal. s·B·A equals PEFT's for the same C and d.

Options in ``InitOptions.extra``: ``corda_mode`` (ipm | kpm, default ipm).
"""

from __future__ import annotations

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
    """PEFT's damping factor d for C (in, in): float32 inverse and test, exactly as ``collect_eigens_for_layer``."""
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


def corda_triplets(w: torch.Tensor, cov: torch.Tensor, r: int, mode: str) -> tuple[factorize.Triplets, float]:
    """(U_r, S_r, V_rᵀ) of W·C_d with V = C_d⁻¹·Vh ᵀ, in float64, and the ridge d."""
    import torch

    if mode not in MODES:
        raise SvdtoolError(f"--corda-mode {mode!r}: expected ipm or kpm")
    n = w.shape[1]
    if tuple(cov.shape) != (n, n):
        raise SvdtoolError(f"CorDA covariance has shape {list(cov.shape)}, expected [{n}, {n}]")
    d = ridge(cov)
    c64 = cov.to(device=w.device, dtype=torch.float64)
    c_d = c64 + torch.eye(n, dtype=torch.float64, device=w.device) * (torch.diagonal(c64).mean() * d)  # (in, in)
    wc = w.to(torch.float64) @ c_d  # (out, in)
    t = wc_triplets(wc, r, mode)
    v_r = torch.linalg.solve(c_d, t.vh.T)  # (in, r) = C_d⁻¹·Vhᵀ, C_d symmetric
    return factorize.Triplets(t.u, t.s, v_r.T.contiguous(), t.algorithm, t.residual), d


def wc_triplets(wc: torch.Tensor, r: int, mode: str) -> factorize.Triplets:
    """The first (IPM) or last (KPM) r singular triplets of W·C_d, float64.

    ``eigh`` of the Gram matrix on the smaller side, then Rayleigh–Ritz on W·C_d and certification
    (:func:`svdtool.linalg.factorize.certify`, relative to σ₁ of W·C_d); a direct float64 SVD when that fails
    (components far below σ₁·1e-8, where the squared Gram loses them). A full SVD costs ~10× more.
    """
    import torch

    tall = wc.shape[0] >= wc.shape[1]
    gram = wc.T @ wc if tall else wc @ wc.T  # (k, k), k = min(out, in)
    lam, q = torch.linalg.eigh((gram + gram.T) / 2)  # ascending
    k = lam.shape[0]
    side = q[:, k - r :].flip(1) if mode == "ipm" else q[:, :r].flip(1)  # descending σ among themselves
    t = factorize.finish(wc, side, "gram-eigh64(W·C)")
    sigma1 = float(lam[-1].clamp_min(0).sqrt().item())
    t.residual = factorize.certify(wc, t.u, t.s, t.vh, sigma1)
    if t.residual <= CERTIFY_TOL:
        return t
    u, s, vh = factorize.svd64(wc)
    sl = slice(0, r) if mode == "ipm" else slice(k - r, k)
    u_r, s_r, vh_r = u[:, sl].contiguous(), s[sl].contiguous(), vh[sl].contiguous()
    return factorize.Triplets(u_r, s_r, vh_r, "svd64(W·C)", factorize.certify(wc, u_r, s_r, vh_r, float(s[0])))


def corda(w: torch.Tensor, opts: InitOptions, *, statistics: Any = None, **_: Any) -> LoraInit:
    """CorDA init of one weight W (out, in) from its input covariance C (in, in), ``statistics``."""
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
    )
)
