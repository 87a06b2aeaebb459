"""Truncated SVDs of one weight for the SVD-initialised adapters: exact top-r, exact bottom-r, randomized.

Pure math on whatever device the weight lives on: no I/O, nothing printed.

Exact top r (``top_svd``), the default for PiSSA and SVD-LoRA-FA, runs ``gram-cheb``:

1. G = WᵀW (or WWᵀ, on the smaller side k = min(m, n)) in float64: one float64 tensor-core GEMM on
   an H100 (a few ms). Squaring costs accuracy only for the small components, not the top ones.
2. Chebyshev-filtered subspace iteration on G with a block of b = 2r + 32 vectors and Rayleigh–Ritz
   after every filter (:mod:`svdtool.linalg.subspace`), until every top-r Ritz pair has
   ‖G v − θ v‖/(σᵢ σ₁) ≤ tol/4.
3. One Rayleigh–Ritz step on W itself, then *certification*: the returned ``residual`` is
   maxᵢ max(‖W vᵢ − σᵢ uᵢ‖, ‖Wᵀ uᵢ − σᵢ vᵢ‖) / σ₁, computed in float64 from W; above ``tol`` the
   result is not used.

A run that does not converge within ``MAX_PRODUCTS`` products or fails certification, a target with
σ_r below ``GRAM_SAFE_RATIO``·σ₁ (where Gram-based vectors lose accuracy), and small matrices fall
back to ``svd64``, a direct float64 LAPACK/cuSOLVER SVD. The bottom-r path (MiLoRA) always uses it:
minor components need a direct SVD; no Krylov or randomized method finds them.

``randomized_svd`` (PiSSA's ``--svd randomized``) is randomized subspace iteration: a seeded Gaussian
start of r + oversample columns and ``niter`` products with WᵀW (the unit of ``torch.svd_lowrank``'s
niter), applied as Wᵀ(W·) in float32 (callers disable TF32), Chebyshev-accelerated as above, then
Rayleigh–Ritz. It is never certified: its residual is recorded, not bounded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from svdtool.linalg import subspace
from svdtool.linalg.exact import GRAM_SAFE_RATIO

if TYPE_CHECKING:
    import torch

#: Default certification tolerance: residuals below 1e-9·σ₁ are far below float32 resolution.
DEFAULT_TOL = 1e-9
#: On the CPU, LAPACK's direct SVD beats the iteration's overheads up to this min(m, n).
CPU_DIRECT_MAX = 256
#: Most Gram products before the iterative method gives up and falls back to a direct SVD.
MAX_PRODUCTS = 600
#: Largest amplification of the top component over the r-th, and over the block's bottom, between two
#: orthonormalizations, by working precision (times the unit roundoff: the precision a step can lose).
MAX_GROWTH = {8: (1e8, 1e12), 4: (1e3, 1e4)}


@dataclass
class Triplets:
    """r singular triplets of W (m, n): W vᵢ ≈ σᵢ uᵢ. Float64, on W's device."""

    u: torch.Tensor  # (m, r), orthonormal columns
    s: torch.Tensor  # (r,), descending
    vh: torch.Tensor  # (r, n), orthonormal rows
    algorithm: str  # gram-cheb | svd64 | svd64 (fallback: …) | randomized
    residual: float  # maxᵢ max(‖W vᵢ − σᵢuᵢ‖, ‖Wᵀuᵢ − σᵢvᵢ‖) / σ₁(W), float64
    products: int = 0  # block products with G (or W) the iterative methods used
    seed: int | None = None


def block_size(r: int, k: int) -> int:
    """Subspace block for rank r: 2r + 32 vectors, at most k."""
    return min(k, 2 * r + 32)


def _check_rank(shape: tuple[int, ...], r: int) -> None:
    if len(shape) != 2:
        raise ValueError(f"expected a matrix, got shape {tuple(shape)}")
    if not 1 <= r <= min(shape):
        raise ValueError(f"rank {r} is outside 1..{min(shape)} for a {shape[0]}×{shape[1]} matrix")


