"""Two-stage symmetric eigenvalues: dense → band on the GPU, band → eigenvalues with LAPACK. Pure math.

cuSOLVER's one-stage ``syevd`` reduces a dense symmetric matrix to tridiagonal form with matrix–vector
products, so it is bound by memory bandwidth (≈0.12 s for a 4096² float64 matrix on an H100) and one
solve does not overlap another. The two-stage route (Bischof–Lang–Sun's successive band reduction, as in
LAPACK's ``dsytrd_2stage`` and MAGMA) splits the work:

1. :func:`reduce_to_band` — blocked Householder reduction to bandwidth b. Each panel of b columns is
   QR-factored (CholeskyQR2 and a block reflector, ``geqrf`` where that fails its check) and the
   trailing matrix gets the two-sided update QᵀAQ as matrix–matrix products, batched over a stack of
   equal-sized matrices. About 2n³ float64 flops per matrix on tensor cores: milliseconds; on a GPU
   the whole sequence is replayed as one captured CUDA graph.
2. the band's eigenvalues: on a GPU with Triton, :mod:`svdtool.linalg.bulge` chases the band down to tridiagonal
   form and bisects (milliseconds); otherwise :func:`band_eigenvalues` uses LAPACK (``dsbevd`` through
   ``scipy.linalg.eig_banded``): O(n²b) flops in rotations, on one CPU core per matrix, so many matrices
   run side by side while the GPU reduces the next ones.

Every step is an orthogonal similarity in float64, so the eigenvalues keep the backward error of a
one-stage solve: about eps64·‖A‖ each.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from svdtool.linalg import cuda_graphs

if TYPE_CHECKING:
    import torch

#: Default bandwidth of the CPU band route (:mod:`svdtool.linalg.bulge` has its own): the CPU stage costs O(n²b), the
#: GPU stage O(n³/b) in memory traffic; 16 was the fastest end to end on an H100 host with 16 CPU threads.
BANDWIDTH = 16


def reduce_to_band(a: torch.Tensor, b: int | None = None) -> torch.Tensor:
    """The lower band of Qᵀ A Q for symmetric ``a`` (batch, n, n), in LAPACK's lower band storage.

    ``b`` defaults to :data:`BANDWIDTH`. Returns ``band`` (batch, b+1, n) with
    ``band[:, i, j] = (QᵀAQ)[j+i, j]``; rows past the end are 0.
    ``a`` is left as it is. Panels are first factored with CholeskyQR2 (fast, see
    :func:`panel_householder`); if any panel of any matrix was too ill-conditioned for it, the whole
    reduction runs again with ``geqrf`` panels, so the GPU never waits on a per-panel check.
    """
    b = BANDWIDTH if b is None else b
    if a.ndim != 3 or a.shape[-1] != a.shape[-2]:
        raise ValueError(f"expected a stack of square matrices, got shape {tuple(a.shape)}")
    if b < 1:
        raise ValueError(f"bandwidth must be ≥ 1, got {b}")
    # On a GPU the fast reduction is replayed as one captured graph (see svdtool.linalg.cuda_graphs). It may
    # reduce its input slot in place: every replay first copies ``a`` into that slot.
    graphed = cuda_graphs.replay(("band", tuple(a.shape), a.dtype, a.device, b), lambda x: _reduce(x, b, True), [a])
    band, bad = graphed if graphed is not None else _reduce(a.clone(), b, fast=True)
    if not bool(bad):  # the one host synchronisation
        return band
    return _reduce(a.clone(), b, fast=False)[0]


def _reduce(a: torch.Tensor, b: int, fast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce ``a`` in place; returns the band and a device flag, true if a fast panel failed its check."""
    import torch

    batch, n, _ = a.shape
    bad = torch.zeros((), dtype=torch.bool, device=a.device)
    k = 0
    while n - k - b > 1:  # columns k..k+b-1 still have entries below the band
        panel = a[:, k + b :, k : k + b]  # (batch, n-k-b, b): everything below the band in these columns
        v, t, r, failed = panel_householder(panel, fast)  # Qᵀ·panel = [R; 0], Q = I − V T Vᵀ
        bad |= failed
        w = r.shape[1]  # min(n-k-b, b)
        a22 = a[:, k + b :, k + b :]  # (batch, n-k-b, n-k-b), a view updated in place
        # QᵀA₂₂Q = A₂₂ − V Yᵀ − Y Vᵀ with X = A₂₂VT and Y = X − ½ V (Tᵀ Vᵀ X).
        x = torch.bmm(torch.bmm(a22, v), t)  # (batch, n-k-b, w)
        y = x - 0.5 * torch.bmm(v, torch.bmm(t.mT, torch.bmm(v.mT, x)))
        a22.baddbmm_(torch.cat([v, y], 2), torch.cat([y, v], 2).mT, alpha=-1.0)
        panel.zero_()
        panel[:, :w, :] = r  # only the lower triangle is read from here on
        k += b
    band = a.new_zeros((batch, b + 1, n))
    for i in range(min(b, n - 1) + 1):
        band[:, i, : n - i] = torch.diagonal(a, offset=-i, dim1=-2, dim2=-1)
    return band, bad


