"""Single-pass randomized SVD from streamed sketches (Tropp, Yurtsever, Udell, Cevher 2017).

For a matrix G (m, n) that arrives as a sum of pieces, keep two linear sketches

    Y = G Ω   (m, k)   range sketch,     Ω (n, k) Gaussian
    W = Ψ G   (l, n)   co-range sketch,  Ψ (l, m) Gaussian, l ≥ k

and recover (their Algorithm 7 with the fixed-rank truncation of §5.3):

    Q = orth(Y);   X = (Ψ Q)⁺ W  (k, n);   G ≈ Q X;   [[X]]_t = U_x S V_xᵀ  ⇒  G_t ≈ (Q U_x) S V_xᵀ.

Both sketches are linear in G, so each backward pass folds its piece δᵀX_in without ever forming it:
G Ω += δᵀ (X_in Ω) and Ψ G += (Ψ δᵀ) X_in (see :mod:`svdtool.gradients.fold`). Pure math, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


@dataclass
class LowRankGradient:
    """The top-t singular triplets of a gradient: G ≈ U diag(S) Vh, singular values descending."""

    U: torch.Tensor  # (out, t), orthonormal columns
    S: torch.Tensor  # (t,)
    Vh: torch.Tensor  # (t, in), orthonormal rows
    source: str = "sketch"  # how the triplets were computed: sketch | randomized | svd64

    @property
    def shape(self) -> tuple[int, int]:
        return int(self.U.shape[0]), int(self.Vh.shape[1])

    @property
    def rank(self) -> int:
        return int(self.S.shape[0])

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> LowRankGradient:
        """Moved and/or cast, like ``Tensor.to`` (so callers can treat it like a dense gradient)."""
        u, s, vh = (x.to(device=device, dtype=dtype) for x in (self.U, self.S, self.Vh))
        return LowRankGradient(u, s, vh, self.source)

    @property
    def T(self) -> LowRankGradient:  # noqa: N802 - mirrors Tensor.T
        """The factors of Gᵀ = V S Uᵀ."""
        return LowRankGradient(self.Vh.T, self.S, self.U.T, self.source)

    def contiguous(self) -> LowRankGradient:
        return LowRankGradient(self.U.contiguous(), self.S.contiguous(), self.Vh.contiguous(), self.source)


def sketch_sizes(t: int, m: int, n: int, oversample: int = 8) -> tuple[int, int]:
    """(k, l) for a rank-t recovery of an (m, n) matrix: k = oversample·t (≥ t+8), l = 2k + 1, capped by the shape.

    Tropp et al. recommend k ≥ 2t+1 and l = 2k+1; the extra range columns buy accuracy of the *last* of the t
    vectors, which LoRA-GA uses (the ArB2r split takes singular vectors r+1 … 2r).
    """
    k = min(max(oversample * t, t + 8), m, n)
    l_ = min(2 * k + 1, m)
    return k, max(l_, k)


def gaussian(rows: int, cols: int, seed: int) -> torch.Tensor:
    """A seeded standard Gaussian test matrix in float32 on the CPU (identical on every machine)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, cols, generator=gen, dtype=torch.float32)


def recover(y: torch.Tensor, w: torch.Tensor, psi: torch.Tensor, t: int) -> LowRankGradient:
    """Top-t factors of G from Y = GΩ (m, k), W = ΨG (l, n) and the Ψ (l, m) that was used. float64 inside."""
    import torch

    y64, w64, psi64 = y.double(), w.double(), psi.double()
    q, _ = torch.linalg.qr(y64)  # (m, k)
    core = torch.linalg.lstsq(psi64 @ q, w64).solution  # (k, n) = (ΨQ)⁺ W
    ux, s, vh = torch.linalg.svd(core, full_matrices=False)
    t = min(t, int(s.shape[0]))
    return LowRankGradient((q @ ux[:, :t]).float(), s[:t].float(), vh[:t].float())


def principal_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles between the column spaces of ``a`` and ``b`` (same row count), descending."""
    import torch

    qa, _ = torch.linalg.qr(a.double())
    qb, _ = torch.linalg.qr(b.double())
    return torch.linalg.svdvals(qa.T @ qb).clamp(max=1.0)


def agreement(g: torch.Tensor, approx: LowRankGradient, k: int) -> tuple[float, float, float]:
    """How well ``approx``'s top-k singular subspaces match those of G itself (float64).

    Returns (min cosine of the principal angles between the left subspaces, the same for the right
    subspaces, and the energy ratio ‖Q_Uᵀ G Q_V‖_F² / Σ_{i≤k} σᵢ² that the approximate subspaces keep).
    """
    import torch

    g64 = g.double()
    u, s, vh = torch.linalg.svd(g64, full_matrices=False)
    cu = float(principal_cosines(u[:, :k], approx.U[:, :k]).min().item())
    cv = float(principal_cosines(vh[:k].T, approx.Vh[:k].T).min().item())
    qu, _ = torch.linalg.qr(approx.U[:, :k].double())
    qv, _ = torch.linalg.qr(approx.Vh[:k].T.double())
    energy = float(((qu.T @ g64 @ qv).norm() ** 2 / (s[:k] ** 2).sum()).item())
    return cu, cv, energy
