"""The Triton kernel of :mod:`svdtool.linalg.bulge`: one time step of the band-to-tridiagonal bulge chase.

Imported only when the GPU route runs (it imports Triton at the top). Storage, for each matrix m of
the batch: ``ab[m, c, d] = A[c + d, c]`` (lower band storage, row length ``ld`` ≥ 2b, room for the
bulges); ``v[m, s, slot, :]`` and ``tau[m, s, slot]`` hold sweep s's current reflector, in two slots so
that a task reads the reflector of the previous task and writes its own in different places.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _house(x, i):
    """Householder reflector I − τ·v·vᵀ with v[0] = 1 mapping x to β·e₀ (LAPACK's dlarfg, no rescaling).

    x (BLOCK,) is zero past its length; so is v. A vector that is already β·e₀ gives τ = 0.
    """
    alpha = tl.sum(tl.where(i == 0, x, 0.0), axis=0)
    xn2 = tl.sum(tl.where(i > 0, x * x, 0.0), axis=0)
    norm = tl.sqrt(alpha * alpha + xn2)
    trivial = xn2 == 0.0
    beta = tl.where(trivial, alpha, tl.where(alpha >= 0.0, -norm, norm))
    tau = tl.where(trivial, 0.0, (beta - alpha) / tl.where(trivial, 1.0, beta))
    scale = 1.0 / tl.where(trivial, 1.0, alpha - beta)
    v = tl.where(i == 0, 1.0, tl.where(trivial, 0.0, x * scale))
    return v, tau, beta


@triton.jit
def _load_sym(base, st, ln, ld, i):
    """The symmetric block A[st:st+ln, st:st+ln] as a full (BLOCK, BLOCK) tile, zero outside."""
    r = i[:, None]
    c = i[None, :]
    lo = tl.minimum(r, c)
    off = tl.maximum(r, c) - lo
    return tl.load(base + (st + lo) * ld + off, mask=(r < ln) & (c < ln), other=0.0)


@triton.jit
def _store_sym(base, d, st, ln, ld, i):
    r = i[:, None]
    c = i[None, :]
    tl.store(base + (st + c) * ld + (r - c), d, mask=(r >= c) & (r < ln))


@triton.jit
def _larfy(d, v, tau):
    """H·D·H for symmetric D and H = I − τ·v·vᵀ (LAPACK's dlarfy)."""
    w = tau * tl.sum(d * v[None, :], axis=1)
    a = -0.5 * tau * tl.sum(w * v, axis=0)
    w = w + a * v
    return d - v[:, None] * w[None, :] - w[:, None] * v[None, :]


@triton.jit
def bulge_step(ab_ptr, v_ptr, tau_ptr, t, n, ld, BW: tl.constexpr, BLOCK: tl.constexpr):
    """All tasks of time step t: task (s, k) of sweep s runs at t = 3s + k (see svdtool.linalg.bulge)."""
    m = tl.program_id(0)
    s = tl.minimum(t // 3, n - 3) - tl.program_id(1)
    k = t - 3 * s
    if (s >= 0) & (k <= (n - 2 - s) // BW):
        i = tl.arange(0, BLOCK)
        base = ab_ptr + m * n * ld
        vrow = v_ptr + (m * n + s) * 2 * BLOCK
        trow = tau_ptr + (m * n + s) * 2
        if k == 0:
            # Annihilate column s below its subdiagonal, then H·D·H on the diagonal block after it.
            ln = tl.minimum(BW, n - 1 - s)
            col = base + s * ld + 1 + i  # A[s+1+i, s]
            x = tl.load(col, mask=i < ln, other=0.0)
            v, tau, beta = _house(x, i)
            tl.store(col, tl.where(i == 0, beta, 0.0), mask=i < ln)
            d = _larfy(_load_sym(base, s + 1, ln, ld, i), v, tau)
            _store_sym(base, d, s + 1, ln, ld, i)
            tl.store(vrow + i, v)
            tl.store(trow, tau)
        else:
            # The previous task's reflector acts on columns st..ed; rows j1..j2 below them hold the bulge.
            st = s + 1 + (k - 1) * BW
            ed = tl.minimum(s + k * BW, n - 1)
            j1 = ed + 1
            lem = tl.minimum(ed + BW, n - 1) - j1 + 1
            slot = (k + 1) % 2
            v = tl.load(vrow + slot * BLOCK + i)  # zero past its length
            tau = tl.load(trow + slot)
            r = i[:, None]
            c = i[None, :]
            ptrs = base + (st + c) * ld + (j1 + r - st - c)  # B[r, c] = A[j1+r, st+c]
            mask = (r < lem) & (c <= ed - st)
            b = tl.load(ptrs, mask=mask, other=0.0)
            b = b - tau * tl.sum(b * v[None, :], axis=1)[:, None] * v[None, :]  # B·H
            v2, tau2, beta = _house(tl.sum(tl.where(c == 0, b, 0.0), axis=1), i)  # the bulge's first column
            b = tl.where(c == 0, tl.where(r == 0, beta, 0.0), b)
            wb = tl.sum(v2[:, None] * b, axis=0)
            b = tl.where(c > 0, b - tau2 * v2[:, None] * wb[None, :], b)  # H₂·B on the other columns
            tl.store(ptrs, b, mask=mask)
            d = _larfy(_load_sym(base, j1, lem, ld, i), v2, tau2)
            _store_sym(base, d, j1, lem, ld, i)
            tl.store(vrow + (k % 2) * BLOCK + i, v2)
            tl.store(trow + k % 2, tau2)


@triton.jit
def sturm_bisect(
    d_ptr, e2_ptr, lo_ptr, hi_ptr, pivmin_ptr, out_ptr, N: tl.constexpr, ITERS: tl.constexpr, BLOCK: tl.constexpr
):
    """Eigenvalues j = BLOCK·program_id(1) + lane of tridiagonal m = program_id(0), by bisection.

    Sturm count: the number of eigenvalues below x is the number of negative pivots q_i of T − x·I =
    L·diag(q)·Lᵀ, q_0 = d_0 − x, q_i = d_i − x − e²_{i−1}/q_{i−1} (LAPACK's dlaebz, with |q| ≥ pivmin).
    Each lane keeps count(lo) ≤ j < count(hi) and halves [lo, hi] ``ITERS`` times.
    """
    m = tl.program_id(0)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    pivmin = tl.load(pivmin_ptr + m)
    lo = tl.zeros((BLOCK,), dtype=tl.float64) + tl.load(lo_ptr + m)
    hi = tl.zeros((BLOCK,), dtype=tl.float64) + tl.load(hi_ptr + m)
    d_row = d_ptr + m * N
    e_row = e2_ptr + m * N  # e2[m, i] = e²_{i−1}, e2[m, 0] = 0
    for _ in range(ITERS):
        x = lo + 0.5 * (hi - lo)
        q = tl.zeros((BLOCK,), dtype=tl.float64) + 1.0
        count = tl.zeros((BLOCK,), dtype=tl.int32)
        for i in range(N):
            q = tl.load(d_row + i) - x - tl.load(e_row + i) / q
            q = tl.where(tl.abs(q) < pivmin, -pivmin, q)
            count += (q < 0.0).to(tl.int32)
        above = count > j  # λ_j < x
        hi = tl.where(above, x, hi)
        lo = tl.where(above, lo, x)
    tl.store(out_ptr + m * N + j, lo + 0.5 * (hi - lo), mask=j < N)
