"""Band → tridiagonal on a GPU by bulge chasing, then the tridiagonal's eigenvalues. Pure math: no I/O.

The second stage of the two-stage eigen-solve (:mod:`svdtool.linalg.band` is the first). A symmetric band
matrix of bandwidth b (n × n) is reduced to tridiagonal form T = Qᵀ·A·Q by Householder reflectors of
length ≤ b, as in PLASMA/MAGMA's ``hbtype1/2/3`` kernels (Haidar, Ltaief, Dongarra 2011):

* sweep s (s = 0 … n−3) annihilates column s below its subdiagonal: task (s, 0) builds the reflector
  H₀ on rows s+1…s+b and applies H₀·D·H₀ to the diagonal block D = A[s+1:s+b+1, s+1:s+b+1];
* task (s, k ≥ 1) applies the previous reflector from the right to the block B (b × b) below it, which
  creates a bulge, builds a reflector H_k from B's first column (rows j1 = s+kb+1 … j1+b−1), applies it
  from the left to B's other columns, and H_k·D·H_k to the next diagonal block. Only the first column
  of each bulge is removed; the rest belongs to later sweeps, so entries up to 2b−1 below the diagonal
  must be stored.

Task (s, k) touches rows and columns s+1+(k−1)b … s+(k+1)b only, so tasks of different sweeps three
steps apart never touch the same entry: every task with 3s + k = t runs at time step t, in parallel
(one Triton program each, ⌈n/3b⌉ per matrix, all matrices of the batch at once). A 4096² matrix takes
≈ 3n = 12,288 steps; on a GPU the whole sequence is captured once per shape and replayed as a CUDA
graph. Every step is an orthogonal similarity in float64: the eigenvalues keep a backward error of a
few eps64·‖A‖, like LAPACK's ``dsbtrd``. The tridiagonal's eigenvalues then come from bisection on Sturm
counts (:func:`eigenvalues`, LAPACK's ``dstebz`` method), one GPU lane per eigenvalue.
"""

from __future__ import annotations

import contextlib
import os
from typing import TYPE_CHECKING

from svdtool.linalg import cuda_graphs

if TYPE_CHECKING:
    import torch

#: Bandwidth of the first stage when the GPU chases the bulges: the chase costs about the same at 16 and 32
#: (3 and 4.5 ms per 4096² matrix in batches of 16 on an H100) while the reduction to the band is cheaper at
#: 32 (11 against 18 ms); at 64 the chase's larger tiles cost more (12 ms) than the reduction saves (7 ms).
BANDWIDTH = 32
#: ``SVDTOOL_GPU_BULGE=0`` keeps the band-to-tridiagonal step on the CPU (LAPACK ``dsbevd`` per band).
ENABLED = os.environ.get("SVDTOOL_GPU_BULGE", "1") != "0"


_checked: dict[str, bool] = {}


def available(device: torch.device) -> bool:
    """Whether the GPU route runs on ``device``: CUDA, Triton installed, and both kernels compile and agree
    with a known spectrum (checked once per device, on a 6 × 6 band, so a broken Triton setup falls back
    to the CPU band route instead of failing the run)."""
    if not ENABLED or device.type != "cuda":
        return False
    key = str(device)
    if key not in _checked:
        _checked[key] = _self_test(device)
    return _checked[key]


def _self_test(device: torch.device) -> bool:
    import torch

    try:
        import triton  # noqa: F401

        # diag(1…6) + 0.5 on the first two subdiagonals, against LAPACK on the CPU.
        band = torch.zeros((1, 3, 6), dtype=torch.float64)
        band[0, 0] = torch.arange(1.0, 7.0, dtype=torch.float64)
        band[0, 1, :5] = band[0, 2, :4] = 0.5
        dense = torch.diag(band[0, 0]) + torch.diag(band[0, 1, :5], -1) + torch.diag(band[0, 2, :4], -2)
        ref = torch.linalg.eigvalsh(dense + torch.tril(dense, -1).T)
        got = eigenvalues(*_chase(band.to(device))).cpu()[0]
        return bool(torch.allclose(got, ref, rtol=0.0, atol=1e-12))
    except Exception:  # no Triton, no compiler, an unsupported GPU: the CPU route serves instead
        return False


