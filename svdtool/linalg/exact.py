"""Exact singular values of one matrix, fast, on the CPU or a GPU. Pure math: no I/O.

The default method, ``gram64``, forms the Gram matrix on the smaller side in float64 (the weight is
cast to float64 *before* the product, chunk by chunk, and TF32 plays no part in float64 products)
and takes ``sqrt(eigvalsh(G))``. Its error is about eps64·σ₁²/(2σᵢ) per value, so values down to
``GRAM_SAFE_RATIO``·σ₁ keep a relative error near 1e-8 or better.

Smaller values are recomputed rather than trusted:

* square matrices: ``gram64+inv64`` refines the few small values by subspace iteration on
  (WᵀW)⁻¹ with float64 LU solves, from a seeded random block, and Rayleigh–Ritz on W·Q;
  the iteration converges fastest exactly where the Gram matrix is least accurate;
* otherwise (rectangular, singular, or many small values): ``svd64``, a direct float64 SVD.

Every call returns the name of the method that produced the values, for the run manifest.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from svdtool.linalg import cuda_graphs

if TYPE_CHECKING:
    import torch

#: Below this fraction of σ₁, Gram-based values are recomputed by a method that is accurate there.
GRAM_SAFE_RATIO = 1e-4
#: Float64 elements per chunk when forming a Gram matrix (bounds the float64 working copy).
CHUNK_ELEMENTS = 1 << 25  # 256 MiB of float64


def gram64(w: torch.Tensor, device: torch.device, chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """G = WᵀW (cols ≤ rows) or WWᵀ (rows < cols) in float64 on ``device``; (k, k), k = min(shape).

    W may live on any device and in any float dtype; each chunk is moved and cast to float64 before
    it is multiplied, so only one float64 chunk exists at a time.
    """
    import torch

    rows, cols = w.shape
    tall = rows >= cols
    k = cols if tall else rows
    long = rows if tall else cols
    step = max(1, chunk_elements // k)
    g = torch.zeros((k, k), dtype=torch.float64, device=device)
    for start in range(0, long, step):
        part = w[start : start + step] if tall else w[:, start : start + step].T  # (step, k)
        part64 = part.to(device=device, dtype=torch.float64, non_blocking=True)
        g.addmm_(part64.T, part64)  # (k, step) @ (step, k)
    return g


def _sqrt_desc(lam: np.ndarray) -> np.ndarray:
    # Eigenvalues come ascending; tiny negative ones are rounding noise around 0.
    return np.sqrt(np.clip(np.asarray(lam, dtype=np.float64), 0.0, None))[::-1].copy()


def svdvals64(w: torch.Tensor, device: torch.device) -> np.ndarray:
    """Direct float64 singular values, descending. Slow but accurate to eps64·σ₁ for every value."""
    import torch

    s = torch.linalg.svdvals(w.to(device=device, dtype=torch.float64))
    return s.cpu().numpy().astype(np.float64, copy=False)


def singular_values(w: torch.Tensor, device: torch.device, refine: bool = True) -> tuple[np.ndarray, str]:
    """All singular values of a 2-D weight, descending, float64, with the method that computed them.

    ``refine=False`` keeps the Gram values below ``GRAM_SAFE_RATIO``·σ₁ (see :func:`finish_from_gram`).

    Everything runs on ``device``; a GPU's eigen-solve here is cuSOLVER's one-stage ``syevd``
    (:mod:`svdtool.engine.band_pool` shares the work with CPU cores instead).
    """
    import torch

    if w.ndim != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(w.shape)}")
    if w.numel() == 0:
        return np.zeros(0), "empty"
    lam = torch.linalg.eigvalsh(gram64(w, device))
    return finish_from_gram(w, lam.cpu().numpy(), device, "gram64", refine)


def finish_from_gram(
    w: torch.Tensor, lam: np.ndarray, device: torch.device, method: str, refine: bool = True
) -> tuple[np.ndarray, str]:
    """Singular values of W from the ascending eigenvalues ``lam`` of its Gram matrix (see :func:`gram64`).

    Values below ``GRAM_SAFE_RATIO``·σ₁ are recomputed: by :func:`_refine_smallest` for a square W,
    else by a direct float64 SVD. ``method`` names the eigen-solver, for the manifest.

    ``refine=False`` keeps them as they are: each σᵢ² is then exact to about eps64·σ₁² *absolute*, which
    is all that sums of σ² (energies, coverage) need, while σᵢ itself loses relative accuracy below
    ``GRAM_SAFE_RATIO``·σ₁. The method is then suffixed ``+unrefined`` where such values exist.
    """
    sigma = _sqrt_desc(lam)
    s1 = sigma[0]
    small = int(np.count_nonzero(sigma < GRAM_SAFE_RATIO * s1)) if s1 > 0 else 0
    if small == 0:
        return sigma, method
    if not refine:
        return sigma, method + "+unrefined"
    rows, cols = w.shape
    if rows == cols and small <= max(8, rows // 8):
        refined = _refine_smallest(w, small, device)
        if refined is not None:
            out = sigma.copy()
            out[-small:] = refined
            return out, method + "+inv64"
    return svdvals64(w, device), "svd64"


#: Inverse-iteration steps allowed before the refinement gives up and a direct SVD runs instead.
MAX_INVERSE_STEPS = 12
#: Steps taken together (one graph replay on a GPU) before the first convergence check.
FIRST_STEPS = 4
#: Least block width: one shape, so one captured graph, for every matrix with m ≤ 8 small values.
REFINE_BLOCK = 24


def _refine_smallest(w: torch.Tensor, m: int, device: torch.device) -> np.ndarray | None:
    """The m smallest singular values of a square W, accurate where the Gram matrix is not.

    Subspace iteration on (WᵀW)⁻¹ = W⁻¹W⁻ᵀ (two LU solves per step), then Rayleigh–Ritz: the singular
    values of W·Q (n, p), from a seeded Gaussian block of p = max(2m + 8, 24) columns. Each step shrinks
    the unwanted components by (σⱼ/σ_{p+1})², so the m-th value converges like (σ_m/σ_{p+1})⁴ per step
    (the small values of a square matrix sit near the hard edge, roughly evenly spaced, hence p ≈ 2m or
    more); no eigenvectors of the Gram matrix are needed, which keeps the eigen-solves value-only. The
    values are checked after each step from the fourth on (the first four run as one CUDA graph on a
    GPU); the loop stops once the m values agree to 1e-12 (or the float64 floor of the small SVD)
    between two steps. Returns None if W is singular or the values do not settle.
    """
    import torch

    n = w.shape[0]
    p = min(n, max(2 * m + 8, REFINE_BLOCK))
    w64 = w.to(device=device, dtype=torch.float64)
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn((n, p), generator=gen, dtype=torch.float64, device=device)  # (n, p)
    first = cuda_graphs.replay(("refine", n, p, device), _first_steps, [w64, q]) or _first_steps(w64, q)
    info, lu, piv, q, rs = first
    if int(info.item()) != 0:
        return None
    previous = None
    rs_host = list(rs.cpu().numpy())  # FIRST_STEPS × (p, p)
    for step in range(MAX_INVERSE_STEPS):
        if step < FIRST_STEPS:
            r = rs_host[step]
        else:
            q, r_dev = _inverse_step(w64, lu, piv, q)
            r = r_dev.cpu().numpy()
        if not np.isfinite(r).all():  # a numerically singular W
            return None
        values = np.linalg.svd(r, compute_uv=False)  # (p,), descending: σ(W·Q) = σ(R)
        ritz = values[-m:]  # the m smallest
        # Settled: relative change ≤ 1e-12, above the floor eps·‖WQ‖ of the small (n, p) SVD itself.
        floor = 8 * np.finfo(np.float64).eps * values[0]
        if previous is not None and np.all(np.abs(ritz - previous) <= 1e-12 * ritz + floor):
            return ritz.astype(np.float64)
        previous = ritz
    return None


def _first_steps(w64: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """LU of W, then FIRST_STEPS steps from q: (info, lu, pivots, q, R of each step (FIRST_STEPS, p, p))."""
    import torch

    lu, piv, info = torch.linalg.lu_factor_ex(w64)
    rs = []
    for _ in range(FIRST_STEPS):
        q, r = _inverse_step(w64, lu, piv, q)
        rs.append(r)
    return info, lu, piv, q, torch.stack(rs)


def _inverse_step(
    w64: torch.Tensor, lu: torch.Tensor, piv: torch.Tensor, q: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step: Q ← orth((WᵀW)⁻¹Q), and R of W·Q = Q'R, whose singular values are σ(W·Q)."""
    import torch

    y = torch.linalg.lu_solve(lu, piv, q, adjoint=True)  # Wᵀ y = q
    z = torch.linalg.lu_solve(lu, piv, y)  # W z = y, so z = (WᵀW)⁻¹ q
    q, _ = torch.linalg.qr(z)  # (n, p)
    # A small QR on the device, then a (p, p) SVD on the host: cheaper than a device SVD of the
    # (n, p) matrix and just as accurate.
    return q, torch.linalg.qr(w64 @ q, mode="r")[1]