def panel_householder(
    panel: torch.Tensor, fast: bool = True
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """QR of a stack of panels (batch, m, b) as a block reflector: V (batch, m, w), T (batch, w, w), R (batch, w, b).

    Q = I − V T Vᵀ is orthogonal and Qᵀ·panel = [R; 0]; w = min(m, b). With ``fast``, tall panels take
    CholeskyQR2 plus a reconstructed block reflector (after Ballard et al. 2015): a handful of batched
    matrix products instead of one ``geqrf`` call per matrix, whose fixed cost dominates here. The
    last value is a device flag, true when that route failed its check (the Cholesky Q must be
    orthonormal to ``ORTHOGONALITY``; rank-deficient panels fail), so the caller can redo the work;
    ``geqrf`` panels never fail.
    """
    import torch

    m, b = panel.shape[-2:]
    if fast and m >= 2 * b:
        return _cholqr_householder(panel)
    qr, tau = torch.geqrf(panel)  # Q = H₁…H_w, Hᵢ = I − τᵢvᵢvᵢᵀ
    w = tau.shape[-1]
    v = torch.tril(qr[..., :w], -1)
    v.diagonal(dim1=-2, dim2=-1).fill_(1.0)  # (batch, m, w), unit lower trapezoidal
    never_fails = torch.zeros((), dtype=torch.bool, device=panel.device)
    return v, _compact_wy(v, tau), torch.triu(qr[:, :w, :]), never_fails


#: CholeskyQR2's Q must be orthonormal to this (max |QᵀQ − I|) before its Householder vectors are trusted.
ORTHOGONALITY = 1e-13


def _cholqr_householder(p: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """CholeskyQR2 of p (batch, m, b), then V, T, R of the Householder form, and the failure flag."""
    import torch

    b = p.shape[-1]
    eye = torch.eye(b, dtype=p.dtype, device=p.device)
    q, r = p, eye
    failed = torch.zeros((), dtype=torch.bool, device=p.device)
    for _ in range(2):
        chol, info = torch.linalg.cholesky_ex(q.mT @ q)  # QᵀQ = L Lᵀ, so R = Lᵀ
        failed |= (info != 0).any()
        q = torch.linalg.solve_triangular(chol.mT, q, upper=True, left=False)  # (batch, m, b)
        r = chol.mT @ r
    err = (q.mT @ q - eye).abs().amax()
    failed |= ~(err <= ORTHOGONALITY)  # NaN fails too
    # The block reflector H = I − Y T Yᵀ with Y = [I; 0] − Q·S and T = Y₁⁻ᵀ (Y₁ the top b×b block) is
    # orthogonal (T⁻¹ + T⁻ᵀ = YᵀY because QᵀQ = I) and maps [I; 0] to Q·S; with S = −sign(diag Q₁) the
    # diagonal of Y₁ is 1 + |qᵢᵢ| and never cancels. It is the operator of Ballard et al.'s
    # reconstructed Householder vectors (Y = V·U, T = U V₁⁻ᵀ), without the unpivoted LU they factor it
    # with, which only MAGMA's slow hybrid routine offers on a GPU.
    s = torch.where(q.diagonal(dim1=-2, dim2=-1) >= 0, -1.0, 1.0).to(p.dtype)  # (batch, b)
    y = -q * s.unsqueeze(1)  # (batch, m, b)
    y[:, :b, :] += eye
    y1_inv, info = torch.linalg.inv_ex(y[:, :b, :])
    failed |= (info != 0).any()
    return y, y1_inv.mT, s.unsqueeze(2) * r, failed  # H[:, :b] = Q·S, so Hᵀ·p = [S·R; 0]


def _compact_wy(v: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """T (batch, w, w) upper triangular with H₁…H_w = I − V T Vᵀ.

    Uses T⁻¹ = striu(VᵀV) + diag(1/τ) (Joffrain et al. 2006). A reflector with τ = 0 is the identity:
    its column of V is zeroed (in place) and its diagonal entry set to 1, which removes it exactly.
    """
    import torch

    skip = tau == 0
    v.mul_((~skip).unsqueeze(1).to(v.dtype))
    inv_tau = torch.where(skip, torch.ones_like(tau), 1.0 / torch.where(skip, torch.ones_like(tau), tau))
    t_inv = torch.triu(torch.bmm(v.transpose(1, 2), v), 1) + torch.diag_embed(inv_tau)
    eye = torch.eye(t_inv.shape[-1], dtype=v.dtype, device=v.device).expand_as(t_inv)
    return torch.linalg.solve_triangular(t_inv, eye, upper=True)


def band_eigenvalues(band: np.ndarray) -> np.ndarray:
    """Ascending eigenvalues of one symmetric band matrix in lower band storage, shape (b+1, n)."""
    from scipy.linalg import eig_banded

    out: np.ndarray = eig_banded(band, lower=True, eigvals_only=True, check_finite=False)
    return out.astype(np.float64, copy=False)


def warm_up() -> None:
    """Import the LAPACK wrapper, so a freshly started process is ready for :func:`band_eigenvalues`."""
    from scipy.linalg import eig_banded  # noqa: F401