def steps(n: int, b: int) -> int:
    """Time steps of the chase for an n × n band of bandwidth b ≥ 2.

    Task (s, k) runs at step 3s + k, and 3s + k_max(s) grows with s, so the last task is the last sweep's
    only one, (n−3, 0), at step 3(n−3).
    """
    if n < 3 or b < 2:
        return 0
    return 3 * (n - 3) + 1


def tridiagonalize(band: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Diagonal (batch, n) and subdiagonal (batch, n−1) of T = QᵀAQ for a stack of bands.

    ``band`` is (batch, b+1, n) in LAPACK's lower band storage (``band[:, i, j] = A[j+i, j]``, as
    :func:`svdtool.linalg.band.reduce_to_band` returns it), float64, on a CUDA device (or on the CPU under
    ``TRITON_INTERPRET=1``, for tests). It is left as it is.
    """
    import torch

    if band.ndim != 3 or band.dtype != torch.float64:
        raise ValueError(f"expected a (batch, b+1, n) float64 stack of bands, got {tuple(band.shape)} {band.dtype}")
    if band.device.type == "cuda":
        key = ("bulge", tuple(band.shape), band.device)
        graphed = cuda_graphs.replay(key, _chase, [band])
        if graphed is not None:
            return graphed[0], graphed[1]
    return _chase(band)  # reads ``band`` only


def _on(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Triton launches on the *current* CUDA device: make it the tensors' device (``cuda:1`` and so on)."""
    import torch

    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _chase(band: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    import triton

    from svdtool.linalg.bulge_kernel import bulge_step

    batch, b1, n = band.shape
    b = b1 - 1
    ld = 2 * b + 1  # entries 0 … 2b−1 below the diagonal, plus one spare column that stays 0
    ab = band.new_zeros((batch, n, ld))  # ab[m, c, i] = A[c+i, c]
    ab[:, :, :b1] = band.transpose(1, 2)
    block = max(2, triton.next_power_of_2(b))
    v = band.new_zeros((batch, n, 2, block))
    tau = band.new_zeros((batch, n, 2))
    grid = (batch, (n - 2) // max(b, 1) // 3 + 2)  # ≥ the number of sweeps active in one step
    warps = max(1, min(8, block * block // 256))
    with _on(band.device):
        for t in range(steps(n, b)):
            bulge_step[grid](ab, v, tau, t, n, ld, BW=b, BLOCK=block, num_warps=warps)
    d = ab[:, :, 0].contiguous()
    e = ab[:, : n - 1, 1].contiguous() if b >= 1 else ab.new_zeros((batch, max(n - 1, 0)))
    return d, e


#: Bisection steps: Gershgorin's interval (width ≤ 4‖T‖) halved 64 times is below float64's resolution of ‖T‖.
BISECTION_STEPS = 64


def eigenvalues(d: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
    """Ascending eigenvalues (batch, n) of symmetric tridiagonals, diagonals d (batch, n), subdiagonals e.

    Bisection on Sturm counts, one lane per eigenvalue (LAPACK's ``dstebz`` on a GPU): each eigenvalue
    to an absolute error of a few eps64·‖T‖, the backward error of the reductions before it.
    """
    import torch
    import triton

    from svdtool.linalg.bulge_kernel import sturm_bisect

    batch, n = d.shape
    if n == 0:
        return d.clone()
    e2 = torch.zeros_like(d)
    e2[:, 1:] = e * e
    # Gershgorin bounds, widened so that every count at the ends is exact.
    off = torch.zeros_like(d)
    off[:, 1:] += e.abs()
    off[:, :-1] += e.abs()
    lo, hi = (d - off).amin(1), (d + off).amax(1)
    norm = torch.maximum(lo.abs(), hi.abs())
    pad = 2 * n * torch.finfo(torch.float64).eps * norm + torch.finfo(torch.float64).tiny
    lo, hi = (lo - pad).contiguous(), (hi + pad).contiguous()
    # LAPACK's pivmin: the least pivot magnitude, so that no division by (almost) zero can overflow.
    pivmin = torch.finfo(torch.float64).tiny * e2.amax(1).clamp_min(1.0)
    out = torch.empty_like(d)
    block = 128
    grid = (batch, triton.cdiv(n, block))
    args = (d.contiguous(), e2, lo, hi, pivmin, out)
    with _on(d.device):
        sturm_bisect[grid](*args, N=n, ITERS=BISECTION_STEPS, BLOCK=block, num_warps=4)
    return out