def certify(w64: torch.Tensor, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor, sigma1: float) -> float:
    """maxᵢ max(‖W vᵢ − σᵢ uᵢ‖, ‖Wᵀ uᵢ − σᵢ vᵢ‖) / σ₁, in float64."""
    if sigma1 <= 0:
        return 0.0
    r1 = (w64 @ vh.T - u * s).norm(dim=0)  # (r,)
    r2 = (w64.T @ u - vh.T * s).norm(dim=0)
    return float(max(r1.max().item(), r2.max().item()) / sigma1)


def svd64(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Economy SVD in float64 (LAPACK gesdd on CPU, cuSOLVER on CUDA): U (m,k), S (k,) desc, Vh (k,n)."""
    import torch

    return torch.linalg.svd(w.to(torch.float64), full_matrices=False)


def _direct(w64: torch.Tensor, r: int, *, top: bool, label: str = "svd64") -> Triplets:
    u, s, vh = svd64(w64)
    sl = slice(0, r) if top else slice(s.shape[0] - r, s.shape[0])
    u, sr, vh = u[:, sl].contiguous(), s[sl].contiguous(), vh[sl].contiguous()
    return Triplets(u, sr, vh, label, certify(w64, u, sr, vh, float(s[0].item())))


def bottom_svd(w: torch.Tensor, r: int) -> Triplets:
    """The r *smallest* singular triplets of the economy SVD (descending among themselves), exact."""
    import torch

    _check_rank(tuple(w.shape), r)
    return _direct(w.detach().to(torch.float64), r, top=False)


def top_svd(
    w: torch.Tensor,
    r: int,
    *,
    algorithm: str = "auto",
    tol: float = DEFAULT_TOL,
    seed: int = 0,
    start: Triplets | None = None,
) -> Triplets:
    """The r largest singular triplets, certified to ``tol``·σ₁ (see the module docstring).

    ``algorithm``: ``auto`` (gram-cheb, or svd64 when the block covers half the matrix or, on the
    CPU, when min(m, n) ≤ ``CPU_DIRECT_MAX``), ``gram-cheb`` or ``svd64``.
    ``start``: optional approximate triplets (e.g. from :func:`randomized_svd`) that seed the block.
    """
    import torch

    _check_rank(tuple(w.shape), r)
    if algorithm not in ("auto", "gram-cheb", "svd64"):
        raise ValueError(f"unknown exact SVD algorithm {algorithm!r}")
    w64 = w.detach().to(torch.float64)
    k = min(w64.shape)
    b = block_size(r, k)
    small = 2 * b > k or (w64.device.type == "cpu" and k <= CPU_DIRECT_MAX)
    if algorithm == "svd64" or (algorithm == "auto" and small):
        return _direct(w64, r, top=True)
    found = _gram_cheb(w64, r, b, tol, seed, start)
    if isinstance(found, str):
        return _direct(w64, r, top=True, label=f"svd64 (fallback: {found})")
    return found


def _small_eigh(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenpairs of a small symmetric float64 matrix, *descending*; solved on the CPU (no GPU latency)."""
    import torch

    hc = h.detach().to("cpu", torch.float64)
    theta, q = torch.linalg.eigh((hc + hc.T) / 2)
    return theta.flip(0).to(h.device), q.flip(1).to(h.device)


def _start_block(k: int, b: int, dtype: torch.dtype, device: torch.device, seed: int) -> torch.Tensor:
    import torch

    gen = torch.Generator(device=device)
    gen.manual_seed(seed)
    return torch.randn(k, b, generator=gen, dtype=dtype, device=device)


def finish(w64: torch.Tensor, side: torch.Tensor, label: str, products: int = 0, seed: int = 0) -> Triplets:
    """Rayleigh–Ritz on W itself for the k×r Gram-side vectors ``side``, then certify in float64."""
    import torch

    tall = w64.shape[0] >= w64.shape[1]
    side, _ = torch.linalg.qr(side.to(torch.float64))  # right vectors (tall) or left vectors (wide)
    prod = w64 @ side if tall else w64.T @ side  # (m, r) or (n, r)
    th2, q2 = _small_eigh(prod.T @ prod)
    s = th2.clamp_min(0).sqrt()
    side, prod = side @ q2, prod @ q2 / s.clamp_min(torch.finfo(torch.float64).tiny)
    u, v = (prod, side) if tall else (side, prod)
    u, vh = u.contiguous(), v.T.contiguous()
    return Triplets(u, s, vh, label, certify(w64, u, s, vh, float(s[0].item())), products, seed)


def _gram_cheb(w64: torch.Tensor, r: int, b: int, tol: float, seed: int, start: Triplets | None) -> Triplets | str:
    """Top-r triplets by Chebyshev-filtered subspace iteration on the float64 Gram matrix, certified;
    a reason string when the caller should use a direct SVD instead."""
    import torch

    op = subspace.GramOp(w64, explicit=True)
    y = _start_block(op.k, b, torch.float64, w64.device, seed)
    if start is not None:
        guess = start.vh.T if op.tall else start.u  # (k, j): vectors on the Gram side
        j = min(b, guess.shape[1])
        y[:, :j] = guess[:, :j].to(y)
    found = subspace.top_eigenspace(
        op, r, y, tol=tol / 4, max_products=MAX_PRODUCTS, max_growth=MAX_GROWTH[8], min_ratio=GRAM_SAFE_RATIO
    )
    del op
    if isinstance(found, str):
        return found
    out = finish(w64, found.x[:, :r], "gram-cheb", found.products, seed)
    return out if out.residual <= tol else f"certified residual {out.residual:.1e} above {tol:g}"


@dataclass
class Eigenpairs:
    """The k largest eigenpairs of a symmetric PSD matrix C (n, n): C vᵢ ≈ λᵢ vᵢ. Float64, on C's device."""

    values: torch.Tensor  # (k,), descending
    vectors: torch.Tensor  # (n, k), orthonormal columns
    algorithm: str  # cheb-eigh | eigh64 | eigh64 (fallback: …)
    residual: float  # maxᵢ ‖C vᵢ − λᵢ vᵢ‖ / λ₁, float64
    products: int = 0


def _full_eigh(c64: torch.Tensor, k: int, label: str) -> Eigenpairs:
    import torch

    lam, q = torch.linalg.eigh(c64)  # ascending
    lam, q = lam.flip(0)[:k].contiguous(), q.flip(1)[:, :k].contiguous()
    return Eigenpairs(lam, q, label, _eigen_residual(c64, lam, q))


def _eigen_residual(c64: torch.Tensor, lam: torch.Tensor, q: torch.Tensor) -> float:
    top = float(lam[0].item()) if lam.numel() else 0.0
    if top <= 0:
        return 0.0
    return float((c64 @ q - q * lam).norm(dim=0).max().item()) / top


def top_eigh(c: torch.Tensor, k: int, *, tol: float = 1e-11, seed: int = 0) -> Eigenpairs:
    """The k largest eigenpairs of a symmetric PSD matrix C (n, n) (a covariance), in float64.

    Chebyshev-filtered subspace iteration on C itself (block 2k + 32, :mod:`svdtool.linalg.subspace`), then
    certification: maxᵢ ‖C vᵢ − λᵢ vᵢ‖ ≤ ``tol``·λ₁, computed from C. A full float64 ``eigh`` instead when C is
    small (the block would cover half of it, or n ≤ ``CPU_DIRECT_MAX`` on a CPU), when λ_k < 1e-12·λ₁, or when the
    iteration fails. Cost: a few dozen (n, n)·(n, b) products, against the O(n³) of a full ``eigh`` (2.3 s for
    n = 11008 on an H200's cuSOLVER, estimated from 0.12 s at 4096).
    """
    import torch

    c64 = c.detach().to(torch.float64)
    c64 = (c64 + c64.T) / 2
    n = c64.shape[0]
    k = min(k, n)
    b = block_size(k, n)
    if 2 * b > n or (c64.device.type == "cpu" and n <= CPU_DIRECT_MAX):
        return _full_eigh(c64, k, "eigh64")
    op = subspace.GramOp.of_gram(c64)
    y = _start_block(n, b, torch.float64, c64.device, seed)
    found = subspace.top_eigenspace(op, k, y, tol=tol / 4, max_products=MAX_PRODUCTS, max_growth=MAX_GROWTH[8],
                                    min_ratio=1e-6)  # fmt: skip
    if isinstance(found, str):
        return _full_eigh(c64, k, f"eigh64 (fallback: {found})")
    q, _ = torch.linalg.qr(found.x[:, :k])
    lam, z = _small_eigh(q.T @ (c64 @ q))  # a final Rayleigh–Ritz on C: λ descending
    q = q @ z
    out = Eigenpairs(lam, q, "cheb-eigh", _eigen_residual(c64, lam, q), found.products)
    if out.residual > tol:
        return _full_eigh(c64, k, f"eigh64 (fallback: certified residual {out.residual:.1e} above {tol:g})")
    return out


def randomized_svd(w: torch.Tensor, r: int, *, oversample: int, niter: int, seed: int) -> Triplets:
    """Top-r triplets by randomized subspace iteration (see the module docstring), float32 products.

    ``niter`` products with WᵀW (at least 1), block r + ``oversample``. Not exact: the returned
    residual (float64, against W) is recorded, not bounded.
    """
    import torch

    _check_rank(tuple(w.shape), r)
    if oversample < 0 or niter < 0:
        raise ValueError("oversample and niter must be ≥ 0")
    w = w.detach()
    w32 = w.to(torch.float32)
    op = subspace.GramOp(w32, explicit=False)
    b = min(op.k, r + oversample)
    y = _start_block(op.k, b, torch.float32, w32.device, seed)
    found = subspace.top_eigenspace(op, r, y, budget=max(1, niter), max_growth=MAX_GROWTH[4])
    if isinstance(found, str):  # a zero matrix: any orthonormal vectors will do
        return _direct(w.to(torch.float64), r, top=True, label="svd64 (zero matrix)")
    return finish(w.to(torch.float64), found.x[:, :r], "randomized", found.products, seed)


def subtract_adapter(w: torch.Tensor, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    """W_res = W − s·B·A in float64 from the factors *as stored*, returned in W's dtype. W: (out, in)."""
    import torch

    delta = lora_b.detach().to(torch.float64) @ lora_a.detach().to(torch.float64)  # (out, in)
    return (w.detach().to(torch.float64) - scaling * delta).to(w.dtype)


def product_distance(a: Triplets, b: Triplets) -> float:
    """‖U_a S_a V_aᵀ − U_b S_b V_bᵀ‖_F / ‖U_b S_b V_bᵀ‖_F without forming either m×n product."""
    cross = ((a.u.T @ b.u) * a.s[:, None] * b.s[None, :] * (a.vh @ b.vh.T)).sum()
    na, nb = (a.s**2).sum(), (b.s**2).sum()
    sq = float((na + nb - 2 * cross).clamp_min(0).item())
    return math.sqrt(sq) / math.sqrt(float(nb.item())) if float(nb.item()) > 0 else 0.0


def gram_eigh(w: torch.Tensor, r: int) -> Triplets:
    """The r largest triplets from a full float64 ``eigh`` of the Gram matrix on the smaller side, then
    Rayleigh–Ritz on W and certification (as :func:`top_svd`). No iteration, so its cost does not depend on
    the spectrum: the choice for flat spectra such as a quantisation error's (σ₁/σ₆₄ ≈ 1.04), where
    subspace iteration converges slowly and a randomized SVD misses about 10 % of the top-r energy."""
    import torch

    from svdtool.linalg.exact import gram64

    _check_rank(tuple(w.shape), r)
    w64 = w.detach().to(torch.float64)
    _, vec = torch.linalg.eigh(gram64(w64, w64.device))  # ascending
    return finish(w64, vec[:, -r:].flip(1), "gram-eigh", 0, 0)
