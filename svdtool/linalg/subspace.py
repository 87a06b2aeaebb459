"""Chebyshev-filtered subspace iteration with Rayleigh–Ritz, for the top eigenpairs of G = WᵀW (or WWᵀ).

Pure math, no I/O. :mod:`svdtool.linalg.factorize` drives it in two modes:

* exact: G formed in float64, iterate until every top-r Ritz pair has a residual ‖G v − θ v‖/(σᵢσ₁)
  below a tolerance;
* randomized: G applied implicitly as Wᵀ(W·) in float32, for a fixed budget of products.

Each outer step filters the block X by T_d(A), A = (2/c)·G − I, which maps [0, c] onto [−1, 1]
(c = θ_b, the smallest Ritz value of the block): components above c grow like T_d(2λ/c − 1), i.e.
exponentially in d·√gap, instead of (λ/λ_b)^d for plain powers. Then one more product and a
Rayleigh–Ritz step on the filtered block. The degree is capped so that the top component cannot
outgrow the r-th (and the block's bottom) by more than ``max_growth`` between two orthonormalizations:
that ratio, times the unit roundoff, is the precision each step can lose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

#: Highest Chebyshev degree per filter.
MAX_DEGREE = 24


class GramOp:
    """y ↦ G·y for G = WᵀW (m ≥ n) or WWᵀ (m < n): k = min(m, n). Explicit G (one big GEMM up front,
    cheap products after) or implicit (two products with W each time)."""

    def __init__(self, w: torch.Tensor, explicit: bool) -> None:
        m, n = w.shape
        self.tall = m >= n
        self.k = min(m, n)
        self.w = w
        self.g = (w.T @ w if self.tall else w @ w.T) if explicit else None

    @classmethod
    def of_gram(cls, g: torch.Tensor) -> GramOp:
        """The operator of an explicit symmetric positive semi-definite G (k, k), such as a covariance."""
        op = cls.__new__(cls)
        op.tall, op.k, op.w, op.g = True, g.shape[0], g, g
        return op

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        if self.g is not None:
            return self.g @ y
        return self.w.T @ (self.w @ y) if self.tall else self.w @ (self.w.T @ y)

    def step(self, prev: torch.Tensor, cur: torch.Tensor, alpha: float) -> torch.Tensor:
        """alpha·G·cur − prev, fused into one GEMM when G is explicit."""
        import torch

        if self.g is not None:
            return torch.addmm(prev, self.g, cur, beta=-1, alpha=alpha)
        return self(cur).mul_(alpha).sub_(prev)


@dataclass
class Ritz:
    theta: list[float]  # Ritz values of the block, descending (b)
    x: torch.Tensor  # (k, b) Ritz vectors, orthonormal columns
    products: int  # block products with G used
    err: float  # max top-r residual ‖Gv − θv‖/(σᵢσ₁) at the last check (nan when not checked)


def _degree(theta: list[float], r: int, err: float, tol: float | None, max_growth: tuple[float, float]) -> int:
    """Degree of the next filter: enough to reach ``tol``, and capped so that T_d(x₁)/T_d(x_r) and
    T_d(x₁) (the top component against the r-th and against the block's bottom, where T_d = 1) stay
    within ``max_growth``: beyond that the lower columns of the block lose their information."""
    t1, tr, c = theta[0], theta[r - 1], theta[-1]
    x1, xr = 2 * t1 / c - 1, 2 * tr / c - 1
    g1 = math.acosh(x1) if x1 > 1 else 0.0
    gr = math.acosh(xr) if xr > 1 else 0.0
    d = MAX_DEGREE
    if tol is not None and gr > 0 and math.isfinite(err):
        d = min(d, math.ceil(math.log(max(2 * err / tol, 2.0)) / gr) + 1)  # just enough to reach tol
    if g1 > gr:
        d = min(d, int(math.log(max_growth[0]) / (g1 - gr)))
    if g1 > 0:
        d = min(d, int(math.log(2 * max_growth[1]) / g1))
    return max(1, d)


def _chebyshev(op: GramOp, x: torch.Tensor, gx: torch.Tensor, d: int, c: float, x1: float) -> torch.Tensor:
    """T_d(A)·x by T_{j+1} = 2A·T_j − T_{j−1}; d − 1 products. Both terms are rescaled together (the
    recurrence is linear) long before the values could overflow."""
    import torch

    prev, cur = x, gx * (2 / c) - x
    growth = math.acosh(max(x1, 1.0)) + math.log(2)  # log of a per-step growth bound
    log_size = growth
    limit = 30.0 if x.dtype.itemsize == 4 else 300.0
    for _ in range(d - 1):
        nxt = op.step(prev, cur, 4 / c).sub_(cur, alpha=2)
        prev, cur = cur, nxt
        log_size += growth
        if log_size > limit:
            factor = math.exp(-log_size + growth)
            prev, cur = prev * factor, cur * factor
            log_size = growth
    return cur / cur.abs().amax().clamp_min(torch.finfo(cur.dtype).tiny)  # unit scale for what follows


def rayleigh_ritz(y: torch.Tensor, gy: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ritz pairs of G on span(y), given gy = G·y: (θ descending, x = y·C, G·x) with xᵀx = I.

    The small generalised problem (yᵀGy)·c = θ·(yᵀy)·c is solved in float64 on the CPU through a
    Cholesky factor of yᵀy, so one transfer replaces a QR and an eigensolver on the GPU. When yᵀy is
    too ill-conditioned for that, y is orthonormalized by Householder QR first.
    """
    import torch

    tiny = torch.finfo(y.dtype).tiny
    norms = y.norm(dim=0).clamp_min(tiny)
    y, gy = y / norms, gy / norms
    small = torch.stack([y.T @ y, y.T @ gy]).to("cpu", torch.float64)  # (2, b, b): one transfer
    m, k = small[0], (small[1] + small[1].T) / 2
    chol, info = torch.linalg.cholesky_ex(m)
    diag = chol.diagonal()
    limit = 1e-6 if y.dtype == torch.float64 else 1e-2
    if int(info.item()) != 0 or float(diag.min()) < limit * float(diag.max()):
        q, rr = torch.linalg.qr(y)  # y = q·rr, so G·q = gy·rr⁻¹
        gq = torch.linalg.solve_triangular(rr, gy, upper=True, left=False)
        return rayleigh_ritz(q, gq)
    eye = torch.eye(m.shape[0], dtype=m.dtype)
    linv = torch.linalg.solve_triangular(chol, eye, upper=False)  # L⁻¹: L⁻¹·M·L⁻ᵀ = I
    h = linv @ k @ linv.T
    theta, z = torch.linalg.eigh((h + h.T) / 2)
    c = (linv.T @ z).flip(1).to(device=y.device, dtype=y.dtype)
    return theta.flip(0), y @ c, gy @ c


def top_eigenspace(
    op: GramOp,
    r: int,
    y: torch.Tensor,
    *,
    tol: float | None = None,
    budget: int | None = None,
    max_products: int = 600,
    max_growth: tuple[float, float] = (1e8, 1e12),
    min_ratio: float = 0.0,
) -> Ritz | str:
    """Iterate from the start block y (k, b) until the top-r residuals are ≤ ``tol`` (exact mode) or
    ``budget`` products are spent (randomized mode). Returns a reason string when it gives up: no
    convergence in ``max_products``, a zero operator, or σ_r < ``min_ratio``·σ₁."""
    import torch

    gy = op(y)
    products = 1
    while True:
        theta_t, x, gx = rayleigh_ritz(y, gy)
        theta = [max(t, 0.0) for t in theta_t.tolist()]
        if theta[0] <= 0:
            return "zero matrix"
        sig1 = math.sqrt(theta[0])
        if theta[r - 1] < (min_ratio * sig1) ** 2:
            return f"σ_r < {min_ratio:g}·σ₁"
        err = math.nan
        if tol is not None:
            th = torch.tensor(theta[:r], dtype=x.dtype, device=x.device)
            res = (gx[:, :r] - x[:, :r] * th).norm(dim=0) / (th.sqrt().clamp_min(1e-300) * sig1)
            err = float(res.max().item())
            if err <= tol:
                return Ritz(theta, x, products, err)
            if products >= max_products:
                return f"no convergence in {products} products"
        left = max_products - products if budget is None else budget - products
        if left <= 0:
            return Ritz(theta, x, products, err)
        c = max(theta[-1], theta[0] * 1e-12)
        d = min(left, _degree([t if t > 0 else c for t in theta], r, err, tol, max_growth))
        y = _chebyshev(op, x, gx, d, c, 2 * theta[0] / c - 1)
        gy = op(y)
        products += d
